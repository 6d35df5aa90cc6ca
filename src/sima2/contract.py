"""The contract between worlds, wrappers, agents and learners, as typed code.

    spec = env.spec                                   # EnvSpec: observation and action specs
    obs, state = env.reset(key, params)               # Observation: a dict checked by spec.observation
    obs, state, reward, done, info = env.step(key, state, action, params)    # info: StepInfo; auto-resets
    action, carry, out = agent.act(key, obs, carry)   # out: ActOutput (log_prob, value, entropy)

- `Env` (abstract) is what every functional world and wrapper implements: `init`, `observe` and
  `transition` (one step, no reset). It owns `reset` and `step`, so auto-reset is defined once, here: a
  finished episode's world is replaced by `init(key)`, and under `jax.vmap` only the finished worlds are
  generated (`reset_where_done`).
- `StepInfo` is what a step reports: the fields wrappers and learners read, each typed, plus `extras`, a
  dict of scalars that is logged and never read (e.g. the reward shaper's terms).
- `Transition` is one step as the learners consume it; `sima2.training.rollout` produces it for PPO,
  evaluation, demonstrations and reports alike.
- `AbstractAgent` is what the learners call on an agent; `ActOutput` what `act` returns besides the action
  and the new memory. Every class here is abstract or final (Equinox's abstract/final pattern).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Float32, Int, Int32, PRNGKeyArray, PyTree

Observation = dict[str, Array]

StateT = TypeVar("StateT")
ParamsT = TypeVar("ParamsT")


# --- specs -----------------------------------------------------------------------------------------------
class ArraySpec(eqx.Module):
    """Shape and dtype of one observation field (for one world, no batch axis)."""

    shape: tuple[int, ...] = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __check_init__(self) -> None:
        np.dtype(self.dtype)  # raises TypeError on an unknown dtype name

    def check(self, name: str, value: Any) -> None:
        """Raise a ValueError naming `name` when `value` does not have this shape and dtype kind."""
        shape, dtype = tuple(np.shape(value)), np.dtype(getattr(value, "dtype", np.asarray(value).dtype))
        if shape != self.shape:
            raise ValueError(f"observation field {name!r} must have shape {self.shape}, got {shape}")
        if dtype.kind != np.dtype(self.dtype).kind and not (dtype.kind in "iu" and np.dtype(self.dtype).kind in "iu"):
            raise ValueError(f"observation field {name!r} must be {self.dtype}, got {dtype}")

    def zeros(self) -> Array:
        return jnp.zeros(self.shape, self.dtype)


class ObservationSpec(eqx.Module):
    """The observation of one world: a first-person image, an instruction as token ids (padded) from a
    vocabulary of `vocab_size` (the env's own words, or the ids of `tokenizer`), proprioception, and
    optionally touch (contact and grip, a modality of its own) and an action mask (True = allowed, one entry
    per value of every action factor)."""

    image: ArraySpec
    instruction: ArraySpec
    proprio: ArraySpec
    vocab_size: int = eqx.field(static=True)
    action_mask: ArraySpec | None = None
    touch: ArraySpec | None = None
    # The Hugging Face tokenizer (name or path) whose ids `instruction` holds; None: the env's own words.
    tokenizer: str | None = eqx.field(static=True, default=None)
    instruction_pad_id: int = eqx.field(static=True, default=0)  # the id that fills `instruction`'s tail

    def fields(self) -> dict[str, ArraySpec]:
        named = {"image": self.image, "instruction": self.instruction, "proprio": self.proprio}
        if self.touch is not None:
            named["touch"] = self.touch
        if self.action_mask is not None:
            named["action_mask"] = self.action_mask
        return named

    def check(self, obs: Mapping[str, Any]) -> None:
        """Raise a ValueError naming the first field that is missing or has another shape or dtype."""
        if not isinstance(obs, Mapping):
            raise TypeError(f"an observation is a dict of arrays, got {type(obs).__name__}")
        for name, spec in self.fields().items():
            if name not in obs:
                raise ValueError(f"observation has no {name!r} field (got {sorted(obs)})")
            spec.check(name, obs[name])

    def zeros(self) -> Observation:
        return {name: spec.zeros() for name, spec in self.fields().items()}


class ActionSpec(eqx.Module):
    """A factored discrete action: one index per factor, factor i in `[0, nvec[i])`."""

    nvec: tuple[int, ...] = eqx.field(static=True)

    def __check_init__(self) -> None:
        if not self.nvec or any(int(n) < 1 for n in self.nvec):
            raise ValueError(f"action factors need at least one value each, got nvec={self.nvec}")


class EnvSpec(eqx.Module):
    """What an agent is sized from: the env's observation and action specs, and the longest instruction the
    env emits (ids past it are always padding, so an agent may read only that many)."""

    observation: ObservationSpec
    action: ActionSpec
    max_instruction_words: int = eqx.field(static=True)

    def __check_init__(self) -> None:
        if not 1 <= self.max_instruction_words <= self.observation.instruction.shape[0]:
            raise ValueError(
                f"max_instruction_words={self.max_instruction_words} must be in [1, instruction length "
                f"{self.observation.instruction.shape[0]}]"
            )


# --- what a step reports -------------------------------------------------------------------------------
def _bool(x: Any) -> Array:
    return jnp.asarray(x, bool)


def _f32(x: Any) -> Array:
    return jnp.asarray(x, jnp.float32)


def _i32(x: Any) -> Array:
    return jnp.asarray(x, jnp.int32)


def _extras(x: Mapping[str, Any]) -> dict[str, Array]:
    return {str(k): jnp.asarray(v, jnp.float32) for k, v in x.items()}


class StepInfo(eqx.Module):
    """What one step reports (one world, or leading `*batch` axes from a rollout or a host loop). Fields an
    env cannot know keep their defaults: no distance to a goal (NaN), no position (NaN), every action its own.

    `terminated` / `truncated` end the episode (done = either); `success` is the task's own success
    signal. On a done step every field describes the step that ended the episode, before the reset.
    """

    terminated: Bool[Array, "*batch"] = eqx.field(converter=_bool)
    truncated: Bool[Array, "*batch"] = eqx.field(converter=_bool)
    success: Bool[Array, "*batch"] = eqx.field(converter=_bool, default=False)
    invalid_move: Bool[Array, "*batch"] = eqx.field(converter=_bool, default=False)
    # Fraction of the action's simulated time spent pushing against a wall, object or other body.
    contact: Float32[Array, "*batch"] = eqx.field(converter=_f32, default=0.0)
    # Simulated ticks this decision held its action for (wrappers measure time with it).
    elapsed_ticks: Int32[Array, "*batch"] = eqx.field(converter=_i32, default=1)
    agent_pos: Float32[Array, "*batch 2"] = eqx.field(converter=_f32, default=(float("nan"), float("nan")))
    # Shortest-path distance to where the current subgoal can be done (NaN: the env does not know).
    distance_to_goal: Float32[Array, "*batch"] = eqx.field(converter=_f32, default=float("nan"))
    # Distance travelled this episode, and the sum of its subgoals' shortest paths (efficiency = ratio).
    path_length: Float32[Array, "*batch"] = eqx.field(converter=_f32, default=float("nan"))
    optimal_path_length: Float32[Array, "*batch"] = eqx.field(converter=_f32, default=float("nan"))
    subgoal_index: Int32[Array, "*batch"] = eqx.field(converter=_i32, default=0)
    # Wrappers' interventions: False where another action than the agent's was executed.
    agent_acted: Bool[Array, "*batch"] = eqx.field(converter=_bool, default=True)
    world_rollback: Bool[Array, "*batch"] = eqx.field(converter=_bool, default=False)  # the world was restored
    fallback_step: Bool[Array, "*batch"] = eqx.field(converter=_bool, default=False)  # a controller acted
    action_blocked: Bool[Array, "*batch"] = eqx.field(converter=_bool, default=False)  # the safety filter replaced it
    # Scalars that are logged (averaged per update, per step) and never read by any learner.
    extras: dict[str, Float32[Array, "*batch"]] = eqx.field(converter=_extras, default_factory=dict)

    @property
    def done(self) -> Bool[Array, "*batch"]:
        return self.terminated | self.truncated

    def to_dict(self) -> dict[str, Any]:
        """The record as a flat dict of NumPy arrays (`extras` merged in), for gymnasium's `info`."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "extras"}
        return {name: np.asarray(value) for name, value in {**fields, **self.extras}.items()}


class ActOutput(eqx.Module):
    """What an agent reports with an action: its log-probability, the value estimate, the entropy and, for an
    agent following its own plan, the index of the subgoal it acted on (else None)."""

    log_prob: Float[Array, "*batch"]
    value: Float[Array, "*batch"]
    entropy: Float[Array, "*batch"]
    subgoal: Int[Array, "*batch"] | None = None


class Transition(eqx.Module):
    """One step as learners consume it (leading axes `(T, E)` from a rollout).

    `obs` is what the action was chosen from and `first` whether it starts an episode; `episode_return` and
    `episode_length` count the episode up to and including this step. `expert_action` (or None) is the
    expert's action in the same state, for imitation losses. `instruction` (or None) holds the episode
    features the actor acted with (`Actor.episode_features`), kept for a learner that reuses them.
    """

    obs: Observation
    action: Int[Array, "*batch F"]
    reward: Float[Array, "*batch"]
    done: Bool[Array, "*batch"]
    first: Bool[Array, "*batch"]
    info: StepInfo
    agent: ActOutput
    episode_return: Float[Array, "*batch"]
    episode_length: Int[Array, "*batch"]
    expert_action: Int[Array, "*batch F"] | None = None
    instruction: PyTree = None


# --- environments ----------------------------------------------------------------------------------------
def reset_where_done(
    env: Env, done: Bool[Array, ""], key: PRNGKeyArray, params: PyTree, state: PyTree
) -> PyTree:
    """`state`, or where `done` the fresh state `env.init(key, params)`: the auto-reset of `Env.step`.

    Under `jax.vmap` this generates only the worlds that are done, in chunks of a sixteenth of the batch
    (a custom batching rule), instead of a fresh world for every world at every step of which all but the
    few finished ones would be thrown away. Each done world still gets exactly `init(its key)`, so results
    do not depend on the batch. Outside vmap it is a `lax.cond`.
    """
    # The env's own arrays (wrapper coefficients) travel as an argument: they may be batched too.
    dynamic, static = eqx.partition(env, eqx.is_array)

    def init(dynamic: PyTree, key: PRNGKeyArray, params: PyTree) -> PyTree:
        return eqx.combine(dynamic, static).init(key, params)

    @jax.custom_batching.custom_vmap
    def reset(dynamic, done, key, params, state):
        return jax.lax.cond(done, lambda: init(dynamic, key, params), lambda: state)

    @reset.def_vmap
    def reset_batched(axis_size, in_batched, dynamic, done, key, params, state):
        dynamic_batched, done_batched, _, params_batched, state_batched = in_batched
        # Unbatched leaves may come as Python scalars (jaxpr literals, e.g. a constant flag in the state).
        broadcast = lambda x, batched: x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))  # noqa: E731
        done = broadcast(done, done_batched)
        state = jax.tree.map(broadcast, state, state_batched)
        key = broadcast(key, in_batched[2])
        chunk = max(1, -(-axis_size // 16))
        padded = -(-axis_size // chunk) * chunk
        # Indices of the done worlds first, then out-of-range fillers (their writes are dropped).
        order = jnp.nonzero(done, size=padded, fill_value=axis_size)[0]
        axes = lambda flags: jax.tree.map(lambda b: 0 if b else None, flags)  # noqa: E731

        def regenerate(i, state):
            index = jax.lax.dynamic_slice(order, (i * chunk,), (chunk,))
            source = jnp.minimum(index, axis_size - 1)
            take = lambda x, batched: x[source] if batched else x  # noqa: E731
            fresh = jax.vmap(init, in_axes=(axes(dynamic_batched), 0, axes(params_batched)))(
                jax.tree.map(take, dynamic, dynamic_batched), key[source], jax.tree.map(take, params, params_batched)
            )
            return jax.tree.map(lambda s, f: s.at[index].set(f, mode="drop"), state, fresh)

        chunks = (jnp.sum(done, dtype=jnp.int32) + chunk - 1) // chunk
        state = jax.lax.fori_loop(0, chunks, regenerate, state)
        return state, jax.tree.map(lambda _: True, state)

    return reset(dynamic, done, key, params, state)


class Env(eqx.Module, Generic[StateT, ParamsT]):
    """A functional environment of ONE world (vmap for many): pure functions of explicit keys and states.

    Subclasses implement `spec`, `init`, `observe`, `transition`, `default_params` and `expert_action`
    (raise `NotImplementedError` with a message when there is no expert); `reset` and `step` are defined
    here once, for every world and wrapper.
    """

    @property
    @abc.abstractmethod
    def spec(self) -> EnvSpec:
        """The observation and action specs agents are sized from."""

    @abc.abstractmethod
    def default_params(self) -> ParamsT:
        """Parameters of the default task distribution."""

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, params: ParamsT) -> StateT:
        """A fresh episode's state."""

    @abc.abstractmethod
    def observe(self, state: StateT, params: ParamsT) -> Observation:
        """The observation of a state."""

    @abc.abstractmethod
    def transition(
        self, key: PRNGKeyArray, state: StateT, action: Int[Array, " F"], params: ParamsT
    ) -> tuple[StateT, Float[Array, ""], StepInfo]:
        """One decision step without resetting: (state, reward, info)."""

    @abc.abstractmethod
    def expert_action(self, state: StateT, params: ParamsT) -> Int[Array, " F"]:
        """A scripted expert's action in `state` (demonstrations, fallbacks, imitation losses)."""

    def reset(self, key: PRNGKeyArray, params: ParamsT) -> tuple[Observation, StateT]:
        state = self.init(key, params)
        return self.observe(state, params), state

    def step(
        self, key: PRNGKeyArray, state: StateT, action: Int[Array, " F"], params: ParamsT
    ) -> tuple[Observation, StateT, Float[Array, ""], Bool[Array, ""], StepInfo]:
        """One decision step; when the episode ends the returned state and observation are a fresh
        episode's (generated from `key`), and `info` describes the step that ended it."""
        next_state, reward, info = self.transition(key, state, action, params)
        done = info.done
        next_state = reset_where_done(self, done, key, params, next_state)
        return self.observe(next_state, params), next_state, reward, done, info

    def step_no_reset(
        self, key: PRNGKeyArray, state: StateT, action: Int[Array, " F"], params: ParamsT
    ) -> tuple[Observation, StateT, Float[Array, ""], Bool[Array, ""], StepInfo]:
        """`step` without the auto-reset: the state and observation the step reached."""
        next_state, reward, info = self.transition(key, state, action, params)
        return self.observe(next_state, params), next_state, reward, info.done, info


# --- agents ----------------------------------------------------------------------------------------------
class AbstractAgent(eqx.Module):
    """What learners call on an agent: one observation per call; callers vmap over worlds.

    `observation_features` is the part of a step that does not depend on the memory and
    `evaluate_features` the rest, so a learner replaying a sequence encodes all its steps in one batch and
    runs only the memory step by step (`evaluate` is the two in one).
    """

    @abc.abstractmethod
    def initial_carry(self) -> PyTree:
        """The memory at an episode's start (an empty array for a memoryless agent)."""

    @abc.abstractmethod
    def act(
        self,
        key: PRNGKeyArray,
        obs: Observation,
        carry: PyTree,
        *,
        deterministic: bool = False,
        instruction: PyTree | None = None,
    ) -> tuple[Int[Array, " F"], PyTree, ActOutput]:
        """Sample (or, with `deterministic`, take the most likely) action. `instruction`: the episode's
        `instruction_features` when the caller computed them once for the episode."""

    @abc.abstractmethod
    def observation_features(self, obs: Observation, instruction: PyTree | None = None) -> PyTree:
        """The memory-independent encoding of one observation (`instruction`: as in `act`)."""

    @abc.abstractmethod
    def instruction_features(self, instruction: Int[Array, " L"]) -> PyTree | None:
        """The encoding of an instruction, constant over an episode, which rollouts compute once per episode
        and pass to `act`; None: the agent encodes its instruction at every step itself."""

    @abc.abstractmethod
    def instruction_features_frozen(self) -> bool:
        """True when training never changes `instruction_features` (a frozen LM): learners may reuse them."""

    @abc.abstractmethod
    def evaluate_features(
        self, features: PyTree, carry: PyTree, action: Int[Array, "*K F"]
    ) -> tuple[Float[Array, "*K"], Float[Array, ""], Float[Array, ""], PyTree]:
        """(log_prob(action), entropy, value, new carry); `action` may stack K candidates."""

    @abc.abstractmethod
    def critic_filter(self) -> PyTree[bool]:
        """True for the arrays only the value estimate uses (for a critic warm-up)."""

    @abc.abstractmethod
    def trainable_filter(self) -> PyTree[bool]:
        """True for every array the learners train by default."""

    @abc.abstractmethod
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write the agent so that its class's `from_pretrained` rebuilds it."""

    def evaluate(
        self, obs: Observation, carry: PyTree, action: Int[Array, "*K F"]
    ) -> tuple[Float[Array, "*K"], Float[Array, ""], Float[Array, ""], PyTree]:
        """`evaluate_features(observation_features(obs), carry, action)`."""
        return self.evaluate_features(self.observation_features(obs), carry, action)


__all__ = [
    "AbstractAgent",
    "ActOutput",
    "ActionSpec",
    "ArraySpec",
    "Env",
    "EnvSpec",
    "Observation",
    "ObservationSpec",
    "StepInfo",
    "Transition",
    "reset_where_done",
]
