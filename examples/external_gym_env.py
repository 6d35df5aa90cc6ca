"""Train a sima2 agent with PPO on an external gymnasium env (BabyAI / MiniGrid) through the adapter.

`GymnasiumAdapter` runs N copies of the env in a gymnasium vector env and speaks sima2's formats: RGB pixels
resized for the agent, the BabyAI mission tokenised with the world's word-level tokenizer (BabyAI missions
use the same words), the heading as proprio, and the key action factor choosing MiniGrid's action.
`HostRollout` steps it from a host loop and feeds the same jitted PPO update as the built-in world
(`make_host_ppo`); `run_loop` drives the updates and writes metrics. Needs `minigrid` (the test extra).

    python examples/external_gym_env.py [--env BabyAI-GoToRedBallNoDists-v0] [--updates 4] [--envs 4]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import jax
import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI envs with gymnasium)
from minigrid.wrappers import RGBImgPartialObsWrapper

from sima2.envs.adapter import GymnasiumAdapter
from sima2.policy import Agent
from sima2.training import HostRollout, MetricsLogger, TrainConfig, apply_overrides, make_host_ppo, run_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="BabyAI-GoToRedBallNoDists-v0", help="any MiniGrid / BabyAI env id")
    parser.add_argument("--updates", type=int, default=4, help="PPO updates (one rollout each)")
    parser.add_argument("--envs", type=int, default=4, help="env copies stepped together")
    parser.add_argument("--rollout", type=int, default=32, help="steps per env per update")
    parser.add_argument("--out", default="runs/external_gym_env")
    args = parser.parse_args()

    def make_env() -> gym.Env:
        return RGBImgPartialObsWrapper(gym.make(args.env), tile_size=8)  # pixels, not MiniGrid's symbolic grid

    adapter = GymnasiumAdapter(make_env, num_envs=args.envs, image_size=(64, 64), instruction_length=16)
    try:
        agent = Agent.from_preset("tiny", adapter.spec, key=jax.random.key(0))  # sized from the adapter
        rollout = HostRollout(agent, adapter, args.rollout, seed=0)
        first = rollout.obs
        print(f"{args.env}: {args.envs} envs, action_nvec {adapter.action_nvec}, images "
              f"{tuple(first['image'].shape[1:])}, mission ids {first['instruction'][0].tolist()[:8]}...")

        config = apply_overrides(TrainConfig(), [
            f"out={args.out}", f"num_updates={args.updates}", f"ppo.num_envs={args.envs}",
            f"ppo.rollout_length={args.rollout}", "ppo.num_minibatches=2", "ppo.update_epochs=2", "optim.lr=3e-4",
            "optim.warmup_steps=1", "monitor.log_every=1", "monitor.progress=False", "monitor.tensorboard=False",
        ])
        init_fn, step_fn = make_host_ppo(agent, rollout, config)

        def report(step: int, state, metrics: dict[str, float]) -> None:
            print(f"update {step:3d}  episodes {metrics['episodes']:3.0f}  return {metrics['return']:.3f}  "
                  f"length {metrics['episode_length']:5.1f}  loss {metrics['loss']:+.4f}")

        logger = MetricsLogger(args.out, config.monitor)
        try:
            run_loop(init_fn(jax.random.key(1)), step_fn, config.num_updates, logger=logger, hooks=[report],
                     samples_per_step=args.envs * args.rollout)
        finally:
            logger.close()
        print(f"metrics: {args.out}/metrics.jsonl")
    finally:
        adapter.close()


if __name__ == "__main__":
    main()
