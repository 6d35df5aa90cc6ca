"""Self-improvement: clone the expert, let the agent practise, keep what a judge accepts, clone again on both.

Composes `record_demonstrations` and `train_bc` (a first agent), `practise` (the agent's own sampled episodes,
kept by a judge: here the world's success signal, optionally only short successes), `ExperienceStore` (the
kept episodes on disk, reopened as they were) and `train_bc` again on the demonstrations mixed with the
store, then `evaluate` before and after. The defaults are small enough for a CPU in a couple of minutes.

    python examples/self_improvement.py [--level sima2/GoTo-v0] [--steps 200] [--max-length 12] [--out runs/si]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax

import sima2.envs as envs
from sima2.policy import Agent
from sima2.training import (
    EvalConfig,
    ExperienceStore,
    RecordedEpisode,
    TrainConfig,
    apply_overrides,
    evaluate,
    pipeline_config,
    practise,
    record_demonstrations,
    train_bc,
)
from sima2.training.self_improvement import mixed_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="sima2/GoTo-v0")
    parser.add_argument("--steps", type=int, default=200, help="behaviour cloning updates, before and after practice")
    parser.add_argument("--demo-envs", type=int, default=16)
    parser.add_argument("--practice-envs", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=12, help="the judge keeps successes this short or shorter")
    parser.add_argument("--eval-episodes", type=int, default=64)
    parser.add_argument("--out", default="runs/self_improvement")
    args = parser.parse_args()

    key_demo, key_agent, key_practice, key_eval = jax.random.split(jax.random.key(0), 4)
    env, params = envs.make(args.level, image_size=64)
    agent = Agent.from_preset("tiny", env.spec, key=key_agent)
    demos = record_demonstrations(env, params, key_demo, num_envs=args.demo_envs, num_steps=64)
    # The preset's windows of consecutive steps, so the agent's memory is trained as it acts.
    windows = pipeline_config("tiny").bc.bc
    config = apply_overrides(TrainConfig(), [
        f"num_updates={args.steps}", f"bc.batch_size={windows.batch_size}",
        f"bc.sequence_length={windows.sequence_length}", "optim.lr=1e-3",
        f"optim.warmup_steps={max(1, args.steps // 10)}", f"optim.decay_steps={max(2, args.steps)}",
        f"checkpoint.every={args.steps}", "monitor.progress=False", "monitor.tensorboard=False",
    ])
    clone = lambda agent, rows, out: train_bc(  # noqa: E731
        dataclasses.replace(config, out=out), agent, rows, image_shape=(64, 64, 3), action_nvec=env.action_nvec,
    ).model
    eval_config = EvalConfig(num_envs=min(args.eval_episodes, 32), num_episodes=args.eval_episodes,
                             max_steps=int(params.max_steps))
    agent = clone(agent, demos, f"{args.out}/bc")
    before = evaluate(agent, env, params, key_eval, eval_config)["success_rate"]

    # A judge is any callable on the episode's frames, instruction and actions; this one also wants it short.
    def judge(episode: RecordedEpisode) -> bool:
        return episode.success and len(episode.frames) <= args.max_length

    rows, report = practise(agent, env, params, key_practice, num_envs=args.practice_envs, num_steps=64,
                            judge=judge)
    print(f"practice: {report.episodes} episodes, {report.world_successes} successful, {report.kept_episodes} "
          f"kept by the judge ({report.kept_steps} steps)")
    store = ExperienceStore(f"{args.out}/experience", capacity=100_000)
    store.add(rows)
    store = ExperienceStore(f"{args.out}/experience")  # as a restarted run would reopen it
    print(f"experience store: {store.summary()}")
    agent = clone(agent, mixed_rows(demos, store.dataset(), share=0.5), f"{args.out}/improved")
    after = evaluate(agent, env, params, key_eval, eval_config)["success_rate"]
    print(f"success on {args.level}: {before:.2f} after cloning the expert, {after:.2f} after practice "
          f"({args.eval_episodes} episodes each)")


if __name__ == "__main__":
    main()
