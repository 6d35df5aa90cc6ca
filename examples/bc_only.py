"""Behaviour cloning only: record the world's expert, clone it into an agent, evaluate the clone.

Composes `record_demonstrations` (expert episodes as a Hugging Face dataset), `train_bc` (the shared training
loop with checkpoints and metrics) and `evaluate` (success rate, episode length, navigation efficiency). The
defaults are small enough for a CPU in about a minute; raise `--steps` and `--demo-envs` to learn more.

    python examples/bc_only.py [--level sima2/GoTo-v0] [--preset tiny] [--steps 60] [--out runs/bc_only]
"""

from __future__ import annotations

import argparse

import jax

import sima2.envs as envs
from sima2.policy import Agent
from sima2.training import (
    EvalConfig,
    TrainConfig,
    apply_overrides,
    evaluate,
    pipeline_config,
    record_demonstrations,
    train_bc,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="sima2/GoTo-v0")
    parser.add_argument("--preset", default="tiny", help="agent preset: tiny | cpu-small | base")
    parser.add_argument("--steps", type=int, default=60, help="behaviour cloning updates")
    parser.add_argument("--demo-envs", type=int, default=8, help="worlds the expert plays in parallel")
    parser.add_argument("--demo-steps", type=int, default=64, help="decision steps recorded per world")
    parser.add_argument("--eval-episodes", type=int, default=16)
    parser.add_argument("--out", default="runs/bc_only")
    args = parser.parse_args()

    key_demo, key_agent, key_eval = jax.random.split(jax.random.key(0), 3)
    env, params = envs.make(args.level, image_size=64)
    agent = Agent.from_preset(args.preset, env.spec, key=key_agent)  # sized from the env's spec

    demos = record_demonstrations(
        env, params, key_demo, num_envs=args.demo_envs, num_steps=args.demo_steps,
        describe=lambda obs: (envs.decode_ids(obs["instruction"]), []),
    )
    print(f"recorded {len(demos)} expert steps in {len(set(demos['episode_id']))} episodes, "
          f"e.g. {demos[0]['instruction']!r}")

    # The preset's windows of consecutive steps, so the agent's memory is trained as it acts.
    windows = pipeline_config(args.preset).bc.bc
    config = apply_overrides(TrainConfig(), [
        f"out={args.out}", f"num_updates={args.steps}", f"bc.batch_size={windows.batch_size}",
        f"bc.sequence_length={windows.sequence_length}", "optim.lr=1e-3",
        f"optim.warmup_steps={max(1, args.steps // 10)}", f"optim.decay_steps={max(2, args.steps)}",
        f"checkpoint.every={args.steps}", f"monitor.log_every={max(1, args.steps // 6)}", "monitor.progress=False",
        "monitor.tensorboard=False",
    ])
    report = lambda step, state, metrics: print(f"step {step:4d}  action loss {metrics['action_loss']:.3f}")  # noqa: E731
    state = train_bc(config, agent, demos, image_shape=(64, 64, 3), action_nvec=env.spec.action.nvec, hooks=[report])

    eval_config = EvalConfig(num_envs=min(args.eval_episodes, 16), num_episodes=args.eval_episodes,
                             max_steps=int(params.max_steps) * 2)
    results = evaluate(state.model, env, params, key_eval, eval_config)
    print(f"cloned agent on {args.level}: success rate {results['success_rate']:.2f} over "
          f"{int(results['episodes'])} episodes, mean length {results.get('episode_length', 0.0):.1f} steps")
    print(f"metrics: {args.out}/metrics.jsonl, checkpoints: {args.out}/checkpoints, weights: {args.out}/final")


if __name__ == "__main__":
    main()
