"""The end-to-end job behind `sima2 train`: expert demonstrations -> behaviour cloning -> PPO on vmapped,
wrapped worlds -> evaluation on every split, written to one run folder.

Each stage reuses the shared pieces (`record_demonstrations`, `train_bc`, `train_ppo`, `evaluate`) and keeps
its own checkpoints under `out/<stage>/`, so `--resume` picks every stage up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sima2.training.config import TrainConfig, apply_overrides, config_to_dict


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What `sima2 train` runs: the world, the agent preset and each stage's budget."""

    preset: str = "cpu-small"
    level: str = "sima2/GoTo-v0"
    image_size: int = 64
    demo_envs: int = 64
    demo_steps: int = 128
    ppo_updates: int = 0
    # Pretrained parts by HF name or local path (`--vision`, `--planner`, `--text-encoder`); None: random init.
    vision: str | None = None
    planner: str | None = None
    text_encoder: str | None = None
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


PRESETS: dict[str, dict[str, Any]] = {
    # Minutes on a laptop CPU: proves every stage runs; not meant to learn much.
    "tiny": dict(
        demo_envs=8, demo_steps=48, ppo_updates=2,
        train=dict(num_steps=30, bc=dict(batch_size=32), ppo=dict(num_envs=8, num_steps=16, num_minibatches=2),
                   optim=dict(lr=1e-3, final_lr=1e-4, warmup_steps=5, decay_steps=30),
                   checkpoint=dict(every=10, keep=2), monitor=dict(log_every=5),
                   eval=dict(num_envs=8, num_episodes=8, max_steps=64)),
    ),
    "cpu-small": dict(
        demo_envs=64, demo_steps=128, ppo_updates=40,
        train=dict(num_steps=2000, bc=dict(batch_size=64), ppo=dict(num_envs=64, num_steps=32),
                   optim=dict(lr=1e-3, final_lr=1e-4, warmup_steps=100, decay_steps=2000),
                   checkpoint=dict(every=250, keep=3), monitor=dict(log_every=25),
                   eval=dict(num_envs=64, num_episodes=128, max_steps=256)),
    ),
    "base": dict(
        image_size=224, demo_envs=256, demo_steps=256, ppo_updates=200,
        train=dict(num_steps=20000, bc=dict(batch_size=128), ppo=dict(num_envs=256, num_steps=64),
                   optim=dict(lr=1e-4, final_lr=1e-5, warmup_steps=500, decay_steps=20000),
                   checkpoint=dict(every=1000, keep=3), eval=dict(num_envs=128, num_episodes=512, max_steps=512)),
    ),
}


def _merge(config: Any, values: dict[str, Any]) -> Any:
    updates = {}
    for name, value in values.items():
        current = getattr(config, name)
        updates[name] = _merge(current, value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **updates)


def pipeline_config(preset: str, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The preset's configuration with `key=value` overrides (e.g. `train.bc.batch_size=128`, `demo_envs=32`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = _merge(PipelineConfig(preset=preset), PRESETS[preset])
    return apply_overrides(config, list(overrides))


def _describe(observation: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    from sima2.envs import decode_ids

    return decode_ids(observation["instruction"]), []


def train(
    preset: str = "cpu-small", out: str | Path = "runs/cpu-small", *, resume: bool = False,
    overrides: Sequence[str] = (), vision: str | None = None, planner: str | None = None,
    text_encoder: str | None = None,
) -> dict[str, Any]:
    """Run the whole job and return the evaluation results (also written to `out/eval.json`).

    `vision`, `planner`, `text_encoder`: pretrained components by HF name or path (see `Agent.from_preset`).
    """
    import sima2.envs as envs
    from sima2.envs.wrappers import RewardShaper, RollbackWrapper
    from sima2.policy import Agent
    from sima2.training.data import load_demonstrations, record_demonstrations, save_demonstrations
    from sima2.training.evaluate import evaluate_splits
    from sima2.training.stages import train_bc, train_ppo

    config = pipeline_config(preset, overrides)
    pretrained = {"vision": vision, "planner": planner, "text_encoder": text_encoder}
    config = dataclasses.replace(config, **{k: v for k, v in pretrained.items() if v is not None})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(config_to_dict(config), indent=2))
    key = jax.random.key(config.train.seed)
    k_demo, k_agent, k_eval = jax.random.split(key, 3)

    env, params = envs.make(config.level, split="train", image_size=config.image_size)
    agent = Agent.from_preset(
        config.preset, key=k_agent, action_nvec=env.action_nvec, proprio_dim=env.proprio_size,
        vocab_size=env.vocab_size, vision=config.vision, planner=config.planner, text_encoder=config.text_encoder,
    )

    # 1. Expert demonstrations, saved as a Hugging Face dataset (parquet) and reused on resume.
    demos_dir = out / "demos"
    if resume and (demos_dir / "train").exists():
        dataset = load_demonstrations(demos_dir)
    else:
        dataset = record_demonstrations(env, params, k_demo, num_envs=config.demo_envs,
                                        num_steps=config.demo_steps, describe=_describe)
        save_demonstrations(dataset, demos_dir)

    # 2. Behaviour cloning of perception + planner + policy together.
    bc_config = dataclasses.replace(config.train, stage="bc", out=str(out / "bc"))
    state = train_bc(bc_config, agent, dataset, image_shape=(config.image_size, config.image_size, 3),
                     action_nvec=env.action_nvec, resume=resume)
    agent = state.model

    # 3. PPO on vmapped worlds with the reward shaper and the rollback wrapper.
    if config.ppo_updates > 0:
        shaped = RollbackWrapper(RewardShaper(env))
        ppo_config = dataclasses.replace(config.train, stage="ppo", out=str(out / "ppo"),
                                         num_steps=config.ppo_updates)
        state = train_ppo(ppo_config, agent, shaped, params, resume=resume)
        agent = state.model

    # 4. Evaluation on the training levels and every held-out split, then the report (plots, GIFs, summary.md).
    from sima2.training.report import evaluation_report, write_report

    splits = {name: env.default_params(name) for name in envs.SPLITS}
    results = evaluate_splits(agent, env, splits, k_eval, config.train.eval)
    report = evaluation_report(results, preset=config.preset, level=config.level)
    (out / "eval.json").write_text(json.dumps(report, indent=2, default=float))
    agent.save_pretrained(out / "final")
    write_report(out, agent, env, report, jax.random.fold_in(key, 1))
    return report
