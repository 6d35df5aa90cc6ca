"""PPO only: train an agent from scratch in the built-in world with a shaped reward, then evaluate it.

Composes the world, `RewardShaper` (success, invalid-move penalty, exploration bonus and potential-based
shaping, each reported separately), `train_ppo` (rollouts of vmapped worlds inside `jit`, the shared training
loop with checkpoints and metrics) and `evaluate` on the unshaped world. The defaults run on a CPU in about
a minute and only show the machinery; PPO from pixels needs far more updates to learn.

    python examples/ppo_only.py [--level sima2/GoTo-v0] [--updates 4] [--envs 16] [--out runs/ppo_only]
"""

from __future__ import annotations

import argparse

import jax

import sima2.envs as envs
from sima2.envs.wrappers import RewardShaper
from sima2.policy import Agent
from sima2.training import EvalConfig, TrainConfig, apply_overrides, evaluate, train_ppo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="sima2/GoTo-v0")
    parser.add_argument("--preset", default="tiny", help="agent preset: tiny | cpu-small | base")
    parser.add_argument("--updates", type=int, default=4, help="PPO updates (one rollout each)")
    parser.add_argument("--envs", type=int, default=16, help="worlds stepped in parallel")
    parser.add_argument("--rollout", type=int, default=16, help="decision steps per world per update")
    parser.add_argument("--eval-episodes", type=int, default=16)
    parser.add_argument("--out", default="runs/ppo_only")
    args = parser.parse_args()

    key_agent, key_eval = jax.random.split(jax.random.key(0))
    env, params = envs.make(args.level, image_size=64)
    agent = Agent.from_preset(args.preset, env.spec, key=key_agent)  # sized from the env's spec
    shaped = RewardShaper(env, success=1.0, invalid_move=-0.05, new_region=0.1, potential=0.1)

    config = apply_overrides(TrainConfig(), [
        f"out={args.out}", f"num_updates={args.updates}", f"ppo.num_envs={args.envs}",
        f"ppo.rollout_length={args.rollout}", "ppo.num_minibatches=2", "ppo.update_epochs=2", "optim.lr=3e-4",
        "optim.warmup_steps=1", f"optim.decay_steps={max(2, args.updates)}", f"checkpoint.every={args.updates}",
        "monitor.log_every=1", "monitor.progress=False", "monitor.tensorboard=False",
    ])

    def report(step: int, state, metrics: dict[str, float]) -> None:
        terms = "  ".join(f"{name[7:]} {metrics[name]:+.3f}" for name in sorted(metrics) if name.startswith("reward_"))
        print(f"update {step:3d}  reward/step {metrics['reward_per_step']:+.3f}  ({terms})  "
              f"episodes {metrics['episodes']:.0f}")

    state = train_ppo(config, agent, shaped, params, hooks=[report])

    eval_config = EvalConfig(num_envs=min(args.eval_episodes, 16), num_episodes=args.eval_episodes,
                             max_steps=int(params.max_steps) * 2)
    results = evaluate(state.model, env, params, key_eval, eval_config)
    print(f"PPO agent on {args.level}: success rate {results['success_rate']:.2f} over "
          f"{int(results['episodes'])} episodes")
    print(f"metrics: {args.out}/metrics.jsonl, checkpoints: {args.out}/checkpoints, weights: {args.out}/final")


if __name__ == "__main__":
    main()
