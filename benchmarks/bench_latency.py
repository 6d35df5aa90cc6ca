"""Decision latency of one jitted `Agent.act` (pixels + instruction -> action), against the 60 FPS budget.

Each timed call takes a fresh host observation (numpy uint8 image, int32 instruction, float32 proprio),
runs the jitted `act` and brings the action back to the host, as an interactive game loop would. The
figure to beat is one 60 FPS frame (16.67 ms); the script prints p50 / p99 and their ratio to that budget.

    python benchmarks/bench_latency.py                      # cpu-small at 64x64 (+ base on a GPU)
    python benchmarks/bench_latency.py --preset base --sizes 224 512
    python benchmarks/bench_latency.py --train-step         # also: one BC forward+backward+Adam at batch 64

`base` runs only where JAX sees a GPU (or with --force); elsewhere it is reported as not measured. Each
preset's weight bytes and the process's peak RSS so far are printed after its timings.
"""

from __future__ import annotations

import argparse
import resource
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sima2.contract import ActionSpec, ArraySpec, EnvSpec, ObservationSpec
from sima2.envs.world import ACTION_NVEC, PROPRIO_SIZE
from sima2.policy import Agent

FRAME_BUDGET_MS = 1000.0 / 60.0
INSTRUCTION_LENGTH = 24


def _spec() -> EnvSpec:
    """The built-in world's actions and proprio, instructions of INSTRUCTION_LENGTH ids (all read) from a
    vocabulary of 256 (the timed ids are drawn below --vocab)."""
    observation = ObservationSpec(
        image=ArraySpec((64, 64, 3), "uint8"),  # not read: each preset keeps its own ViT image size
        instruction=ArraySpec((INSTRUCTION_LENGTH,), "int32"),
        proprio=ArraySpec((PROPRIO_SIZE,), "float32"),
        vocab_size=256,
    )
    return EnvSpec(observation, ActionSpec(tuple(ACTION_NVEC)), INSTRUCTION_LENGTH)


def _host_obs(rng: np.random.Generator, size: int, proprio_dim: int, vocab: int) -> dict[str, np.ndarray]:
    instruction = np.zeros(INSTRUCTION_LENGTH, np.int32)
    instruction[:8] = rng.integers(1, vocab, 8)
    return {
        "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "instruction": instruction,
        "proprio": rng.standard_normal(proprio_dim).astype(np.float32),
    }


def act_latency(agent: Agent, size: int, iters: int, warmup: int, vocab: int) -> np.ndarray:
    """Milliseconds per decision (host obs in, host action out), one call at a time."""
    act = eqx.filter_jit(agent.act)
    rng = np.random.default_rng(0)
    proprio_dim = agent.policy.config.proprio_dim
    key = jax.random.key(0)
    carry = agent.initial_carry()
    times = []
    for i in range(warmup + iters):
        obs = _host_obs(rng, size, proprio_dim, vocab)
        key, step_key = jax.random.split(key)
        start = time.perf_counter()
        action, carry, _ = act(step_key, obs, carry)
        np.asarray(action)  # the game needs the action on the host
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return np.asarray(times)


def bc_step_time(agent: Agent, size: int, batch: int, iters: int, vocab: int) -> np.ndarray:
    """Milliseconds per behaviour-cloning step (vmapped evaluate, cross-entropy, grads, Adam) at `batch`."""
    rng = np.random.default_rng(1)
    proprio_dim = agent.policy.config.proprio_dim
    obs = jax.tree.map(
        lambda *xs: jnp.asarray(np.stack(xs)),
        *[_host_obs(rng, size, proprio_dim, vocab) for _ in range(batch)],
    )
    carry = jnp.zeros((batch, agent.initial_carry().shape[0]))
    actions = jnp.asarray(np.stack([rng.integers(0, n, batch) for n in agent.action_nvec], axis=1).astype(np.int32))
    params, static = eqx.partition(agent, agent.trainable_filter())
    optimiser = optax.adam(3e-4)
    opt_state = optimiser.init(params)

    def loss(params, obs, carry, actions):
        model = eqx.combine(params, static)
        log_prob, _, _, _ = jax.vmap(model.evaluate)(obs, carry, actions)
        return -log_prob.mean()

    @jax.jit
    def step(params, opt_state, obs, carry, actions):
        value, grads = jax.value_and_grad(loss)(params, obs, carry, actions)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    params, opt_state, value = step(params, opt_state, obs, carry, actions)
    jax.block_until_ready(value)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        params, opt_state, value = step(params, opt_state, obs, carry, actions)
        jax.block_until_ready(value)
        times.append((time.perf_counter() - start) * 1e3)
    return np.asarray(times)


def _report(name: str, times: np.ndarray) -> None:
    p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
    print(
        f"{name:<28} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   "
        f"p99 / 60 FPS frame ({FRAME_BUDGET_MS:.2f} ms) = {p99 / FRAME_BUDGET_MS:.3f}"
        f"   {'within' if p99 < FRAME_BUDGET_MS else 'OVER'} budget"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", nargs="*", default=None, help="presets to time (default: cpu-small, base)")
    parser.add_argument("--sizes", nargs="*", type=int, default=None, help="image sizes (default per preset)")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=100, help="instruction ids are drawn below this")
    parser.add_argument("--train-step", action="store_true", help="also time a BC step at batch 64")
    parser.add_argument("--force", action="store_true", help="time `base` even without a GPU")
    args = parser.parse_args()

    backend = jax.default_backend()
    device = jax.devices()[0]
    print(f"JAX {jax.__version__} on {backend} ({device.device_kind}); {args.iters} timed calls each")
    default_sizes = {"tiny": [64], "cpu-small": [64], "base": [224, 512]}
    for preset in args.preset or ["cpu-small", "base"]:
        sizes = args.sizes or default_sizes[preset]
        if preset == "base" and backend != "gpu" and not args.force:
            for size in sizes:
                print(f"{preset + f' @ {size}x{size}':<28} not measured: no GPU visible to JAX")
            continue
        agent = Agent.from_preset(preset, _spec(), key=jax.random.key(0))
        for size in sizes:
            _report(f"{preset} act @ {size}x{size}", act_latency(agent, size, args.iters, args.warmup, args.vocab))
        weights = sum(x.nbytes for x in jax.tree.leaves(eqx.filter(agent, eqx.is_array)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        print(f"{preset + ' memory':<28} weights {weights / 2**20:8.1f} MiB   process peak RSS so far "
              f"{peak / 2**30:.2f} GiB")
        if args.train_step:
            times = bc_step_time(agent, sizes[0], 64, max(10, args.iters // 10), args.vocab)
            print(
                f"{preset + ' BC step, batch 64':<28} p50 {np.percentile(times, 50):8.3f} ms   "
                f"p99 {np.percentile(times, 99):8.3f} ms   ({64 / np.percentile(times, 50) * 1e3:.0f} samples/s)"
            )


if __name__ == "__main__":
    main()
