"""Team worlds: several agents in one built-in world, on tasks one agent cannot do alone.

    from sima2.envs.team import TeamEnv, team_expert_actions
    env = TeamEnv(num_agents=2, image_size=64)
    params = env.default_params("hold_and_pass")        # or None: a family drawn at every reset
    obs, state = env.reset(key, params)                 # obs["image"]: [agents, 64, 64, 3]
    obs, state, rewards, done, info = env.step(key, state, team_expert_actions(state), params)

One concern per module (imports point down this list):

- `state`: families, the message channel, `TeamParams`, `TeamState`, and one agent's view as the built-in
  world's `EnvState` (so its physics, senses, renderer and expert serve every agent);
- `generation`: a fresh world of a family (layout, doors, switch, objects, instruction);
- `dynamics`: one step of every agent's action, the switch's door, messages, success and failure;
- `render`: each agent's view (the others and the switch drawn) and the shared top-down map;
- `expert`: the central-planner team expert;
- `env`: `TeamEnv`, the functional env with auto-reset;
- `parallel`: `TeamParallelEnv`, a PettingZoo `ParallelEnv` (optional extra; not imported here).

Training on them: `sima2 train --team` (`sima2.training.team_pipeline`).
"""

from sima2.envs.team.env import TEAM_ACTION_NVEC, TEAM_PROPRIO_SIZE, TEAM_TOUCH_SIZE, TeamEnv, TeamStepInfo
from sima2.envs.team.expert import team_expert_actions
from sima2.envs.team.state import FAMILIES, MAX_AGENTS, MESSAGE_VOCAB, SPLITS, TeamParams, TeamState

__all__ = [
    "FAMILIES",
    "MAX_AGENTS",
    "MESSAGE_VOCAB",
    "SPLITS",
    "TEAM_ACTION_NVEC",
    "TEAM_PROPRIO_SIZE",
    "TEAM_TOUCH_SIZE",
    "TeamEnv",
    "TeamParams",
    "TeamState",
    "TeamStepInfo",
    "team_expert_actions",
]
