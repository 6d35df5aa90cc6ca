"""The main job on a user's own gymnasium env: expert demonstrations -> behaviour cloning -> optional PPO ->
evaluation, through the public pieces, into one run folder.

    from sima2.training import train_gym
    result = train_gym("BabyAI-GoToRedBallNoDists-v0", make_expert, out="runs/babyai",
                       obs_wrapper=RGBImgPartialObsWrapper)

`make_expert(env) -> policy(observation, executed) -> native action` (`sima2.training.host_episodes`). Demonstration
episodes use seeds `0 .. demo_episodes-1` and evaluation episodes seeds from `EVAL_SEED_START` on, so the agent
is always scored on worlds it never saw. Before cloning, the preset's image augmentation is compared with none
on held-out demonstrations and the better one is used. The run folder holds `pipeline.json` (every setting,
the augmentation chosen and the comparison included), `demonstrations/` (an HF dataset), `bc/` and `ppo/`
(each with `final/`, loadable with `Agent.from_pretrained`), `eval.json`, `episodes.jsonl` and `gifs/`. A rerun
with `resume=True` reuses the saved demonstrations and resumes each stage from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax

from sima2.envs.adapter import GymnasiumAdapter
from sima2.training.augmentation_check import compare_augmentations
from sima2.training.config import TrainConfig, apply_overrides, config_to_dict
from sima2.training.data import load_demonstrations, record_demonstrations, save_demonstrations
from sima2.training.host_episodes import Expert, evaluate_gym, random_actions, run_episodes, score_episodes
from sima2.training.host_rollout import HostRollout, make_host_ppo
from sima2.training.stages import run_stage, train_bc

log = logging.getLogger("sima2.training")

EVAL_SEED_START = 1_000_000  # evaluation seeds start here; demonstrations use 0, 1, 2, ...


@dataclasses.dataclass(frozen=True)
class GymRunConfig:
    """What `train_gym` does besides the env and expert: the agent preset, episode counts, the adapter's sizes
    and each stage's `TrainConfig` (the preset's behaviour cloning by default)."""

    preset: str = "cpu-small"
    demo_episodes: int = 300
    eval_episodes: int = 200
    num_envs: int = 8  # env copies stepped together
    instruction_length: int = 16
    only_successful: bool = True  # demonstrations: keep the episodes the expert finished
    max_episode_steps: int | None = None  # cut longer episodes (for an env without a time limit of its own)
    # Before cloning, `compare_augmentations` with this many updates per setting (0: skip) on the last tenth of
    # the demonstration episodes held out; cloning then uses the better of the preset's augmentation and none
    # (a grid world drawn in few pixels per cell loses from random crops, a camera view gains).
    augmentation_check_updates: int = 200
    seed: int = 0
    bc: TrainConfig | None = None  # None: the preset's (`pipeline_config(preset).bc`)
    ppo: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(stage="ppo", num_updates=0))

    def __post_init__(self) -> None:
        for name in ("demo_episodes", "eval_episodes", "num_envs", "instruction_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def gym_run_config(preset: str = "cpu-small", overrides: Sequence[str] = ()) -> GymRunConfig:
    """A `GymRunConfig` with the preset's behaviour-cloning settings, then `key=value` overrides (`bc.num_updates=
    500`, `bc.bc.crop_padding=0`, `demo_episodes=100`, `ppo.num_updates=20`, ...)."""
    from sima2.training.pipeline import pipeline_config

    bc = pipeline_config(preset).bc
    # Windows over whole episodes: a user's episodes may be far longer than the window. The update budget is
    # sized for a few hundred demonstrations (the preset's is for the built-in world's 100,000 steps): on
    # BabyAI-GoToRedBall, 300 episodes and 1,500 updates reach 0.73 greedy success in about 2 minutes.
    updates = min(bc.num_updates, 1500)
    bc = dataclasses.replace(
        bc, num_updates=updates, bc=dataclasses.replace(bc.bc, window_starts="whole_episodes"),
        optim=dataclasses.replace(bc.optim, decay_steps=updates,
                                  warmup_steps=min(bc.optim.warmup_steps, updates // 10)),
        checkpoint=dataclasses.replace(bc.checkpoint, every=min(bc.checkpoint.every, max(1, updates // 3))),
    )
    return apply_overrides(GymRunConfig(preset=preset, bc=bc), list(overrides))


def _name(thing: Any) -> str | None:
    """How `pipeline.json` names an env, expert or wrapper: an id as given, a function as `module:name`."""
    if thing is None or isinstance(thing, str):
        return thing
    module, name = getattr(thing, "__module__", None), getattr(thing, "__qualname__", None)
    return f"{module}:{name}" if module and name and "<" not in name else repr(thing)


def _make_env(env: str | Callable[[], gym.Env], obs_wrapper: Callable[[gym.Env], gym.Env] | None) -> gym.Env:
    made = gym.make(env) if isinstance(env, str) else env()
    return obs_wrapper(made) if obs_wrapper is not None else made


def train_gym(
    env: str | Callable[[], gym.Env],
    expert: Expert,
    *,
    out: str | Path,
    config: GymRunConfig | None = None,
    obs_wrapper: Callable[[gym.Env], gym.Env] | None = None,
    resume: bool = False,
    adapter_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Demonstrations of `expert` in `env` (an id or a factory; `obs_wrapper` e.g. MiniGrid's
    `RGBImgPartialObsWrapper` for pixels), behaviour cloning of a `config.preset` agent, `config.ppo.num_updates`
    PPO updates, and greedy evaluation on fresh seeds; returns the evaluation summary (also in `eval.json`)."""
    from sima2.policy.agent import Agent
    from sima2.presets import preset as preset_named

    config = gym_run_config() if config is None else config
    bc_config = config.bc if config.bc is not None else gym_run_config(config.preset).bc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image_size = int(preset_named(config.preset).vision["image_size"])
    adapter = GymnasiumAdapter(
        lambda: _make_env(env, obs_wrapper), num_envs=config.num_envs, image_size=(image_size, image_size),
        instruction_length=config.instruction_length, **(adapter_options or {}),
    )
    try:
        record = {"env": _name(env), "expert": _name(expert), "obs_wrapper": _name(obs_wrapper),
                  **config_to_dict(dataclasses.replace(config, bc=bc_config))}
        (out / "pipeline.json").write_text(json.dumps(record, indent=2, default=str))
        demo_folder = out / "demonstrations"
        if resume and any((demo_folder / "data").glob("train-*.parquet")):
            dataset = load_demonstrations(str(demo_folder), cache_dir=str(out / ".cache"))
        else:
            dataset = record_demonstrations(adapter, seeds=range(config.demo_episodes), expert=expert,
                                            only_successful=config.only_successful,
                                            max_episode_steps=config.max_episode_steps)
            kept = len(set(dataset["episode_id"]))
            if kept < 2:
                raise ValueError(
                    f"the expert finished {kept} of {config.demo_episodes} demonstration episodes: check the expert "
                    "(and the obs wrapper), or set only_successful=false to clone unfinished episodes too"
                )
            save_demonstrations(dataset, demo_folder)
        log.info("%d demonstration episodes, %d steps", len(set(dataset["episode_id"])), len(dataset))
        spec = adapter.spec
        agent = Agent.from_preset(config.preset, spec, key=jax.random.key(config.seed))
        shapes = dict(image_shape=spec.observation.image.shape, action_nvec=spec.action.nvec)
        bc_config = dataclasses.replace(bc_config, stage="bc", seed=config.seed, out=str(out / "bc"))
        augmentation = None
        if config.augmentation_check_updates > 0:
            comparison = compare_augmentations(
                agent, dataset, bc_config, num_updates=config.augmentation_check_updates,
                validation_episodes=max(1, len(set(dataset["episode_id"])) // 10), **shapes,
            )
            augmentation = comparison.summary()
            log.info("%s", augmentation)
            bc_config = dataclasses.replace(bc_config, bc=comparison.best.bc)
        record["bc"] = config_to_dict(bc_config)  # the augmentation cloning used
        record["augmentation_check"] = augmentation
        (out / "pipeline.json").write_text(json.dumps(record, indent=2, default=str))
        agent = train_bc(bc_config, agent, dataset, **shapes, vocab_size=spec.observation.vocab_size,
                         proprio_size=spec.observation.proprio.shape[0], resume=resume).model
        if config.ppo.num_updates > 0:
            ppo_config = dataclasses.replace(config.ppo, stage="ppo", seed=config.seed, out=str(out / "ppo"),
                                             ppo=dataclasses.replace(config.ppo.ppo, num_envs=config.num_envs))
            rollout = HostRollout(agent, adapter, ppo_config.ppo.rollout_length, seed=EVAL_SEED_START // 2)
            init_fn, step_fn = make_host_ppo(agent, rollout, ppo_config)
            agent = run_stage(ppo_config, init_fn, step_fn, resume=resume, jit=False,
                              samples_per_step=config.num_envs * ppo_config.ppo.rollout_length).model
        seeds = range(EVAL_SEED_START, EVAL_SEED_START + config.eval_episodes)
        evaluation = evaluate_gym(agent, adapter, seeds, key=jax.random.key(config.seed + 1), gif_dir=out / "gifs",
                                  max_episode_steps=config.max_episode_steps)
        evaluation.write(out)
        # Chance level on the same seeds: uniformly random action factors.
        chance = score_episodes(run_episodes(adapter, seeds=seeds, expert=random_actions(spec.action.nvec),
                                             expert_actions="factors", max_episode_steps=config.max_episode_steps))
    finally:
        adapter.close()
    summary = {**evaluation.summary, "random_policy_success_rate": chance["success_rate"],
               "demonstration_episodes": len(set(dataset["episode_id"])), "demonstration_steps": len(dataset)}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["EVAL_SEED_START", "GymRunConfig", "gym_run_config", "train_gym"]
