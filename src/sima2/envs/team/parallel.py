"""`TeamParallelEnv`: a team world as a PettingZoo `ParallelEnv` (PettingZoo is an optional extra:
`pip install sima2[pettingzoo]`).

Agents are named `agent_0`, `agent_1`, ...; each observes a dict (image, instruction, proprio, touch) and acts
with a `MultiDiscrete` (key, look, duration, message). Every agent gets the team's reward; all terminate
together when the task is done and are truncated together at the family's step limit, after which `agents`
is empty until the next `reset`. `render()` returns the shared top-down map (render_mode "rgb_array").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces

from sima2.envs.team.env import TEAM_ACTION_NVEC, TEAM_PROPRIO_SIZE, TEAM_TOUCH_SIZE, TeamEnv
from sima2.envs.team.state import FAMILIES, INSTRUCTION_LENGTH
from sima2.envs.vocabulary import vocabulary

try:
    from pettingzoo import ParallelEnv
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("TeamParallelEnv needs PettingZoo: pip install 'sima2[pettingzoo]'") from error


class TeamParallelEnv(ParallelEnv):
    """A team world of `num_agents` agents for PettingZoo users (one world, host-side; for thousands of worlds
    use `TeamEnv` under `jax.vmap`)."""

    metadata = {"name": "sima2_team_v0", "render_modes": ["rgb_array"], "is_parallelizable": True}

    def __init__(
        self, family: str | None = None, num_agents: int = 2, image_size: int = 64, split: str = "train",
        render_mode: str | None = None,
    ):  # fmt: skip
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.env = TeamEnv(num_agents, image_size)
        self.params = self.env.default_params(family, split)
        self.render_mode = render_mode
        self.possible_agents = [f"agent_{i}" for i in range(num_agents)]
        self.agents: list[str] = []
        observation = spaces.Dict({
            "image": spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
            "instruction": spaces.Box(0, len(vocabulary()) - 1, (INSTRUCTION_LENGTH,), np.int32),
            "proprio": spaces.Box(-np.inf, np.inf, (TEAM_PROPRIO_SIZE,), np.float32),
            "touch": spaces.Box(-np.inf, np.inf, (TEAM_TOUCH_SIZE,), np.float32),
        })  # fmt: skip
        self._observation_spaces = {agent: observation for agent in self.possible_agents}
        self._action_spaces = {agent: spaces.MultiDiscrete(TEAM_ACTION_NVEC) for agent in self.possible_agents}
        self._reset = jax.jit(self.env.reset)
        self._transition = jax.jit(self.env.transition)
        self._observe = jax.jit(self.env.observe)
        self._topdown = jax.jit(self.env.render_topdown)
        self._rng = np.random.default_rng()
        self._state = None

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    def _key(self) -> jax.Array:
        return jax.random.key(int(self._rng.integers(0, 2**31 - 1)))

    def _split(self, obs: dict[str, jax.Array]) -> dict[str, dict[str, np.ndarray]]:
        host = {name: np.asarray(value) for name, value in obs.items()}
        return {agent: {name: value[i] for name, value in host.items()} for i, agent in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        obs, self._state = self._reset(self._key(), self.params)
        self.agents = list(self.possible_agents)
        family = FAMILIES[int(self._state.family)]
        return self._split(obs), {agent: {"family": family} for agent in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        if not self.agents:
            raise RuntimeError("the episode is over: call reset() first")
        missing = [agent for agent in self.agents if agent not in actions]
        if missing:
            raise ValueError(f"no action for {', '.join(missing)}: every live agent acts in each step")
        stacked = np.stack([np.asarray(actions[agent], np.int64).reshape(-1) for agent in self.possible_agents])
        for agent, action in zip(self.possible_agents, stacked, strict=True):
            if action.shape != (len(TEAM_ACTION_NVEC),) or np.any(action < 0) or np.any(action >= TEAM_ACTION_NVEC):
                raise ValueError(
                    f"{agent}'s action {action.tolist()} is not in MultiDiscrete({list(TEAM_ACTION_NVEC)})"
                )
        self._state, rewards, done, info = self._transition(self._state, jnp.asarray(stacked, jnp.int32), self.params)
        success, failure, elapsed = bool(info.success), bool(info.failure), int(info.elapsed_steps)
        rewards = {agent: float(r) for agent, r in zip(self.possible_agents, np.asarray(rewards), strict=True)}
        terminated = {agent: success or failure for agent in self.agents}
        truncated = {agent: bool(done) and not (success or failure) for agent in self.agents}
        infos = {agent: {"success": success, "failure": failure, "elapsed_steps": elapsed} for agent in self.agents}
        observations = self._split(self._observe(self._state))
        if bool(done):
            self.agents = []
        return observations, rewards, terminated, truncated, infos

    def render(self) -> np.ndarray | None:
        if self.render_mode is None or self._state is None:
            return None
        return np.asarray(self._topdown(self._state))

    def close(self) -> None:
        pass


__all__ = ["TeamParallelEnv"]
