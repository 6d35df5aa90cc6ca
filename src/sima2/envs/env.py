"""The functional (gymnax-style) environment: `Sima2Env.reset`, `Sima2Env.step`, the expert (`make` builds one).

    env, params = sima2.envs.make("sima2/GoTo-v0")
    obs, state = env.reset(key, params)
    obs, state, reward, done, info = env.step(key, state, action, params)   # auto-resets when done

All functions work on ONE world; `jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))` runs thousands.
A decision step holds the action for its duration at the 60 Hz simulation tick, then renders once.

An env may hold several levels (`make("sima2/AllFamilies-v0")`, or ids joined by commas): their worlds
share one padded shape, `params.level` picks one (or -1, the default then: a uniformly drawn level at
every reset), so worlds of every task family run in one vmapped batch.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float32, Int32, PRNGKeyArray, UInt8

from sima2.contract import ActionSpec, ArraySpec, Env, EnvSpec, Observation, ObservationSpec, StepInfo
from sima2.envs import vocabulary as voc
from sima2.envs.expert import current_subgoal, distance_to_goal, expert_action, goal_distances
from sima2.envs.levels import LEVELS, LevelConfig, level_from_id, level_has_split
from sima2.envs.render import render_first_person, render_topdown
from sima2.envs.world import (
    ACTION_NVEC,
    DURATION_TICKS,
    GAME_NAMES,
    GAMES,
    HELDOUT_COMPOSITIONS,
    HELDOUT_GAME,
    HELDOUT_GAME_SPLIT,
    PROPRIO_SIZE,
    SPLITS,
    TOUCH_SIZE,
    TRAIN_GAMES,
    EnvParams,
    EnvState,
    entity_colours,
    entity_types,
    generate,
    max_instruction_words,
    pad_world,
    physics,
    proprio,
    stage_complete,
    touch,
)
from sima2.planning.bridge import TokenBridge

_GAME_STREAM = 0x6A4E  # salt of the game draw


class Sima2Env(Env[EnvState, EnvParams]):
    """One or several levels of the built-in world. Static configuration only; dynamic settings live in
    EnvParams."""

    levels: tuple[LevelConfig, ...] = eqx.field(static=True)
    image_height: int = eqx.field(static=True, default=64)
    image_width: int = eqx.field(static=True, default=64)
    # Instructions in a Hugging Face tokenizer's ids instead of the world's words (`make(..., tokenizer=)`).
    tokenizer: TokenBridge | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        for size in (self.image_height, self.image_width):
            if not 8 <= size <= 512:
                raise ValueError(
                    f"image size must be in [8, 512], got {self.image_height}x{self.image_width}"
                )
        if not isinstance(self.levels, tuple) or not self.levels:
            raise ValueError(f"levels must be a non-empty tuple of LevelConfig, got {self.levels!r}")
        for level in self.levels:
            if not isinstance(level, LevelConfig):
                raise TypeError(f"levels must be LevelConfig instances, got {level!r}")
        names = [level.name for level in self.levels]
        if len(set(names)) != len(names):
            raise ValueError(f"each level may appear once in an env, got {names}")

    # --- the levels
    @property
    def level(self) -> LevelConfig:
        """The level of a single-level env (an env of several levels has `levels` instead)."""
        if len(self.levels) != 1:
            raise ValueError(
                f"this env mixes {len(self.levels)} levels ({', '.join(self.level_names)}): read env.levels, "
                "or pick one with env.default_params(level=name)"
            )
        return self.levels[0]

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)

    @property
    def max_steps(self) -> int:
        """The longest episode of any of the env's levels, in decision steps."""
        return max(level.max_steps for level in self.levels)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits of this env's levels: all of `SPLITS`, but heldout_compositions only with a level of
        multi-step instructions."""
        return tuple(split for split in SPLITS if any(level_has_split(level, split) for level in self.levels))

    def level_index(self, level: str | int) -> int:
        """Index of a level of this env, by name (`GoTo`), gymnasium id (`sima2/GoTo-v0`) or index."""
        if isinstance(level, int | np.integer) and not isinstance(level, bool):
            if not 0 <= level < len(self.levels):
                raise ValueError(f"level index {level} out of range for the env's {len(self.levels)} levels")
            return int(level)
        name = level_from_id(level).name
        if name not in self.level_names:
            raise ValueError(f"level {level!r} is not one of this env's levels: {', '.join(self.level_names)}")
        return self.level_names.index(name)

    # --- static description
    @property
    def action_nvec(self) -> tuple[int, int, int]:
        """Number of values per action factor: (key, look, duration)."""
        return ACTION_NVEC

    @property
    def instruction_length(self) -> int:
        """Ids per instruction observation: the world's words, or with a tokenizer the longest tokenisation."""
        if self.tokenizer is not None:  # `make` bounds it by the longest tokenisation of the levels
            return self.tokenizer.output_length(voc.MAX_INSTRUCTION_LENGTH)
        return voc.MAX_INSTRUCTION_LENGTH

    @property
    def _max_words(self) -> int:
        return max(max_instruction_words(level) for level in self.levels)

    @property
    def max_instruction_words(self) -> int:
        """The longest instruction the env's levels produce, in ids (ids beyond it are always padding): an
        agent can read just that many (`Agent.from_preset(..., instruction_length=env.max_instruction_words)`)."""
        return self.instruction_length if self.tokenizer is not None else self._max_words

    @property
    def proprio_size(self) -> int:
        return PROPRIO_SIZE

    @property
    def touch_size(self) -> int:
        return TOUCH_SIZE

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is not None and self.tokenizer.tokenizer_vocab_size is not None:
            return self.tokenizer.tokenizer_vocab_size
        return len(voc.vocabulary())

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            observation=ObservationSpec(
                image=ArraySpec((self.image_height, self.image_width, 3), "uint8"),
                instruction=ArraySpec((self.instruction_length,), "int32"),
                proprio=ArraySpec((PROPRIO_SIZE,), "float32"),
                touch=ArraySpec((TOUCH_SIZE,), "float32"),
                vocab_size=self.vocab_size,
                tokenizer=None if self.tokenizer is None else self.tokenizer.tokenizer_name,
                instruction_pad_id=0 if self.tokenizer is None else self.tokenizer.pad_id,
            ),
            action=ActionSpec(ACTION_NVEC),
            max_instruction_words=self.max_instruction_words,
        )

    def default_params(
        self, split: str = "train", level: str | int | None = None, game: str | int | None = None
    ) -> EnvParams:
        """Parameters of `split`, for one `level` of the env (name, id or index) or, with None, every level:
        a single-level env's own, a multi-level env's uniform mixture (a level drawn at every reset); and
        for one `game` (name or index in `GAMES`) or, with None, the split's games (drawn at every reset:
        the training games, or the held-out one in heldout_game)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        game_index = -1 if game is None else _game_index(game)
        if level is None and len(self.levels) == 1:
            level = 0
        index = -1 if level is None else self.level_index(level)
        chosen = self.levels if index < 0 else (self.levels[index],)
        if not any(level_has_split(level, split) for level in chosen):
            with_it = ", ".join(lv.name for lv in LEVELS.values() if level_has_split(lv, split))
            raise ValueError(
                f"the {split} split holds two-step instructions, which {', '.join(lv.name for lv in chosen)} "
                f"never gives; levels with them: {with_it}"
            )
        # A single level keeps its limit in the params (callers shorten episodes there); 0 = each level's own.
        max_steps = self.levels[0].max_steps if len(self.levels) == 1 else 0
        return EnvParams(
            max_steps=jnp.int32(max_steps),
            split=jnp.int32(SPLITS.index(split)),
            level=jnp.int32(index),
            game=jnp.int32(game_index),
        )

    # --- functional API (reset and step come from sima2.contract.Env)
    def observe(self, state: EnvState, params: EnvParams | None = None) -> Observation:
        """Render the observation of a state."""
        del params
        return {
            "image": render_first_person(state, self.image_height, self.image_width),
            "instruction": self.instruction_ids(state),
            "proprio": proprio(state),
            "touch": touch(state),
        }

    def instruction_ids(self, state: EnvState) -> Int32[Array, " L"]:
        """The state's instruction as observed: world word ids, or the tokenizer's ids."""
        if self.tokenizer is None:
            return state.instruction
        ids, _ = self.tokenizer(state.instruction)
        return ids.astype(jnp.int32)

    def init(self, key: PRNGKeyArray, params: EnvParams) -> EnvState:
        # The game comes from its own stream, so a key gives the same layout and task in every game.
        game_draw = jax.random.randint(jax.random.fold_in(key, _GAME_STREAM), (), 0, len(TRAIN_GAMES), jnp.int32)
        drawn_game = jnp.where(params.split == HELDOUT_GAME_SPLIT, HELDOUT_GAME, jnp.asarray(TRAIN_GAMES)[game_draw])
        game = jnp.clip(jnp.where(params.game >= 0, params.game, drawn_game), 0, len(GAMES) - 1).astype(jnp.int32)
        return eqx.tree_at(lambda s: s.game, self._world(key, params), game)

    def _world(self, key: PRNGKeyArray, params: EnvParams) -> EnvState:
        if len(self.levels) == 1:
            return generate(key, self.levels[0], params.split)
        level_key, key = jax.random.split(key)
        drawn = jax.random.randint(level_key, (), 0, len(self.levels), jnp.int32)
        # heldout_compositions draws among the levels that have it (default_params refuses an env without).
        has = np.array([level_has_split(level, "heldout_compositions") for level in self.levels])
        if has.any():
            eligible = jax.random.choice(level_key, jnp.asarray(np.flatnonzero(has), jnp.int32))
            drawn = jnp.where(params.split == HELDOUT_COMPOSITIONS, eligible, drawn)
        index = jnp.clip(jnp.where(params.level >= 0, params.level, drawn), 0, len(self.levels) - 1)
        grid = tuple(max(level.grid_shape[i] for level in self.levels) for i in range(2))
        num_objects = max(level.num_objects for level in self.levels)
        num_doors = max(max(level.num_doors, 1) for level in self.levels)

        def level_world(level: LevelConfig, i: int):
            def make_world(key: PRNGKeyArray, split: Int32[Array, ""]) -> EnvState:
                state = pad_world(generate(key, level, split), grid, num_objects, num_doors)
                return eqx.tree_at(lambda s: s.level, state, jnp.int32(i))

            return make_world

        branches = [level_world(level, i) for i, level in enumerate(self.levels)]
        return jax.lax.switch(index, branches, key, params.split)

    def transition(
        self, key: PRNGKeyArray, state: EnvState, action: Int32[Array, "3"], params: EnvParams
    ) -> tuple[EnvState, Float32[Array, ""], StepInfo]:
        """Advance one decision step without rendering and without resetting.

        `action` is (key, mouse-look, duration) indices, shape (3,) (per world under vmap; another shape
        raises ValueError). Values cannot be checked under jit, so each factor is clipped to
        [0, ACTION_NVEC[i] - 1] first: physics, rendering and info all see the clipped action.
        """
        del key  # the world's physics is deterministic
        action = clip_action(action)
        start_pos, start_subgoal, first_step = state.agent_pos, current_subgoal(state)[0], state.time == 0
        state, invalid = physics(state, action)
        advance = stage_complete(state)
        state = eqx.tree_at(lambda s: s.stage, state, state.stage + advance.astype(jnp.int32))
        success = advance & (state.stage >= state.num_stages)
        time = state.time + 1
        level_limit = jnp.asarray([level.max_steps for level in self.levels], jnp.int32)[state.level]
        timeout = (time >= jnp.where(params.max_steps > 0, params.max_steps, level_limit)) & ~success
        reward = success.astype(jnp.float32)
        subgoal_index, *_ = current_subgoal(state)
        # One BFS per step serves both the info's distance and the optimal-path bookkeeping: a subgoal's
        # shortest path is counted when it becomes current (the first one from the start cell, looked up in
        # this step's BFS while it is still current; if the first step already finished it, the step
        # itself was its path).
        distance, distance_from_start = goal_distances(state, jnp.stack([state.agent_pos, start_pos]))
        moved = jnp.linalg.norm(state.agent_pos - start_pos)
        same_subgoal = subgoal_index == start_subgoal
        first_path = jnp.where(same_subgoal, distance_from_start, moved)
        optimal = jnp.where(first_step, first_path, 0.0) + jnp.where(~same_subgoal & ~success, distance, 0.0)
        state = eqx.tree_at(
            lambda s: (s.time, s.episode_return, s.path_length, s.optimal_path_length),
            state,
            (time, state.episode_return + reward, state.path_length + moved, state.optimal_path_length + optimal),
        )
        info = StepInfo(
            terminated=success,
            truncated=timeout,
            success=success,
            invalid_move=invalid,
            contact=state.contact,
            elapsed_ticks=jnp.asarray(DURATION_TICKS, jnp.int32)[action[2]],
            agent_pos=state.agent_pos,
            distance_to_goal=distance,
            path_length=state.path_length,
            optimal_path_length=state.optimal_path_length,
            subgoal_index=subgoal_index,
        )
        return state, reward, info

    def expert_action(self, state: EnvState, params: EnvParams) -> Int32[Array, "3"]:
        """Shortest-path expert action (key, look, duration) in this state."""
        del params
        return expert_action(state)

    def subgoal_index(self, state: EnvState) -> Int32[Array, ""]:
        """Index of the current subgoal in the expert plan (for planner supervision)."""
        return current_subgoal(state)[0]

    def optimal_path_length(self, state: EnvState) -> Float32[Array, ""]:
        """Shortest-path distance (cells) to where the current subgoal can be done."""
        return distance_to_goal(state)

    def render(self, state: EnvState) -> UInt8[Array, "H W 3"]:
        return render_first_person(state, self.image_height, self.image_width)

    def render_topdown(self, state: EnvState, cell_px: int = 8) -> UInt8[Array, "h w 3"]:
        return render_topdown(state, cell_px)

    # --- host-side helpers (numpy in, Python strings out)
    def instruction_text(self, state: EnvState) -> str:
        """The instruction of a single (unbatched) state as text."""
        return voc.decode_ids(np.asarray(state.instruction))

    def _entity_phrase(self, state: EnvState, entity: int) -> str:
        types = np.asarray(entity_types(state))
        colours = np.asarray(entity_colours(state))
        return voc.noun_phrase(int(types[entity]), int(colours[entity]))

    def plan_text(self, state: EnvState) -> list[str]:
        """The expert's subgoal plan as text, e.g. ["go to the red key", "pick up the red key", ...]."""
        kinds = np.asarray(state.plan_kind)
        plan_a, plan_b = np.asarray(state.plan_a), np.asarray(state.plan_b)
        steps = []
        for i in range(int(state.plan_len)):
            template = voc.SUBGOAL_TEMPLATES[int(kinds[i])]
            text = template.replace("{A}", self._entity_phrase(state, int(plan_a[i])))
            steps.append(text.replace("{B}", self._entity_phrase(state, int(plan_b[i]))))
        return steps


def _game_index(game: str | int) -> int:
    if isinstance(game, str):
        if game not in GAME_NAMES:
            raise ValueError(f"unknown game {game!r}; games: {', '.join(GAME_NAMES)}")
        return GAME_NAMES.index(game)
    if isinstance(game, int | np.integer) and not isinstance(game, bool) and 0 <= game < len(GAMES):
        return int(game)
    raise ValueError(f"game must be a name ({', '.join(GAME_NAMES)}) or an index below {len(GAMES)}, got {game!r}")


def clip_action(action: Int32[Array, "*shape"]) -> Int32[Array, "3"]:
    """`action` as int32 with each factor clipped to its range; raises ValueError on a shape other than (3,).

    The shape is static (also under jit and, per world, under vmap); the values are not, so an
    out-of-range index is clipped rather than refused, once, for everything downstream to agree on.
    """
    action = jnp.asarray(action, jnp.int32)
    if action.shape != (len(ACTION_NVEC),):
        raise ValueError(
            f"action must have shape ({len(ACTION_NVEC)},) = (key, mouse-look, duration) per world, "
            f"got shape {action.shape}"
        )
    return jnp.clip(action, 0, jnp.asarray(ACTION_NVEC, jnp.int32) - 1)
