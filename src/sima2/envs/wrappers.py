"""Composable functional wrappers for sima2's pure JAX worlds: reward shaping, rollback and a safety filter.

Every wrapper is an `eqx.Module` that is itself a functional environment with the same signatures as the
world it wraps (see the shared environment contract):

    obs, state = wrapper.reset(key, params)
    obs, state, reward, done, info = wrapper.step(key, state, action, params)   # auto-resets when done
    action = wrapper.expert_action(state, params)

so wrappers nest in any order, e.g. ``SafetyFilter(RollbackWrapper(RewardShaper(world), ...), ...)``, and
run under ``jax.jit``/``jax.vmap``/``jax.lax.scan``. A wrapper's state is a PyTree holding the wrapped
state in ``state.inner`` next to the wrapper's own extras. Coefficients are PyTree leaves (float32
arrays), so a batch of coefficient settings can be vmapped like any other input; structural settings
(grid shapes, callables) are static. ``params`` pass through unchanged to the innermost world.

What the wrappers read from the wrapped environment (nothing beyond the contract unless stated):
- ``info["success"]``, ``info["invalid_move"]``, ``info["agent_pos"]``, ``info["distance_to_goal"]``,
  ``info["timeout"]`` on every step, and ``env.action_nvec`` / ``env.expert_action`` where used.
- `RollbackWrapper` measures simulated time either from a fixed ``seconds_per_step`` or, when that is
  ``None``, from ``info["elapsed_ticks"]`` (simulation ticks advanced by this step) at ``tick_rate_hz``.
- User callables (``is_destructive``, ``is_invalid``, ``controller``, ``probe``) receive the *innermost*
  world state (all wrapper states peeled off), so they are written once against the world.
- ``info["agent_pos"]``/``info["distance_to_goal"]`` on a done step describe the position the step
  reached, before the automatic reset.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

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


class Wrapper(eqx.Module):
    """Base class: holds the wrapped env, delegates `expert_action` and forwards unknown attributes.

    The wrapped env is a regular field (not static) so that coefficients of nested wrappers stay PyTree
    leaves; the world itself is an `eqx.Module` of static configuration and contributes no leaves.
    """

    env: Any

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: forward e.g. `action_nvec`, `num_actions` to the wrapped env.
        if name.startswith("_") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> Any:
        """The innermost (non-wrapper) environment."""
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

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


def _require_info_keys(info: dict, keys: tuple[str, ...], who: str) -> None:
    missing = [k for k in keys if k not in info]
    if missing:
        raise ValueError(f"{who} needs info keys {missing} from the wrapped env's step(); got {sorted(info)}")


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
    """Replaces (or augments) the world's reward with separately reported shaping terms.

    reward = success * info["success"] + invalid_move * info["invalid_move"]
             + new_region * [first visit of the agent's region this episode]
             + (gamma * phi(s') - phi(s))          with phi(s) = -potential * distance_to_goal(s)
             + env_reward * (wrapped env's reward)

    `phi` is taken as 0 at terminal (non-timeout) states so potential shaping keeps optimal policies.
    Regions are square blocks of `region_size` grid cells: region (i, j) covers agent_pos in
    [i*region_size, (i+1)*region_size) x [j*region_size, (j+1)*region_size); positions outside the
    `num_regions` grid are clipped to its border regions. Each term is reported in `info` as
    "reward_success", "reward_invalid_move", "reward_exploration", "reward_potential", "reward_env".

    The contract gives agent_pos/distance_to_goal only on steps. `probe(world_state, params)` (optional)
    returns ``{"agent_pos": f32[2], "distance_to_goal": f32[]}`` for a state, so that the start region of
    an episode is marked visited without a bonus and the first step's potential difference is exact.
    Without a probe the first step of each episode only seeds the visit grid and the potential (no
    exploration bonus, no potential term on that step).
    """

    success: Float[Array, ""] = eqx.field(converter=_as_f32, default=1.0)
    invalid_move: Float[Array, ""] = eqx.field(converter=_as_f32, default=-0.1)
    new_region: Float[Array, ""] = eqx.field(converter=_as_f32, default=0.5)
    potential: Float[Array, ""] = eqx.field(converter=_as_f32, default=0.0)
    gamma: Float[Array, ""] = eqx.field(converter=_as_f32, default=0.99)
    env_reward: Float[Array, ""] = eqx.field(converter=_as_f32, default=0.0)
    region_size: float = eqx.field(static=True, default=2.0)
    num_regions: tuple[int, int] = eqx.field(static=True, default=(16, 16))
    probe: Callable[..., dict] | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        if not (isinstance(self.region_size, int | float) and self.region_size > 0):
            raise ValueError(f"region_size must be a positive number of grid cells, got {self.region_size!r}")
        if len(self.num_regions) != 2 or min(self.num_regions) < 1:
            raise ValueError(f"num_regions must be two positive ints (x, y), got {self.num_regions!r}")

    def _region(self, pos: Float[Array, "2"]) -> Int[Array, "2"]:
        cell = jnp.floor(pos / self.region_size).astype(jnp.int32)
        return jnp.clip(cell, 0, jnp.asarray(self.num_regions, jnp.int32) - 1)

    def _phi(self, distance: Float[Array, ""]) -> Float[Array, ""]:
        # An unreachable goal (inf distance) contributes no potential rather than NaNs.
        return -self.potential * jnp.where(jnp.isfinite(distance), distance, 0.0)

    def _episode_start(self, inner: PyTree, params: PyTree) -> tuple[Array, Array, Array]:
        empty = jnp.zeros(self.num_regions, dtype=bool)
        if self.probe is None:
            return empty, jnp.zeros((), jnp.float32), jnp.asarray(False)
        probed = self.probe(unwrap_state(self.env, inner), params)
        region = self._region(jnp.asarray(probed["agent_pos"], jnp.float32))
        visited = empty.at[region[0], region[1]].set(True)
        phi = self._phi(jnp.asarray(probed["distance_to_goal"], jnp.float32))
        return visited, phi, jnp.asarray(True)

    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[PyTree, RewardShaperState]:
        obs, inner = self.env.reset(key, params)
        visited, phi, seeded = self._episode_start(inner, params)
        return obs, RewardShaperState(inner=inner, visited=visited, potential=phi, seeded=seeded)

    def step(
        self, key: PRNGKeyArray, state: RewardShaperState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[PyTree, RewardShaperState, Float[Array, ""], Bool[Array, ""], dict[str, Array]]:
        obs, inner, env_reward, done, info = self.env.step(key, state.inner, action, params)
        _require_info_keys(
            info, ("success", "invalid_move", "agent_pos", "distance_to_goal", "timeout"), "RewardShaper"
        )
        region = self._region(jnp.asarray(info["agent_pos"], jnp.float32))
        first_visit = ~state.visited[region[0], region[1]]
        visited = state.visited.at[region[0], region[1]].set(True)

        phi_next = self._phi(jnp.asarray(info["distance_to_goal"], jnp.float32))
        terminated = done & ~info["timeout"]
        potential_term = self.gamma * jnp.where(terminated, 0.0, phi_next) - state.potential

        terms = {
            "reward_success": self.success * info["success"],
            "reward_invalid_move": self.invalid_move * info["invalid_move"],
            "reward_exploration": jnp.where(state.seeded & first_visit, self.new_region, 0.0),
            "reward_potential": jnp.where(state.seeded, potential_term, 0.0),
            "reward_env": self.env_reward * env_reward,
        }
        terms = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
        reward = sum(terms.values())

        # On done the inner env has already auto-reset: start the next episode's bookkeeping.
        start_visited, start_phi, start_seeded = self._episode_start(inner, params)
        new_state = RewardShaperState(
            inner=inner,
            visited=jnp.where(done, start_visited, visited),
            potential=jnp.where(done, start_phi, phi_next),
            seeded=jnp.where(done, start_seeded, True),
        )
        return obs, new_state, reward, done, {**info, **terms}


# --------------------------------------------------------------------------------------------------------
# RollbackWrapper
# --------------------------------------------------------------------------------------------------------


class RollbackState(eqx.Module):
    """Wrapped state plus the last good snapshot, the no-progress timer and the fallback counters."""

    inner: PyTree
    snapshot: PyTree
    snapshot_obs: PyTree
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

    Progress is a new best (lowest) ``info["distance_to_goal"]`` this episode, by more than `min_progress`
    grid cells, or success. A progressing step's resulting state (and its observation) becomes the
    snapshot, as does each episode's start state. After every step the no-progress timer advances by the
    simulated seconds of that step (``seconds_per_step``, or ``info["elapsed_ticks"] / tick_rate_hz`` when
    ``seconds_per_step`` is None); when it reaches `timeout_s`, or `is_invalid(world_state, params)` holds
    (default: any non-finite float in the state), the step's outcome is discarded:

    - ``rollback_to="snapshot"``: the snapshot state and observation are restored, the episode continues;
    - ``rollback_to="reset"``: the world is reset; the step is reported done with ``info["timeout"]`` set.

    The step's reward is reduced by `penalty`. For the next `fallback_steps` steps the agent's action is
    replaced by `controller(key, world_state, params)` (default: the wrapped env's `expert_action`).
    `info` gains "rollback" (this step), "fallback_active" (this step's action came from the controller),
    "rollback_count" and "fallback_step_count" (this episode so far; on done steps, the finished
    episode's totals) and "stalled_seconds". Wrappers outside this one are not rolled back.
    """

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
        if self.fallback_steps > 0 and self.controller is None and not hasattr(self.env, "expert_action"):
            raise ValueError("fallback_steps > 0 needs a `controller` or a wrapped env with expert_action()")
        if self.tick_rate_hz <= 0:
            raise ValueError(f"tick_rate_hz must be positive, got {self.tick_rate_hz!r}")

    def _fresh(
        self, obs: PyTree, inner: PyTree, rollback_count: Array, fallback_step_count: Array
    ) -> RollbackState:
        return RollbackState(
            inner=inner,
            snapshot=inner,
            snapshot_obs=obs,
            best_distance=jnp.asarray(jnp.inf, jnp.float32),
            stalled_seconds=jnp.zeros((), jnp.float32),
            fallback_left=jnp.zeros((), jnp.int32),
            rollback_count=rollback_count,
            fallback_step_count=fallback_step_count,
        )

    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[PyTree, RollbackState]:
        obs, inner = self.env.reset(key, params)
        zero = jnp.zeros((), jnp.int32)
        return obs, self._fresh(obs, inner, zero, zero)

    def _step_seconds(self, info: dict) -> Float[Array, ""]:
        if self.seconds_per_step is not None:
            return self.seconds_per_step
        if "elapsed_ticks" not in info:
            raise ValueError(
                "RollbackWrapper needs simulated time: pass seconds_per_step=..., or wrap an env whose "
                "step() info has 'elapsed_ticks' (ticks advanced by the step)"
            )
        return jnp.asarray(info["elapsed_ticks"], jnp.float32) / self.tick_rate_hz

    def step(
        self, key: PRNGKeyArray, state: RollbackState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[PyTree, RollbackState, Float[Array, ""], Bool[Array, ""], dict[str, Array]]:
        step_key, control_key, reset_key = jax.random.split(key, 3)
        use_fallback = state.fallback_left > 0
        if self.fallback_steps > 0:
            if self.controller is None:
                fallback_action = self.env.expert_action(state.inner, params)
            else:
                fallback_action = self.controller(control_key, unwrap_state(self.env, state.inner), params)
            action = jnp.where(use_fallback, jnp.asarray(fallback_action, action.dtype), action)

        obs, inner, reward, done, info = self.env.step(step_key, state.inner, action, params)
        _require_info_keys(info, ("success", "distance_to_goal", "timeout"), "RollbackWrapper")
        distance = jnp.asarray(info["distance_to_goal"], jnp.float32)
        progress = (distance < state.best_distance - self.min_progress) | info["success"]
        stalled_seconds = jnp.where(progress, 0.0, state.stalled_seconds + self._step_seconds(info))
        if self.is_invalid is None:
            invalid = ~_all_finite(inner)
        else:
            invalid = jnp.asarray(self.is_invalid(unwrap_state(self.env, inner), params), bool)
        rollback = ((stalled_seconds >= self.timeout_s) | invalid) & ~done

        if self.rollback_to == "snapshot":
            restored_obs, restored_inner = state.snapshot_obs, state.snapshot
        else:
            restored_obs, restored_inner = self.env.reset(reset_key, params)
            done = done | rollback
            info = {**info, "timeout": info["timeout"] | rollback}
        obs = _select(rollback, restored_obs, obs)
        inner = _select(rollback, restored_inner, inner)
        reward = reward - self.penalty * rollback

        rollback_count = state.rollback_count + rollback.astype(jnp.int32)
        fallback_step_count = state.fallback_step_count + use_fallback.astype(jnp.int32)
        fallback_left = jnp.where(
            rollback,
            self.fallback_steps,
            jnp.maximum(state.fallback_left - use_fallback.astype(jnp.int32), 0),
        ).astype(jnp.int32)
        take_snapshot = progress & ~rollback
        continued = RollbackState(
            inner=inner,
            snapshot=_select(take_snapshot, inner, state.snapshot),
            snapshot_obs=_select(take_snapshot, obs, state.snapshot_obs),
            best_distance=jnp.where(progress & ~rollback, distance, state.best_distance),
            stalled_seconds=jnp.where(rollback, 0.0, stalled_seconds),
            fallback_left=fallback_left,
            rollback_count=rollback_count,
            fallback_step_count=fallback_step_count,
        )
        zero = jnp.zeros((), jnp.int32)
        new_state = _select(done, self._fresh(obs, inner, zero, zero), continued)
        info = {
            **info,
            "rollback": rollback,
            "fallback_active": use_fallback,
            "rollback_count": rollback_count,
            "fallback_step_count": fallback_step_count,
            "stalled_seconds": continued.stalled_seconds,
        }
        return obs, new_state, reward, done, info


# --------------------------------------------------------------------------------------------------------
# SafetyFilter
# --------------------------------------------------------------------------------------------------------


class SafetyFilterState(eqx.Module):
    """Wrapped state plus the wrapped env's own action mask for that state (all True if it has none)."""

    inner: PyTree
    inner_mask: Bool[Array, " mask"]


class SafetyFilter(Wrapper):
    """Blocks destructive actions and exposes an action mask to the policy as ``obs["action_mask"]``.

    `is_destructive(world_state, action, params) -> bool[]` marks an action as destructive in a state.
    An action is *blocked* if it is destructive or any of its factor values is masked out by the wrapped
    env's own ``obs["action_mask"]`` (masks combine by logical AND). A blocked action is replaced by
    `safe_action` (if given and not itself blocked) or else by the first unblocked action in
    lexicographic order, and ``info["safety_blocked"]`` is set. If every action is blocked the
    replacement is `safe_action` (or all zeros) and ``info["safety_no_safe_action"]`` is set.

    ``obs["action_mask"]`` is Bool[sum(action_nvec)]: factor values concatenated over factors; a value is
    allowed iff some unblocked joint action uses it. It is computed by evaluating `is_destructive` on
    every joint action (prod(action_nvec) <= `max_joint_actions`), so it is exact per factor value; a
    combination of allowed values sampled independently may still be blocked, and is then replaced.
    """

    is_destructive: Callable[..., Array] = eqx.field(static=True)
    safe_action: Int[Array, " factors"] | None = None
    max_joint_actions: int = eqx.field(static=True, default=4096)

    def __check_init__(self) -> None:
        if not callable(self.is_destructive):
            raise TypeError(f"is_destructive must be callable, got {type(self.is_destructive).__name__}")
        nvec = self._nvec
        if math.prod(nvec) > self.max_joint_actions:
            raise ValueError(
                f"SafetyFilter enumerates all {math.prod(nvec)} joint actions of action_nvec={nvec}, "
                f"more than "
                f"max_joint_actions={self.max_joint_actions}; raise the limit if that is intended"
            )
        if self.safe_action is not None and np.shape(self.safe_action) != (len(nvec),):
            raise ValueError(f"safe_action must have shape ({len(nvec)},), got {np.shape(self.safe_action)}")

    @property
    def _nvec(self) -> tuple[int, ...]:
        nvec = getattr(self.env, "action_nvec", None)
        if nvec is None:
            raise ValueError("SafetyFilter needs the wrapped env to define action_nvec")
        return tuple(int(n) for n in nvec)

    def _joint_actions(self) -> Int[Array, "joint factors"]:
        return jnp.asarray(list(itertools.product(*(range(n) for n in self._nvec))), jnp.int32)

    def _inner_mask(self, obs: PyTree) -> Bool[Array, " mask"]:
        if not isinstance(obs, dict):
            raise TypeError(
                f"SafetyFilter needs dict observations to add 'action_mask', got {type(obs).__name__}"
            )
        if "action_mask" in obs:
            return jnp.asarray(obs["action_mask"], bool)
        return jnp.ones((sum(self._nvec),), bool)

    def _blocked(
        self, inner: PyTree, inner_mask: Bool[Array, " mask"], action: Int[Array, " factors"], params: PyTree
    ) -> Bool[Array, ""]:
        offsets = np.cumsum((0,) + self._nvec[:-1])
        masked_out = ~jnp.all(inner_mask[action + offsets])
        destructive = jnp.asarray(self.is_destructive(unwrap_state(self.env, inner), action, params), bool)
        return destructive | masked_out

    def _allowed_joint(self, inner: PyTree, inner_mask: Array, params: PyTree) -> Bool[Array, " joint"]:
        return ~jax.vmap(lambda a: self._blocked(inner, inner_mask, a, params))(self._joint_actions())

    def _factor_mask(self, allowed_joint: Bool[Array, " joint"]) -> Bool[Array, " mask"]:
        grid = allowed_joint.reshape(self._nvec)
        axes = range(len(self._nvec))
        return jnp.concatenate([jnp.any(grid, axis=tuple(a for a in axes if a != f)) for f in axes])

    def _wrap(self, obs: PyTree, inner: PyTree, params: PyTree) -> tuple[PyTree, SafetyFilterState]:
        inner_mask = self._inner_mask(obs)
        mask = self._factor_mask(self._allowed_joint(inner, inner_mask, params))
        return {**obs, "action_mask": mask}, SafetyFilterState(inner=inner, inner_mask=inner_mask)

    def action_mask(self, state: SafetyFilterState, params: PyTree) -> Bool[Array, " mask"]:
        """The mask exposed in the observation for `state`."""
        return self._factor_mask(self._allowed_joint(state.inner, state.inner_mask, params))

    def filter_action(
        self, state: SafetyFilterState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[Int[Array, " factors"], Bool[Array, ""], Bool[Array, ""]]:
        """(action actually executed, whether `action` was blocked, whether no safe action exists)."""
        blocked = self._blocked(state.inner, state.inner_mask, action, params)
        allowed = self._allowed_joint(state.inner, state.inner_mask, params)
        none_safe = ~jnp.any(allowed)
        first_safe = self._joint_actions()[jnp.argmax(allowed)]
        if self.safe_action is None:
            replacement = jnp.where(none_safe, jnp.zeros_like(first_safe), first_safe)
        else:
            safe = jnp.asarray(self.safe_action, jnp.int32)
            safe_ok = ~self._blocked(state.inner, state.inner_mask, safe, params)
            replacement = jnp.where(safe_ok | none_safe, safe, first_safe)
        executed = jnp.where(blocked, replacement.astype(action.dtype), action)
        return executed, blocked, none_safe

    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[PyTree, SafetyFilterState]:
        obs, inner = self.env.reset(key, params)
        return self._wrap(obs, inner, params)

    def step(
        self, key: PRNGKeyArray, state: SafetyFilterState, action: Int[Array, " factors"], params: PyTree
    ) -> tuple[PyTree, SafetyFilterState, Float[Array, ""], Bool[Array, ""], dict[str, Array]]:
        executed, blocked, none_safe = self.filter_action(state, action, params)
        obs, inner, reward, done, info = self.env.step(key, state.inner, executed, params)
        obs, new_state = self._wrap(obs, inner, params)
        info = {
            **info,
            "safety_blocked": blocked,
            "safety_no_safe_action": none_safe,
            "executed_action": executed,
        }
        return obs, new_state, reward, done, info
