"""Composable functional wrappers for sima2's pure JAX worlds: reward shaping, rollback and a safety filter.

Every wrapper is a `sima2.contract.Env` around another one, so it has the same `reset`/`step` (auto-reset
included, defined once in the contract) and wrappers nest in any order, e.g.
``SafetyFilter(RollbackWrapper(RewardShaper(world), ...), ...)``, under ``jax.jit``/``jax.vmap``/``jax.lax.scan``.
A wrapper implements `init`, `observe` and `transition` on top of the wrapped env's; its state is a PyTree
holding the wrapped state in ``state.inner`` next to the wrapper's own extras. Coefficients are PyTree
leaves (float32 arrays), so a batch of coefficient settings can be vmapped like any other input;
structural settings (grid shapes, callables) are static. ``params`` pass through to the innermost world.

What the wrappers read is the typed `StepInfo` of the wrapped env's transition: `success`, `terminated`,
`invalid_move`, `agent_pos`, `distance_to_goal`, `elapsed_ticks`. What they report is typed too:
`world_rollback`, `fallback_step`, `action_blocked` and `agent_acted`; the shaping terms go to
`info.extras` (logged, never read). User callables (``is_destructive``, ``is_invalid``, ``controller``,
``probe``) receive the *innermost* world state (all wrapper states peeled off), so they are written once
against the world.

Over 400 lines on purpose: the three wrappers share the `Wrapper` base and the state-peeling helpers and
are composed together; each is one short class.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from sima2.contract import ArraySpec, Env, EnvSpec, Observation, StepInfo
from sima2.envs.shaping import DEFAULT_SHAPING, ShapingCoefficients, potential_of, shaping_terms

__all__ = [
    "RewardShaper",
    "RewardShaperState",
    "RollbackState",
    "RollbackWrapper",
    "SafetyFilter",
    "SafetyFilterState",
    "Wrapper",
    "unwrap_state",
]


def _as_f32(value: Any) -> Array:
    return jnp.asarray(value, dtype=jnp.float32)


def _as_optional_f32(value: Any) -> Array | None:
    return None if value is None else jnp.asarray(value, dtype=jnp.float32)


def _select(pred: Bool[Array, ""], on_true: PyTree, on_false: PyTree) -> PyTree:
    """Elementwise `where` over two PyTrees of the same structure (vmap-friendly, no Python branching)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class Wrapper(Env):
    """An env around another one (`env`). The wrapped env is a regular field (not static) so that
    coefficients of nested wrappers stay PyTree leaves; the world itself contributes no leaves."""

    env: eqx.AbstractVar[Env]

    @property
    def unwrapped(self) -> Env:
        """The innermost (non-wrapper) environment."""
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    def default_params(self, *args: Any, **kwargs: Any) -> PyTree:
        return self.env.default_params(*args, **kwargs)

    def expert_action(self, state: PyTree, params: PyTree) -> Int[Array, " factors"]:
        return self.env.expert_action(state.inner, params)

    def base_state(self, state: PyTree) -> PyTree:
        """This wrapper's state with every wrapper layer peeled off: the world's own state."""
        return unwrap_state(self, state)


def unwrap_state(env: Any, state: PyTree) -> PyTree:
    """Peel wrapper states off `state` (the state of `env`) down to the innermost world's state."""
    while isinstance(env, Wrapper):
        env, state = env.env, state.inner
    return state


# --------------------------------------------------------------------------------------------------------
# RewardShaper
# --------------------------------------------------------------------------------------------------------


class RewardShaperState(eqx.Module):
    """Wrapped state plus the episode's region visit grid and the last shaping potential."""

    inner: PyTree
    visited: Bool[Array, "regions_x regions_y"]
    potential: Float[Array, ""]
    # False until the episode's start region/potential is known (only without a `probe`, see RewardShaper).
    seeded: Bool[Array, ""]


class RewardShaper(Wrapper):
    """Replaces (or augments) the world's reward with the shaping terms of `sima2.envs.shaping` (one
    formula, one set of defaults: `ShapingCoefficients()`), each reported in `info.extras` as
    "reward_success", "reward_invalid_move", "reward_exploration", "reward_potential", "reward_env".

    Regions are square blocks of `region_size` grid cells: region (i, j) covers agent_pos in
    [i*region_size, (i+1)*region_size) x [j*region_size, (j+1)*region_size); positions outside the
    `num_regions` grid are clipped to its border regions; an unknown (NaN) position visits nothing.

    The contract gives agent_pos/distance_to_goal only on steps. `probe(world_state, params)` (optional)
    returns ``(agent_pos f32[2], distance_to_goal f32[])`` for a state, so that the start region of an
    episode is marked visited without a bonus and the first step's potential difference is exact. Without
    a probe the first step of each episode only seeds the visit grid and the potential (no exploration
    bonus, no potential term on that step).
    """

    env: Env
    success: Float[Array, ""] = eqx.field(converter=_as_f32, default=DEFAULT_SHAPING.success)
    invalid_move: Float[Array, ""] = eqx.field(converter=_as_f32, default=DEFAULT_SHAPING.invalid_move)
    new_region: Float[Array, ""] = eqx.field(converter=_as_f32, default=DEFAULT_SHAPING.new_region)
    potential: Float[Array, ""] = eqx.field(converter=_as_f32, default=DEFAULT_SHAPING.potential)
    gamma: Float[Array, ""] = eqx.field(converter=_as_f32, default=DEFAULT_SHAPING.gamma)
    env_reward: Float[Array, ""] = eqx.field(converter=_as_f32, default=DEFAULT_SHAPING.env_reward)
    region_size: float = eqx.field(static=True, default=DEFAULT_SHAPING.region_size)
    num_regions: tuple[int, int] = eqx.field(static=True, default=(16, 16))
    probe: Callable[..., tuple[Array, Array]] | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        ShapingCoefficients(region_size=self.region_size)  # the one region_size check
        if len(self.num_regions) != 2 or min(self.num_regions) < 1:
            raise ValueError(f"num_regions must be two positive ints (x, y), got {self.num_regions!r}")

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    def _region(self, pos: Float[Array, "2"]) -> tuple[Int[Array, "2"], Bool[Array, ""]]:
        """The region of `pos` and whether the position is known at all."""
        known = jnp.all(jnp.isfinite(pos))
        cell = jnp.floor(jnp.where(known, pos, 0.0) / self.region_size).astype(jnp.int32)
        return jnp.clip(cell, 0, jnp.asarray(self.num_regions, jnp.int32) - 1), known

    def init(self, key: PRNGKeyArray, params: PyTree) -> RewardShaperState:
        inner = self.env.init(key, params)
        empty = jnp.zeros(self.num_regions, dtype=bool)
        if self.probe is None:
            return RewardShaperState(inner, empty, jnp.zeros((), jnp.float32), jnp.asarray(False))
        agent_pos, distance = self.probe(unwrap_state(self.env, inner), params)
        region, known = self._region(jnp.asarray(agent_pos, jnp.float32))
        visited = empty.at[region[0], region[1]].set(known)
        return RewardShaperState(inner, visited, potential_of(self.potential, distance), jnp.asarray(True))

    def observe(self, state: RewardShaperState, params: PyTree) -> Observation:
        return self.env.observe(state.inner, params)

    def transition(
        self, key: PRNGKeyArray, state: RewardShaperState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[RewardShaperState, Float[Array, ""], StepInfo]:
        inner, env_reward, info = self.env.transition(key, state.inner, action, params)
        region, known = self._region(info.agent_pos)
        first_visit = known & ~state.visited[region[0], region[1]]
        visited = state.visited.at[region[0], region[1]].set(state.visited[region[0], region[1]] | known)
        phi_next = potential_of(self.potential, info.distance_to_goal)
        terms = shaping_terms(
            self,
            success=info.success,
            invalid_move=info.invalid_move,
            new_region_visit=state.seeded & first_visit,
            potential_before=state.potential,
            potential_after=phi_next,
            terminated=info.terminated,
            env_reward=env_reward,
        )
        terms["reward_potential"] = jnp.where(state.seeded, terms["reward_potential"], 0.0)
        reward = sum(terms.values())
        new_state = RewardShaperState(inner=inner, visited=visited, potential=phi_next, seeded=jnp.asarray(True))
        return new_state, reward, dataclasses.replace(info, extras={**info.extras, **terms})


# --------------------------------------------------------------------------------------------------------
# RollbackWrapper
# --------------------------------------------------------------------------------------------------------


class RollbackState(eqx.Module):
    """Wrapped state plus the last good snapshot, the no-progress timer and the fallback counters."""

    inner: PyTree
    snapshot: PyTree
    best_distance: Float[Array, ""]
    stalled_seconds: Float[Array, ""]
    fallback_left: Int[Array, ""]
    rollback_count: Int[Array, ""]
    fallback_step_count: Int[Array, ""]


def _all_finite(tree: PyTree) -> Bool[Array, ""]:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class RollbackWrapper(Wrapper):
    """Restores the last good state when the agent makes no progress for `timeout_s` or the state is invalid.

    Progress is a new best (lowest) `info.distance_to_goal` this episode, by more than `min_progress` grid
    cells, or success. A progressing step's resulting state becomes the snapshot, as does each episode's
    start state. After every step the no-progress timer advances by the simulated seconds of that step
    (``seconds_per_step``, or ``info.elapsed_ticks / tick_rate_hz`` when ``seconds_per_step`` is None); when
    it reaches `timeout_s`, or `is_invalid(world_state, params)` holds (default: any non-finite float in
    the state), the step's outcome is discarded:

    - ``rollback_to="snapshot"``: the snapshot state is restored, the episode continues;
    - ``rollback_to="reset"``: the step is reported truncated, so the episode ends and the world resets.

    The step's reward is reduced by `penalty` and `info.world_rollback` is set. For the next
    `fallback_steps` steps the agent's action is replaced by `controller(key, world_state, params)`
    (default: the wrapped env's `expert_action`); those steps report `info.fallback_step` and
    `info.agent_acted` False. Wrappers outside this one are not rolled back.
    """

    env: Env
    timeout_s: Float[Array, ""] = eqx.field(converter=_as_f32, default=10.0)
    penalty: Float[Array, ""] = eqx.field(converter=_as_f32, default=1.0)
    min_progress: Float[Array, ""] = eqx.field(converter=_as_f32, default=0.0)
    seconds_per_step: Float[Array, ""] | None = eqx.field(converter=_as_optional_f32, default=None)
    fallback_steps: int = eqx.field(static=True, default=10)
    tick_rate_hz: float = eqx.field(static=True, default=60.0)
    rollback_to: str = eqx.field(static=True, default="snapshot")
    controller: Callable[..., Array] | None = eqx.field(static=True, default=None)
    is_invalid: Callable[..., Array] | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        if self.rollback_to not in ("snapshot", "reset"):
            raise ValueError(f"rollback_to must be 'snapshot' or 'reset', got {self.rollback_to!r}")
        if not (isinstance(self.fallback_steps, int) and self.fallback_steps >= 0):
            raise ValueError(f"fallback_steps must be a non-negative int, got {self.fallback_steps!r}")
        if self.tick_rate_hz <= 0:
            raise ValueError(f"tick_rate_hz must be positive, got {self.tick_rate_hz!r}")

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    def init(self, key: PRNGKeyArray, params: PyTree) -> RollbackState:
        inner = self.env.init(key, params)
        zero = jnp.zeros((), jnp.int32)
        return RollbackState(
            inner=inner,
            snapshot=inner,
            best_distance=jnp.asarray(jnp.inf, jnp.float32),
            stalled_seconds=jnp.zeros((), jnp.float32),
            fallback_left=zero,
            rollback_count=zero,
            fallback_step_count=zero,
        )

    def observe(self, state: RollbackState, params: PyTree) -> Observation:
        return self.env.observe(state.inner, params)

    def _step_seconds(self, info: StepInfo) -> Float[Array, ""]:
        if self.seconds_per_step is not None:
            return self.seconds_per_step
        return info.elapsed_ticks.astype(jnp.float32) / self.tick_rate_hz

    def transition(
        self, key: PRNGKeyArray, state: RollbackState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[RollbackState, Float[Array, ""], StepInfo]:
        step_key, control_key = jax.random.split(key)
        use_fallback = state.fallback_left > 0
        if self.fallback_steps > 0:
            if self.controller is None:
                fallback_action = self.env.expert_action(state.inner, params)
            else:
                fallback_action = self.controller(control_key, unwrap_state(self.env, state.inner), params)
            action = jnp.where(use_fallback, jnp.asarray(fallback_action, action.dtype), action)

        inner, reward, info = self.env.transition(step_key, state.inner, action, params)
        distance = info.distance_to_goal
        progress = (distance < state.best_distance - self.min_progress) | info.success
        stalled_seconds = jnp.where(progress, 0.0, state.stalled_seconds + self._step_seconds(info))
        if self.is_invalid is None:
            invalid = ~_all_finite(inner)
        else:
            invalid = jnp.asarray(self.is_invalid(unwrap_state(self.env, inner), params), bool)
        rollback = ((stalled_seconds >= self.timeout_s) | invalid) & ~info.done

        if self.rollback_to == "snapshot":
            inner = _select(rollback, state.snapshot, inner)
            truncated = info.truncated
        else:
            truncated = info.truncated | rollback
        reward = reward - self.penalty * rollback
        take_snapshot = progress & ~rollback
        new_state = RollbackState(
            inner=inner,
            snapshot=_select(take_snapshot, inner, state.snapshot),
            best_distance=jnp.where(take_snapshot, distance, state.best_distance),
            stalled_seconds=jnp.where(rollback, 0.0, stalled_seconds),
            fallback_left=jnp.where(
                rollback, self.fallback_steps, jnp.maximum(state.fallback_left - use_fallback.astype(jnp.int32), 0)
            ).astype(jnp.int32),
            rollback_count=state.rollback_count + rollback.astype(jnp.int32),
            fallback_step_count=state.fallback_step_count + use_fallback.astype(jnp.int32),
        )
        info = dataclasses.replace(
            info,
            truncated=truncated,
            world_rollback=info.world_rollback | rollback,
            fallback_step=info.fallback_step | use_fallback,
            agent_acted=info.agent_acted & ~use_fallback,
        )
        return new_state, reward, info


# --------------------------------------------------------------------------------------------------------
# SafetyFilter
# --------------------------------------------------------------------------------------------------------


class SafetyFilterState(eqx.Module):
    """The wrapped state (the action mask is computed from it)."""

    inner: PyTree


class SafetyFilter(Wrapper):
    """Blocks destructive actions and exposes an action mask to the policy as ``obs["action_mask"]``.

    `is_destructive(world_state, action, params) -> bool[]` marks an action as destructive in a state.
    An action is *blocked* if it is destructive or any of its factor values is masked out by the wrapped
    env's own ``obs["action_mask"]`` (masks combine by logical AND). A blocked action is replaced by
    `safe_action` (if given and not itself blocked) or else by the first unblocked action in
    lexicographic order, and `info.action_blocked` is set (`info.agent_acted` False). If every action is
    blocked the replacement is `safe_action` (or all zeros) and ``info.extras["safety_no_safe_action"]`` is 1.

    ``obs["action_mask"]`` is Bool[sum(action nvec)]: factor values concatenated over factors; a value is
    allowed iff some unblocked joint action uses it. It is computed by evaluating `is_destructive` on
    every joint action (prod(nvec) <= `max_joint_actions`), so it is exact per factor value; a
    combination of allowed values sampled independently may still be blocked, and is then replaced.
    """

    env: Env
    is_destructive: Callable[..., Array] = eqx.field(static=True)
    safe_action: Int[Array, " factors"] | None = None
    max_joint_actions: int = eqx.field(static=True, default=4096)

    def __check_init__(self) -> None:
        if not callable(self.is_destructive):
            raise TypeError(f"is_destructive must be callable, got {type(self.is_destructive).__name__}")
        nvec = self._nvec
        if math.prod(nvec) > self.max_joint_actions:
            raise ValueError(
                f"SafetyFilter enumerates all {math.prod(nvec)} joint actions of action nvec={nvec}, more than "
                f"max_joint_actions={self.max_joint_actions}; raise the limit if that is intended"
            )
        if self.safe_action is not None and np.shape(self.safe_action) != (len(nvec),):
            raise ValueError(f"safe_action must have shape ({len(nvec)},), got {np.shape(self.safe_action)}")

    @property
    def _nvec(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.env.spec.action.nvec)

    @property
    def spec(self) -> EnvSpec:
        inner = self.env.spec
        observation = dataclasses.replace(inner.observation, action_mask=ArraySpec((sum(self._nvec),), "bool"))
        return dataclasses.replace(inner, observation=observation)

    def _joint_actions(self) -> Int[Array, "joint factors"]:
        return jnp.asarray(list(itertools.product(*(range(n) for n in self._nvec))), jnp.int32)

    def _inner_mask(self, state: SafetyFilterState, params: PyTree) -> Bool[Array, " mask"]:
        if self.env.spec.observation.action_mask is None:
            return jnp.ones((sum(self._nvec),), bool)
        # Only the mask of the wrapped observation is used: jit drops the rest of its computation.
        return jnp.asarray(self.env.observe(state.inner, params)["action_mask"], bool)

    def _blocked(
        self, state: SafetyFilterState, inner_mask: Bool[Array, " mask"], action: Int[Array, " factors"], params: PyTree
    ) -> Bool[Array, ""]:
        offsets = np.cumsum((0,) + self._nvec[:-1])
        masked_out = ~jnp.all(inner_mask[action + offsets])
        destructive = jnp.asarray(self.is_destructive(unwrap_state(self.env, state.inner), action, params), bool)
        return destructive | masked_out

    def _allowed_joint(self, state: SafetyFilterState, inner_mask: Array, params: PyTree) -> Bool[Array, " joint"]:
        return ~jax.vmap(lambda a: self._blocked(state, inner_mask, a, params))(self._joint_actions())

    def action_mask(self, state: SafetyFilterState, params: PyTree) -> Bool[Array, " mask"]:
        """The mask exposed in the observation for `state`."""
        allowed_joint = self._allowed_joint(state, self._inner_mask(state, params), params)
        grid = allowed_joint.reshape(self._nvec)
        axes = range(len(self._nvec))
        return jnp.concatenate([jnp.any(grid, axis=tuple(a for a in axes if a != f)) for f in axes])

    def filter_action(
        self, state: SafetyFilterState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[Int[Array, " factors"], Bool[Array, ""], Bool[Array, ""]]:
        """(action actually executed, whether `action` was blocked, whether no safe action exists)."""
        inner_mask = self._inner_mask(state, params)
        blocked = self._blocked(state, inner_mask, action, params)
        allowed = self._allowed_joint(state, inner_mask, params)
        none_safe = ~jnp.any(allowed)
        first_safe = self._joint_actions()[jnp.argmax(allowed)]
        if self.safe_action is None:
            replacement = jnp.where(none_safe, jnp.zeros_like(first_safe), first_safe)
        else:
            safe = jnp.asarray(self.safe_action, jnp.int32)
            safe_ok = ~self._blocked(state, inner_mask, safe, params)
            replacement = jnp.where(safe_ok | none_safe, safe, first_safe)
        executed = jnp.where(blocked, replacement.astype(action.dtype), action)
        return executed, blocked, none_safe

    def init(self, key: PRNGKeyArray, params: PyTree) -> SafetyFilterState:
        return SafetyFilterState(inner=self.env.init(key, params))

    def observe(self, state: SafetyFilterState, params: PyTree) -> Observation:
        return {**self.env.observe(state.inner, params), "action_mask": self.action_mask(state, params)}

    def transition(
        self, key: PRNGKeyArray, state: SafetyFilterState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[SafetyFilterState, Float[Array, ""], StepInfo]:
        executed, blocked, none_safe = self.filter_action(state, action, params)
        inner, reward, info = self.env.transition(key, state.inner, executed, params)
        info = dataclasses.replace(
            info,
            action_blocked=info.action_blocked | blocked,
            agent_acted=info.agent_acted & ~blocked,
            extras={**info.extras, "safety_no_safe_action": none_safe},
        )
        return SafetyFilterState(inner=inner), reward, info
