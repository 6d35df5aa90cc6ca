"""Bring your own environment: a BabyAI level and its scripted expert, through sima2's public API only.

1. Record the expert's demonstrations, one seed per episode, as a Hugging Face dataset.
2. Check the image augmentation on held-out demonstrations (random crops can hurt a grid world).
3. Behaviour-clone the `cpu-small` agent with the preset's settings (memory windows over whole episodes).
4. Evaluate greedily on seeds never used for demonstrations: success, length, GIFs; and a uniformly random
   policy on the same seeds.
5. With `--dagger`: DAgger (the agent drives, the expert labels) against plain cloning on the same number
   of expert labels.

    python examples/own_env.py [--env minigrid:BabyAI-GoToLocal-v0] [--episodes 300] [--updates 1500] [--dagger]

Needs `minigrid` (the test extra). `sima2 train --env ... --expert ...` runs steps 1-4 from the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import gymnasium as gym
import jax

from sima2.envs.adapter import GymnasiumAdapter
from sima2.envs.minigrid import babyai_expert, rgb_pixels
from sima2.policy import Agent
from sima2.training import (
    DaggerConfig,
    compare_augmentations,
    dagger,
    evaluate_gym,
    pipeline_config,
    random_actions,
    record_demonstrations,
    run_episodes,
    score_episodes,
    train_bc,
)

EVAL_SEEDS = range(1_000_000, 1_000_200)  # never used for demonstrations (those are 0, 1, 2, ...)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="minigrid:BabyAI-GoToRedBall-v0", help="a MiniGrid / BabyAI env id")
    parser.add_argument("--episodes", type=int, default=300, help="demonstration episodes")
    parser.add_argument("--updates", type=int, default=1500, help="behaviour-cloning updates")
    parser.add_argument("--check-updates", type=int, default=200, help="updates per augmentation setting")
    parser.add_argument("--eval-episodes", type=int, default=200)
    parser.add_argument("--envs", type=int, default=8, help="env copies stepped together")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--dagger", action="store_true", help="also compare DAgger with plain cloning")
    parser.add_argument("--out", default="runs/own_env")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s", force=True)
    logging.getLogger("sima2.training").setLevel(logging.INFO)  # e.g. the share of steps inside a training window
    out = Path(args.out)
    start = time.perf_counter()

    env = GymnasiumAdapter(lambda: rgb_pixels(gym.make(args.env)), num_envs=args.envs, image_size=(64, 64),
                           instruction_length=16)
    try:
        # 1. Demonstrations: BabyAI's bot in each episode, native actions turned into sima2's action factors.
        demos = record_demonstrations(env, seeds=range(args.episodes), expert=babyai_expert, only_successful=True)
        print(f"{args.env}: {len(set(demos['episode_id']))} demonstration episodes, {len(demos)} steps")

        # 2-3. The preset's cloning settings, with the augmentation the held-out check prefers.
        config = pipeline_config(args.preset).bc
        config = dataclasses.replace(config, num_updates=args.updates, out=str(out / "bc"),
                                     optim=dataclasses.replace(config.optim, decay_steps=args.updates,
                                                               warmup_steps=min(config.optim.warmup_steps,
                                                                                args.updates // 10)),
                                     bc=dataclasses.replace(config.bc, window_starts="whole_episodes"))
        agent = Agent.from_preset(args.preset, env.spec, key=jax.random.key(0))
        shapes = dict(image_shape=env.spec.observation.image.shape, action_nvec=env.spec.action.nvec)
        comparison = compare_augmentations(agent, demos, config, num_updates=args.check_updates,
                                           validation_episodes=max(1, args.episodes // 10), **shapes)
        print(comparison.summary())
        config = dataclasses.replace(config, bc=comparison.best.bc)
        cloned = train_bc(config, agent, demos, **shapes).model

        # 4. Greedy evaluation on fresh seeds, against a random policy on the same seeds.
        evaluation = evaluate_gym(cloned, env, EVAL_SEEDS[: args.eval_episodes], gif_dir=out / "gifs")
        evaluation.write(out)
        chance = score_episodes(run_episodes(env, seeds=EVAL_SEEDS[: args.eval_episodes],
                                             expert=random_actions(env.action_nvec), expert_actions="factors"))
        figures = {"cloned": evaluation.summary, "random_actions": chance, "comparison": comparison.summary()}
        print(f"greedy success {evaluation.summary['success_rate']:.2f} on {args.eval_episodes} fresh seeds "
              f"(uniformly random actions: {chance['success_rate']:.2f})")

        # 5. DAgger vs plain cloning, the same label budget (three rounds of a third of the demonstration steps).
        if args.dagger:
            labels = max(1, len(demos) // 3)
            round_config = dataclasses.replace(config, num_updates=args.updates // 3)
            dagger_config = DaggerConfig(rounds=3, labels_per_round=labels, eval_episodes=args.eval_episodes,
                                         bc=round_config)
            _, interactive = dagger(agent, env, babyai_expert, dagger_config, out=out / "dagger")
            _, plain = dagger(agent, env, babyai_expert, dataclasses.replace(dagger_config, expert_share_decay=1.0),
                              out=out / "plain")
            figures["dagger"], figures["plain_bc"] = interactive, plain
            for a, b in zip(interactive, plain, strict=True):
                print(f"{a['expert_labels']:6d} expert labels: DAgger {a['success_rate']:.2f}, "
                      f"plain cloning {b['success_rate']:.2f}")
    finally:
        env.close()
    figures["wall_seconds"] = time.perf_counter() - start
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{figures['wall_seconds']:.0f} s; figures in {out / 'figures.json'}")


if __name__ == "__main__":
    main()
