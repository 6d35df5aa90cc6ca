"""`TeamEnv`: several agents in one built-in world, as pure functions (`reset(key, params)`,
`step(key, state, actions, params)`) that `jax.vmap` runs over thousands of worlds inside one `jit`.

Every agent observes its own first-person image, instruction, proprio and touch (leading agent axis on
every observation array). Its proprio is the world's (motion, heading, what it holds), then its agent
index (one-hot over `MAX_AGENTS`: one shared policy can tell the roles apart), then the tokens the others
said in the previous step (counts over `MESSAGE_VOCAB`). Its touch is the world's, then whether it stands
on the switch (`TEAM_TOUCH_SIZE`). Actions are the world's (key, look, duration)
plus a message token. The team shares one reward, +1 when its task is done; an episode ends then, when
the task has failed for good (split knowledge's wrong object), or at the family's step limit. `step`
resets a finished world itself (the observation is then the new episode's first), as the single-agent `Env`
does.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float32, Int32, PRNGKeyArray

from sima2.contract import ActionSpec, ArraySpec, EnvSpec, ObservationSpec
from sima2.envs import vocabulary as voc
from sima2.envs.team.dynamics import team_failure, team_physics, team_success
from sima2.envs.team.generation import generate
from sima2.envs.team.render import render_agent, render_team_topdown
from sima2.envs.team.state import (
    FAMILIES,
    FAMILY_MAX_STEPS,
    INSTRUCTION_LENGTH,
    MAX_AGENTS,
    MESSAGE_VOCAB,
    SPLITS,
    TeamParams,
    TeamState,
    on_switch,
    view,
)
from sima2.envs.world import ACTION_NVEC, GAME_NAMES, PROPRIO_SIZE, TOUCH_SIZE, proprio, touch

TEAM_ACTION_NVEC = (*ACTION_NVEC, MESSAGE_VOCAB)
MAX_INSTRUCTION_WORDS = 9  # "put the X next to the Y"
TEAM_PROPRIO_SIZE = PROPRIO_SIZE + MAX_AGENTS + MESSAGE_VOCAB
# The world's touch, then the floor under the feet: whether this agent stands on the switch. The switch is a
# floor plate drawn as a sprite, out of view once an agent stands on it, so without this a holder cannot
# tell that it holds (its first-person view and the world's touch look the same one cell off the switch).
TEAM_TOUCH_SIZE = TOUCH_SIZE + 1


class TeamStepInfo(eqx.Module):
    """What one team step reports (before an auto-reset: the finished episode's last step)."""

    success: Bool[Array, ""]
    failure: Bool[Array, ""]  # the episode ended early without success (split knowledge: a wrong object)
    invalid_move: Bool[Array, " A"]
    family: Int32[Array, ""]
    elapsed_steps: Int32[Array, ""]


class TeamEnv(eqx.Module):
    """A team world of `num_agents` agents (2 to `MAX_AGENTS`) rendering `image_size`-pixel square views."""

    num_agents: int = eqx.field(static=True)
    image_size: int = eqx.field(static=True)

    def __init__(self, num_agents: int = 2, image_size: int = 64):
        if not isinstance(num_agents, int) or not 2 <= num_agents <= MAX_AGENTS:
            raise ValueError(f"num_agents must be an int from 2 to {MAX_AGENTS}, got {num_agents!r}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int of at least 8 pixels, got {image_size!r}")
        self.num_agents = num_agents
        self.image_size = image_size

    @property
    def spec(self) -> EnvSpec:
        """One agent's observation and action (every agent of the team has the same: one shared policy acts
        for all of them)."""
        return EnvSpec(
            observation=ObservationSpec(
                image=ArraySpec((self.image_size, self.image_size, 3), "uint8"),
                instruction=ArraySpec((INSTRUCTION_LENGTH,), "int32"),
                proprio=ArraySpec((TEAM_PROPRIO_SIZE,), "float32"),
                touch=ArraySpec((TEAM_TOUCH_SIZE,), "float32"),
                vocab_size=len(voc.vocabulary()),
            ),
            action=ActionSpec(TEAM_ACTION_NVEC),
            max_instruction_words=MAX_INSTRUCTION_WORDS,
        )

    def default_params(self, family: str | None = None, split: str = "train", game: str | None = None) -> TeamParams:
        """Params for one `family` (None: drawn at every reset), a split and a game (None: a training game
        drawn at every reset)."""
        if family is not None and family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; team splits: {', '.join(SPLITS)}")
        if game is not None and game not in GAME_NAMES:
            raise ValueError(f"unknown game {game!r}; games: {', '.join(GAME_NAMES)}")
        return TeamParams(
            max_steps=jnp.int32(0),
            split=jnp.int32(SPLITS.index(split)),
            family=jnp.int32(-1 if family is None else FAMILIES.index(family)),
            game=jnp.int32(-1 if game is None else GAME_NAMES.index(game)),
        )

    def observe(self, state: TeamState) -> dict[str, Array]:
        """Every agent's observation (leading agent axis)."""
        agents = jnp.arange(self.num_agents)
        heard = jax.nn.one_hot(state.said, MESSAGE_VOCAB)  # [A, V]
        heard_by = heard.sum(axis=0)[None, :] - heard  # what the others said
        seen = jax.vmap(lambda a: view(state, a, others_solid=False))(agents)
        return {
            "image": jax.vmap(lambda a: render_agent(state, a, self.image_size, self.image_size))(agents),
            "instruction": state.instruction,
            "proprio": jnp.concatenate(
                [jax.vmap(proprio)(seen), jax.nn.one_hot(agents, MAX_AGENTS), heard_by], axis=1
            ).astype(jnp.float32),
            "touch": jnp.concatenate([jax.vmap(touch)(seen), on_switch(state)[:, None]], axis=1).astype(jnp.float32),
        }

    def reset(self, key: PRNGKeyArray, params: TeamParams) -> tuple[dict[str, Array], TeamState]:
        state = generate(key, params, self.num_agents)
        return self.observe(state), state

    def transition(
        self, state: TeamState, actions: Int32[Array, "A F"], params: TeamParams
    ) -> tuple[TeamState, Float32[Array, " A"], Bool[Array, ""], TeamStepInfo]:
        """All agents act, without the auto-reset: (state, rewards per agent, done, info)."""
        if actions.shape != (self.num_agents, len(TEAM_ACTION_NVEC)):
            raise ValueError(
                f"actions must have shape ({self.num_agents}, {len(TEAM_ACTION_NVEC)}) (key, look, duration, "
                f"message per agent), got {actions.shape}"
            )
        high = jnp.asarray(TEAM_ACTION_NVEC, jnp.int32) - 1
        before = state
        state, invalid = team_physics(state, jnp.clip(actions.astype(jnp.int32), 0, high))
        success = team_success(before, state)
        failure = team_failure(before, state, success)
        limit = jnp.where(params.max_steps > 0, params.max_steps, jnp.asarray(FAMILY_MAX_STEPS)[state.family])
        done = success | failure | (state.time >= limit)
        info = TeamStepInfo(
            success=success, failure=failure, invalid_move=invalid, family=state.family, elapsed_steps=state.time
        )
        return state, jnp.full((self.num_agents,), success.astype(jnp.float32)), done, info

    def step(
        self, key: PRNGKeyArray, state: TeamState, actions: Int32[Array, "A F"], params: TeamParams
    ) -> tuple[dict[str, Array], TeamState, Float32[Array, " A"], Bool[Array, ""], TeamStepInfo]:
        """All agents act; returns (observations, state, rewards per agent, done, info), resetting a finished
        world (its next observation is the new episode's first)."""
        state, rewards, done, info = self.transition(state, actions, params)
        fresh = generate(key, params, self.num_agents)
        state = jax.tree.map(lambda new, old: jnp.where(done, new, old), fresh, state)
        return self.observe(state), state, rewards, done, info

    def render_topdown(self, state: TeamState, cell_px: int = 8) -> Array:
        return render_team_topdown(state, cell_px)


__all__ = ["TEAM_ACTION_NVEC", "TEAM_PROPRIO_SIZE", "TEAM_TOUCH_SIZE", "TeamEnv", "TeamStepInfo"]
