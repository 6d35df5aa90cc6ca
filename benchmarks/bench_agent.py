"""The agent's own training throughput, its FLOPs and its model FLOPs utilisation (MFU).

For the main job's agent (`cpu-small` on every task family, MiniLM read frozen; or any preset) this measures,
in one process:

- behaviour cloning: samples/s of the jitted update alone (one batch kept on device) and with the
  demonstration batches served as in training (`DemonstrationBatches`, prefetching);
- PPO: env-steps/s of the rollout (`collect_rollout`: the worlds and the agent's sampling) and of the update
  (`ppo_update`: epochs x minibatches) apart, and of both;
- the matrix-multiply FLOPs per sample of each program, counted from its jaxpr with every loop iteration
  (XLA's cost analysis counts a loop body once);
- MFU: the achieved FLOP/s over those of one float32 GEMM of the same total FLOPs timed in the same run (the
  peer: what this machine's XLA reaches on the work it does best), with the ratio printed;
- where the BC update's time goes: the forward pass, the backward pass and the optimiser, and the vision
  encoder's forward and backward alone.

    python benchmarks/bench_agent.py                                  # the main job's agent
    python benchmarks/bench_agent.py --text-encoder none              # the small world-words LM instead
    python benchmarks/bench_agent.py --preset base --image-size 224 --text-encoder none --ppo-envs 8
    python benchmarks/bench_agent.py --no-ppo bc.bc.batch_size=64    # cloning alone, at another batch size
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import sima2.envs as envs
from sima2.policy import Agent
from sima2.training.bc import frozen_instruction_features, make_bc
from sima2.training.data import DemonstrationBatches, longest_instruction, record_demonstrations
from sima2.training.loop import compile_step, own_buffers
from sima2.training.optim import make_optimizer, trainable_spec
from sima2.training.pipeline import pipeline_config
from sima2.training.pipeline_agent import plan_supervision_for
from sima2.training.ppo import collect_rollout, make_ppo, ppo_update
from sima2.training.stages import _chain


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def _dot_flops(jaxpr: Any) -> float:
    """Matrix-multiply FLOPs (2 x output size x contracted size per `dot_general`) of a jaxpr, loop bodies
    counted once per iteration (`scan` lengths; a `while` of unknown trip count once) and the costlier branch
    of a `cond`. XLA's own cost analysis counts a loop body once whatever its trip count, so it undercounts
    scans over time, epochs and minibatches."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif name == "scan":
            total += eqn.params["length"] * _dot_flops(eqn.params["jaxpr"].jaxpr)
        elif name == "cond":
            total += max(_dot_flops(branch.jaxpr) for branch in eqn.params["branches"])
        else:
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else (param,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        total += _dot_flops(inner)
    return total


def _flops(fn: Callable[..., Any], *args: Any) -> float:
    """Matrix-multiply FLOPs of one call of `fn` (see `_dot_flops`)."""
    jaxpr, _, _ = eqx.filter_make_jaxpr(fn)(*args)
    return _dot_flops(jaxpr.jaxpr)


def _gemm_flops_per_s(total_flops: float, repeats: int) -> tuple[float, int]:
    """FLOP/s of one square float32 GEMM of about `total_flops` (2 n^3), and its n."""
    n = max(16, int(round((total_flops / 2) ** (1 / 3))))
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    return 2 * n**3 / _best_seconds(lambda: dot(a, b), repeats), n


def _report(name: str, seconds: float, samples: int, flops: float, repeats: int, unit: str) -> None:
    achieved = flops / seconds
    gemm, n = _gemm_flops_per_s(flops, repeats)
    print(
        f"{name:<34} {samples / seconds:>10,.0f} {unit}/s  {seconds * 1e3:8.1f} ms  "
        f"{flops / samples / 1e6:8.2f} MFLOP/{unit[:-1] if unit.endswith('s') else unit}  "
        f"{achieved / 1e9:6.1f} GFLOP/s vs GEMM {n}^3 {gemm / 1e9:6.1f} GFLOP/s: MFU {achieved / gemm:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--level", default=None, help="default: the preset's (the main job's) level")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--text-encoder", default=None, help="HF id or path, or none (default: the preset's)")
    parser.add_argument("--ppo-envs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bc-steps", type=int, default=30, help="updates timed with the batches served")
    parser.add_argument("--no-ppo", action="store_true", help="time behaviour cloning alone")
    parser.add_argument("overrides", nargs="*", help="pipeline overrides: bc.bc.batch_size=64")
    args = parser.parse_args()

    overrides = [f"level={args.level}"] if args.level else []
    overrides += [f"image_size={args.image_size}"] if args.image_size else []
    overrides += [f"ppo.ppo.num_envs={args.ppo_envs}"] if args.ppo_envs else []
    overrides += args.overrides
    config = pipeline_config(args.preset, overrides)
    if args.text_encoder is not None:
        encoder = None if args.text_encoder.lower() == "none" else args.text_encoder
        config = dataclasses.replace(config, text_encoder=encoder, freeze_language=True if encoder else None)
    language = config.text_encoder or config.planner
    env, params = envs.make(config.level, split="train", image_size=config.image_size, tokenizer=language)
    agent = Agent.from_preset(
        config.preset, env.spec, key=jax.random.key(0), vision=config.vision, planner=config.planner,
        text_encoder=config.text_encoder, freeze_language=config.freeze_language if language else None,
        touch=config.touch,
    )  # fmt: skip
    bc, ppo = config.bc.bc, config.ppo.ppo
    print(f"devices: {jax.devices()}; preset {config.preset}, level {config.level}, {config.image_size}px, "
          f"language {language or 'the preset LM over world words'}; BC batch {bc.batch_size} x {bc.sequence_length} "
          f"steps; PPO {ppo.num_envs} worlds x {ppo.rollout_length} steps, {ppo.update_epochs} epochs x "
          f"{ppo.num_minibatches} minibatches")

    # --- behaviour cloning -----------------------------------------------------------------------------
    demos = record_demonstrations(env, params, jax.random.key(1), num_envs=64, num_steps=64)
    transform, plan_loss = plan_supervision_for(agent, demos, subgoals=config.plans)
    if agent.config.freeze_planner and language is not None:
        features = frozen_instruction_features(agent, demos, longest_instruction(demos))
        transform = features if transform is None else _chain(transform, features)
    batches = DemonstrationBatches(demos, bc.batch_size, seed=0, prefetch=2, put=jax.device_put,
                                   transform=transform, sequence_length=bc.sequence_length)
    samples = bc.batch_size * bc.sequence_length
    init_fn, step_fn = make_bc(agent, config.bc, plan_loss=plan_loss)
    state = init_fn(jax.random.key(2))
    batch = next(batches)
    print("\nbehaviour cloning (one update)")
    # As the training loop runs it (`compile_step`: the state's buffers donated), and as `eqx.filter_jit`
    # runs it (every array copied into fresh buffers each step).
    step = eqx.filter_jit(step_fn)
    step_s = _best_seconds(lambda: step(state, batch), args.repeats)
    _report("  update (eqx.filter_jit)", step_s, samples, _flops(step_fn, state, batch), args.repeats, "samples")
    donating = compile_step(step_fn, state)
    served = own_buffers(state)

    def timed_updates(next_batch: Callable[[], Any]) -> float:
        nonlocal served
        for _ in range(3):
            served, _ = donating(served, next_batch())
        jax.block_until_ready(served)
        start = time.perf_counter()
        for _ in range(args.bc_steps):
            served, _ = donating(served, next_batch())
        jax.block_until_ready(served)
        return (time.perf_counter() - start) / args.bc_steps

    for name, seconds in (
        ("update (compile_step)", timed_updates(lambda: batch)),
        ("update + batches served", timed_updates(lambda: next(batches))),
    ):
        print(f"  {name:<32} {samples / seconds:>10,.0f} samples/s  {seconds * 1e3:8.1f} ms")
    batches.close()

    # Where the update's time goes: forward, forward + backward, the optimiser; the vision encoder alone.
    from sima2.training.bc import bc_loss

    model = state.model
    spec = trainable_spec(model, None)
    loss = eqx.filter_jit(lambda m, b: bc_loss(m, b, plan_loss)[0])
    grad = eqx.filter_jit(lambda m, b: eqx.filter_grad(lambda t, r: bc_loss(eqx.combine(t, r), b, plan_loss)[0])(
        *eqx.partition(m, spec)))
    images = batch["obs"]["image"].reshape(-1, *batch["obs"]["image"].shape[-3:])
    vision = eqx.filter_jit(lambda m, x: jax.vmap(m.encode_image)(x).sum())
    vision_grad = eqx.filter_jit(eqx.filter_grad(lambda m, x: jax.vmap(m.encode_image)(x).sum()))
    parts = {
        "forward (loss)": _best_seconds(lambda: loss(model, batch), args.repeats),
        "forward + backward": _best_seconds(lambda: grad(model, batch), args.repeats),
        "vision forward": _best_seconds(lambda: vision(model, images), args.repeats),
        "vision forward + backward": _best_seconds(lambda: vision_grad(model, images), args.repeats),
    }
    for name, seconds in parts.items():
        print(f"  {name:<32} {seconds * 1e3:8.1f} ms  ({seconds / step_s:.0%} of the update)")

    if args.no_ppo:
        return
    # --- PPO -------------------------------------------------------------------------------------------
    print("\nPPO (one update: rollout, then epochs x minibatches)")
    init_ppo, step_ppo = make_ppo(agent, env, params, config.ppo)
    ppo_state = init_ppo(jax.random.key(3))
    optimizer = make_optimizer(config.ppo.optim)
    rollout_fn = lambda s, k: collect_rollout(s.model, env, params, s.rollout, k, ppo.rollout_length)  # noqa: E731
    update_fn = lambda s, trajectory, carry, value: ppo_update(  # noqa: E731
        s, trajectory, carry, value, optimizer=optimizer, spec=spec, config=ppo)
    rollout, update = eqx.filter_jit(rollout_fn), eqx.filter_jit(update_fn)
    key = jax.random.key(4)
    _, trajectory, carry, value = rollout(ppo_state, key)
    env_steps = ppo.num_envs * ppo.rollout_length
    rollout_s = _best_seconds(lambda: rollout(ppo_state, key), args.repeats)
    # Its FLOPs are an upper bound: the instruction encoder runs under a `cond` for the worlds starting an
    # episode and is counted as if it ran at every step.
    rollout_flops = _flops(rollout_fn, ppo_state, key)
    _report("  rollout (FLOPs: upper bound)", rollout_s, env_steps, rollout_flops, args.repeats, "env-steps")
    update_s = _best_seconds(lambda: update(ppo_state, trajectory, carry, value), args.repeats)
    _report("  update", update_s, env_steps, _flops(update_fn, ppo_state, trajectory, carry, value), args.repeats,
            "env-steps")
    whole_flops = _flops(step_ppo, ppo_state, None)
    whole, ppo_state = compile_step(step_ppo, ppo_state), own_buffers(ppo_state)
    whole_s = float("inf")
    ppo_state, _ = whole(ppo_state, None)
    for _ in range(args.repeats):
        start = time.perf_counter()
        ppo_state, _ = jax.block_until_ready(whole(ppo_state, None))
        whole_s = min(whole_s, time.perf_counter() - start)
    _report("  rollout + update (compile_step)", whole_s, env_steps, whole_flops, args.repeats, "env-steps")


if __name__ == "__main__":
    main()
