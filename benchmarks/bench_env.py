"""Rendered frames per second of the built-in world vs. MiniWorld, on this CPU.

sima2: `jax.jit(lax.scan(jax.vmap(env.step)))` with random actions, step + first-person render + auto-resets
included, for N = 1, 64, 1024 worlds at 64x64 and 128x128. MiniWorld (OpenGL, one world per process,
gymnasium API) is timed at the same image sizes on OneRoom and FourRooms in a subprocess, so it may live in
its own virtual environment (`--peer-python`; headless with PYGLET_HEADLESS=1).

The per-core ratio compares like with like: MiniWorld pinned to one core against sima2 pinned to the same
core (its largest batch, run again in a subprocess restricted to that core before JAX starts). The all-core
figure divided by the core count is printed too; it is lower whenever XLA's threads scale below linearly.

    python benchmarks/bench_env.py --peer-python path/to/venv-with-miniworld/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PEER_SCRIPT = r"""
import json, os, sys, time
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the per-core ratio assumes
import gymnasium as gym
import miniworld  # noqa: F401  (registers the environments)
level, size, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
env = gym.make(level, obs_width=size, obs_height=size)
env.reset(seed=0)
for _ in range(20):
    env.step(env.action_space.sample())
frames, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
    frames += 1
    if terminated or truncated:
        env.reset()
        frames += 1
print(json.dumps({"fps": frames / (time.perf_counter() - start)}))
"""


def bench_sima2(level: str, num_worlds: int, size: int, steps: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    import sima2.envs as envs

    env, params = envs.make(level, image_size=size)
    nvec = jnp.array(env.action_nvec)

    @jax.jit
    def rollout(key, state, obs):
        def body(carry, step_inputs):
            state, obs = carry
            keys, actions = step_inputs
            obs, state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                keys, state, actions, params
            )
            return (state, obs), reward.sum() + info.distance_to_goal.sum()

        # Random actions and step keys for the whole rollout drawn up front (inside the timed call), as a
        # rollout collector does: one batched draw instead of a few small ones per step.
        k_act, k_step = jax.random.split(key)
        actions = (jax.random.uniform(k_act, (steps, num_worlds, 3)) * nvec).astype(jnp.int32)
        keys = jax.random.split(k_step, (steps, num_worlds))
        (state, obs), totals = jax.lax.scan(body, (state, obs), (keys, actions))
        return state, obs, totals

    keys = jax.random.split(jax.random.key(0), num_worlds)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    state, obs, totals = rollout(jax.random.key(1), state, obs)  # compile
    jax.block_until_ready((obs, totals))
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        state, obs, totals = rollout(jax.random.key(2 + r), state, obs)
        jax.block_until_ready((obs, totals))
        best = min(best, time.perf_counter() - start)
    return num_worlds * steps / best


def bench_sima2_one_core(level: str, num_worlds: int, size: int, steps: int, repeats: int) -> float | None:
    """sima2 frames/s in a subprocess pinned to the core the peer runs on (JAX sizes its threads by it)."""
    command = [
        sys.executable, __file__, "--one-core-worker", "--level", level, "--sizes", str(size),
        "--worlds", str(num_worlds), "--steps", str(steps), "--repeats", str(repeats),
    ]  # fmt: skip
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        stderr = getattr(error, "stderr", "") or ""
        print(f"  sima2 on one core failed: {error.__class__.__name__} {stderr.strip()[-300:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["fps"]


def bench_peer(python: str, level: str, size: int, seconds: float) -> float | None:
    # Software OpenGL (llvmpipe) would otherwise spread rendering over several threads.
    env = dict(os.environ, PYGLET_HEADLESS="1", LP_NUM_THREADS="1")
    try:
        out = subprocess.run(
            [python, "-c", PEER_SCRIPT, level, str(size), str(seconds)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as error:
        stderr = getattr(error, "stderr", "") or ""
        print(f"  MiniWorld {level} unavailable: {error.__class__.__name__} {stderr.strip()[-300:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["fps"]


def bench_team(num_worlds: int, size: int, steps: int, repeats: int, num_agents: int = 2) -> float:
    """Agent-frames/s of team worlds (every agent's view rendered each step), random actions, both families
    drawn at every reset."""
    import jax
    import jax.numpy as jnp

    from sima2.envs.team import TEAM_ACTION_NVEC, TeamEnv

    env = TeamEnv(num_agents, size)
    params = env.default_params()
    nvec = jnp.array(TEAM_ACTION_NVEC)

    @jax.jit
    def rollout(key, state):
        def body(state, step_inputs):
            keys, actions = step_inputs
            obs, state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, actions, params)
            return state, reward.sum() + obs["image"][:, :, 0, 0, 0].sum()

        k_act, k_step = jax.random.split(key)
        actions = (jax.random.uniform(k_act, (steps, num_worlds, num_agents, len(TEAM_ACTION_NVEC))) * nvec)
        keys = jax.random.split(k_step, (steps, num_worlds))
        return jax.lax.scan(body, state, (keys, actions.astype(jnp.int32)))

    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), num_worlds), params)
    state, totals = jax.block_until_ready(rollout(jax.random.key(1), state))  # compile
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        state, totals = jax.block_until_ready(rollout(jax.random.key(2 + r), state))
        best = min(best, time.perf_counter() - start)
    return num_worlds * num_agents * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--level", default="sima2/GoTo-v0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--steps", type=int, default=32, help="decision steps per timed rollout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-python", default=sys.executable, help="interpreter that has `miniworld`")
    parser.add_argument("--peer-seconds", type=float, default=5.0)
    parser.add_argument("--team-worlds", type=int, default=1024, help="team worlds of 2 agents (0: skip)")
    parser.add_argument("--one-core-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one_core_worker:  # child of bench_sima2_one_core: pin before JAX creates its thread pool
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        fps = bench_sima2(args.level, args.worlds[0], args.sizes[0], args.steps, args.repeats)
        print(json.dumps({"fps": fps}))
        return

    cores = os.cpu_count() or 1
    print(
        f"CPU cores: {cores}; sima2 level {args.level}; rendered frames/s (step + render + resets)"
    )
    results: dict[tuple[int, int], float] = {}
    for size in args.sizes:
        for n in args.worlds:
            steps = max(args.steps, 256 // n)  # enough work per call for small batches
            fps = bench_sima2(args.level, n, size, steps, args.repeats)
            results[(size, n)] = fps
            print(f"sima2 {size}x{size} N={n:5d}: {fps:12,.0f} frames/s  ({fps / cores:10,.0f} per core)")

    if args.team_worlds:
        size, n = min(args.sizes), args.team_worlds
        team = bench_team(n, size, args.steps, args.repeats)
        single = results.get((size, n)) or bench_sima2(args.level, n, size, args.steps, args.repeats)
        print(
            f"team worlds {size}x{size} N={n:5d} x 2 agents: {team:12,.0f} agent-frames/s | one-agent world, "
            f"{n} worlds: {single:12,.0f} frames/s | ratio {team / single:.2f}"
        )

    for size in args.sizes:
        largest = max(args.worlds)
        steps = max(args.steps, 256 // largest)
        one_core = bench_sima2_one_core(args.level, largest, size, steps, args.repeats)
        all_cores = results[(size, largest)]
        if one_core is not None:
            print(
                f"sima2 {size}x{size} N={largest:5d} pinned to 1 core: {one_core:12,.0f} frames/s "
                f"(all {cores} cores: {all_cores / one_core:.2f}x that)"
            )
        for peer_level in ("MiniWorld-OneRoom-v0", "MiniWorld-FourRooms-v0"):
            peer = bench_peer(args.peer_python, peer_level, size, args.peer_seconds)
            if peer is None:
                continue
            pinned = f"{one_core / peer:,.1f}x per core (both on 1 core)" if one_core is not None else "n/a"
            print(
                f"MiniWorld {peer_level} {size}x{size}: {peer:8,.0f} frames/s on 1 core | "
                f"sima2 N={largest}: {pinned}; all-core figure / {cores}: {all_cores / cores / peer:,.1f}x"
            )

if __name__ == "__main__":
    main()
