"""The one training loop shared by behaviour cloning and PPO.

A stage provides a `TrainState` and a pure `step_fn(state, batch_or_None) -> (state, metrics)`;
`guard_step` wraps it with the anomaly guard (inside `jit`, so no host round-trip per step) and
`run_loop` drives it: batches, metrics, progress, checkpoints, profiler traces and hooks, optionally
several batch-free steps per jitted call.

The anomaly guard skips any update whose loss or gradient norm is not finite, or whose loss spikes above
`spike_factor` times its running mean: the parameters and optimiser state stay at the last good values
(a skipped update), while the step counter, RNG key and data position move on so the bad batch is not retried.
After `max_consecutive` anomalies in a row the run stops with the reason logged, leaving the last good
checkpoint on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from sima2.training.config import GuardConfig

REASON_NONE, REASON_NONFINITE, REASON_SPIKE = 0, 1, 2
REASON_TEXT = {
    REASON_NONE: "none",
    REASON_NONFINITE: "non-finite loss or gradient",
    REASON_SPIKE: "loss spike",
}


class TrainingHalted(RuntimeError):
    """Raised by `run_loop` when the anomaly guard stops a run; the message gives the reason."""


class GuardState(eqx.Module):
    """Running statistics of the anomaly guard (arrays, so it lives inside the jitted state)."""

    loss_ema: Float[Array, ""]
    good_steps: Int[Array, ""]
    consecutive: Int[Array, ""]
    skipped_updates: Int[Array, ""]
    stopped: Bool[Array, ""]
    reason: Int[Array, ""]

    @staticmethod
    def init() -> GuardState:
        zero = jnp.zeros((), jnp.int32)
        return GuardState(jnp.zeros((), jnp.float32), zero, zero, zero, jnp.zeros((), bool), zero)


class TrainState(eqx.Module):
    """Everything that changes during training; checkpointing this PyTree makes a resume exact.

    `model` is the agent (an `eqx.Module`); `opt_state` covers its trainable part; `rollout` is the rollout
    state for PPO (world states, observations, recurrent carries) and None for behaviour cloning.
    """

    model: PyTree
    opt_state: PyTree
    key: PRNGKeyArray
    step: Int[Array, ""]
    guard: GuardState
    rollout: PyTree = None

    @classmethod
    def create(cls, model: PyTree, opt_state: PyTree, key: PRNGKeyArray, rollout: PyTree = None) -> TrainState:
        """The state at step 0, with a fresh anomaly guard."""
        return cls(model, opt_state, key, jnp.zeros((), jnp.int32), GuardState.init(), rollout)


StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]


def guard_step(step_fn: StepFn, config: GuardConfig) -> StepFn:
    """Wrap a step function with the anomaly guard. `metrics` must hold scalar "loss" and "grad_norm"."""
    if not config.enabled:
        return step_fn

    def guarded(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Array]]:
        new_state, metrics = step_fn(state, batch)
        loss = jnp.asarray(metrics["loss"], jnp.float32)
        grad_norm = jnp.asarray(metrics["grad_norm"], jnp.float32)
        guard = state.guard
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        settled = guard.good_steps >= config.warmup_steps
        spike = finite & settled & (jnp.abs(loss) > config.spike_factor * guard.loss_ema)
        ok = finite & ~spike & ~guard.stopped
        reason = jnp.where(~finite, REASON_NONFINITE, jnp.where(spike, REASON_SPIKE, REASON_NONE))

        def choose(new: PyTree, old: PyTree) -> PyTree:
            new_arrays, static = eqx.partition(new, eqx.is_array)
            old_arrays, _ = eqx.partition(old, eqx.is_array)
            kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_arrays, old_arrays)
            return eqx.combine(kept, static)

        # The first good losses seed the running mean directly so warm-up is not biased towards zero.
        decay = jnp.where(guard.good_steps == 0, 0.0, config.ema_decay)
        ema = jnp.where(ok, decay * guard.loss_ema + (1.0 - decay) * jnp.abs(loss), guard.loss_ema)
        consecutive = jnp.where(ok, 0, guard.consecutive + 1).astype(jnp.int32)
        stopping = ~guard.stopped & (consecutive >= config.max_consecutive)
        new_guard = GuardState(
            loss_ema=ema,
            good_steps=guard.good_steps + ok.astype(jnp.int32),
            consecutive=consecutive,
            skipped_updates=guard.skipped_updates + (~ok & ~guard.stopped).astype(jnp.int32),
            stopped=guard.stopped | stopping,
            reason=jnp.where(stopping, reason, guard.reason).astype(jnp.int32),
        )
        new_state = eqx.tree_at(
            lambda s: (s.model, s.opt_state, s.guard),
            new_state,
            (choose(new_state.model, state.model), choose(new_state.opt_state, state.opt_state), new_guard),
            is_leaf=lambda x: x is None,
        )
        metrics = dict(metrics, anomaly=~ok, skipped_updates=new_guard.skipped_updates)
        return new_state, metrics

    return guarded


def compile_step(step_fn: StepFn, state: TrainState) -> StepFn:
    """`step_fn` compiled for states shaped like `state`: one `jax.jit` over the state's arrays and the
    batch, with the state's buffers donated. An update then writes the new weights, optimiser moments and
    worlds in place of the old ones instead of copying every array each step (a frozen pretrained encoder
    included), and a call skips the per-call filtering of a large model that `eqx.filter_jit` does. A state
    passed in is consumed: use the returned one (see `own_buffers` for the first)."""
    _, static = eqx.partition(state, eqx.is_array)
    structure = jax.tree.structure(state)

    def arrays_step(arrays: PyTree, batch: Any) -> tuple[PyTree, dict[str, Array]]:
        new_state, metrics = step_fn(eqx.combine(arrays, static), batch)
        if jax.tree.structure(new_state) != structure:
            raise ValueError("a step must return a state of the structure it was given")
        return eqx.filter(new_state, eqx.is_array), metrics

    compiled = jax.jit(arrays_step, donate_argnums=0)

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Array]]:
        arrays, metrics = compiled(eqx.filter(state, eqx.is_array), batch)
        return eqx.combine(arrays, static), metrics

    return step


def own_buffers(tree: PyTree) -> PyTree:
    """A copy of `tree`'s arrays on their devices: a state whose buffers a compiled step may donate while
    the caller keeps the original (e.g. the agent it passed in, or a checkpoint being written)."""
    return jax.tree.map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, tree)


def host_step(state: TrainState) -> int:
    """The step counter as a Python int (the first seed's, when seeds are vmapped)."""
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _halt_reason(state: TrainState) -> str | None:
    stopped = np.asarray(jax.device_get(state.guard.stopped)).reshape(-1)
    if not stopped.any():
        return None
    reasons = np.asarray(jax.device_get(state.guard.reason)).reshape(-1)[stopped]
    consecutive = np.asarray(jax.device_get(state.guard.consecutive)).reshape(-1)[stopped]
    return (
        f"anomaly guard stopped the run after {int(consecutive.max())} consecutive anomalies "
        f"({REASON_TEXT[int(reasons[0])]})"
    )


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Host floats for logging; vmapped seeds are averaged, non-scalar entries are dropped."""
    host = jax.device_get(metrics)
    out = {}
    for name, value in host.items():
        value = np.asarray(value)
        if value.dtype == bool:
            value = value.astype(np.float32)
        if np.issubdtype(value.dtype, np.number) and value.size > 0:
            out[name] = float(np.mean(value))
    return out


Hook = Callable[[int, TrainState, dict[str, float]], None]


def run_loop(
    state: TrainState,
    step_fn: StepFn,
    num_steps: int,
    *,
    batches: Iterator[Any] | None = None,
    data_position: Callable[[], int] | None = None,
    checkpointer: Any | None = None,
    logger: Any | None = None,
    hooks: Sequence[Hook] = (),
    samples_per_step: int = 1,
    steps_per_call: int = 1,
    evaluate: Callable[[TrainState], dict[str, float]] | None = None,
    evaluate_every: int = 0,
) -> TrainState:
    """Run `step_fn` until `state.step == num_steps` (so a resumed state just continues).

    `batches` yields one batch per step (None: the step makes its own data, as PPO does); `data_position()`
    (the number of batches served) is saved with checkpoints so a resume continues from the same batch.
    `checkpointer` is a `sima2.training.checkpoint.Checkpointer`; `logger` a `MetricsLogger`; each hook is
    called as `hook(step, state, metrics)` at logging steps. Raises `TrainingHalted` when the anomaly
    guard stops the run; checkpoints then stay at the last good one.

    With batch-free steps, `steps_per_call > 1` runs that many steps per jitted call (`scan_steps`), so
    fast steps are not held up by dispatch. A call never crosses a logging, checkpoint or profiler step
    (single steps fill the gaps), so logs, checkpoints and results are those of one step at a time.
    Metrics come from the host only at logging steps, and the guard's state only at logging and
    checkpoint steps.

    `evaluate(state)` (e.g. held-out accuracy) runs every `evaluate_every` steps (0: never) and after the last
    one; its metrics join that step's record, which is then logged (and passed to hooks) even between
    logging steps.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    if steps_per_call > 1 and batches is not None:
        raise ValueError("steps_per_call > 1 needs batch-free steps (batches=None)")
    step = host_step(state)
    log_every = logger.config.log_every if logger is not None else 0
    if logger is not None:
        logger.start(step, num_steps)
    last_time, last_step = time.perf_counter(), step
    metrics: dict[str, Array] = {}

    def data_meta() -> dict[str, Any]:
        return {} if data_position is None else {"data_position": data_position()}

    def needs_host(step: int) -> bool:
        """Whether the loop does host work (log, checkpoint, profiler) right after `step` (or stops)."""
        return (
            step >= num_steps
            or (log_every > 0 and step % log_every == 0)
            or (evaluate is not None and evaluate_every > 0 and step % evaluate_every == 0)
            or (checkpointer is not None and checkpointer.should_save(step))
            or (logger is not None and logger.is_profile_boundary(step))
        )

    try:
        while step < num_steps:
            if logger is not None:
                logger.maybe_profile(step)
            if steps_per_call > 1 and not any(needs_host(step + i) for i in range(1, steps_per_call)):
                state, metrics = _scan_steps_last(step_fn, state, steps_per_call)
                advanced = steps_per_call
            else:
                batch = next(batches) if batches is not None else None
                state, metrics = step_fn(state, batch)
                advanced = 1
            step += advanced
            if logger is not None:
                logger.advance(advanced)
            is_eval = evaluate is not None and (
                step == num_steps or (evaluate_every > 0 and step % evaluate_every == 0)
            )
            is_log = (log_every > 0 and (step % log_every == 0 or step == num_steps)) or is_eval
            is_ckpt = checkpointer is not None and checkpointer.should_save(step)
            if is_log or is_ckpt:
                reason = _halt_reason(state)
                if reason is not None:
                    if logger is not None:
                        logger.event(step, "halt", reason)
                    raise TrainingHalted(reason)
            if is_log:
                now = time.perf_counter()
                host = scalar_metrics(metrics)
                rate = (step - last_step) / max(now - last_time, 1e-9)
                host["steps_per_s"] = rate
                host["samples_per_s"] = rate * samples_per_step
                if is_eval:
                    host.update(evaluate(state))
                last_time, last_step = time.perf_counter(), step  # the evaluation's time is not a step's
                if logger is not None:
                    logger.log(step, host)
                for hook in hooks:
                    hook(step, state, host)
            if is_ckpt:
                checkpointer.save(step, state, data_meta())
        reason = _halt_reason(state)
        if reason is not None:
            if logger is not None:
                logger.event(step, "halt", reason)
            raise TrainingHalted(reason)
        if checkpointer is not None and checkpointer.latest_step() != step:
            checkpointer.save(step, state, data_meta(), force=True)
    finally:
        if checkpointer is not None:
            checkpointer.wait()
        if logger is not None:
            logger.stop_profile()
    return state


@eqx.filter_jit
def _scan_steps_last(step_fn: StepFn, state: TrainState, num_steps: int) -> tuple[TrainState, dict[str, Array]]:
    """`num_steps` batch-free steps in one jitted call, returning the last step's metrics. Module-level,
    so repeated loops over the same `step_fn` reuse the compiled program."""
    state, metrics = scan_steps(step_fn, state, num_steps)
    return state, jax.tree.map(lambda m: m[-1], metrics)


def scan_steps(step_fn: StepFn, state: TrainState, num_steps: int) -> tuple[TrainState, dict[str, Array]]:
    """Run `num_steps` batch-free steps inside one `lax.scan` (call it under `jit`): the fastest way to
    train on functional worlds when no host work is needed between updates. Metrics are stacked."""
    arrays, static = eqx.partition(state, eqx.is_array)

    def body(arrays: PyTree, _: None) -> tuple[PyTree, dict[str, Array]]:
        new_state, metrics = step_fn(eqx.combine(arrays, static), None)
        return eqx.partition(new_state, eqx.is_array)[0], metrics

    arrays, metrics = jax.lax.scan(body, arrays, None, length=num_steps)
    return eqx.combine(arrays, static), metrics
