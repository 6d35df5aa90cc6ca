"""The end-to-end job behind `sima2 train`: expert demonstrations -> behaviour cloning -> PPO on vmapped,
wrapped worlds -> self-improvement (practice, then cloning on its own successes) -> evaluation on every
split, written to one run folder.

    demos/      the expert demonstrations, a Hugging Face dataset (parquet) with instruction and plan text
    bc/         behaviour cloning of perception + planner + policy: config, metrics JSONL, TensorBoard,
                orbax checkpoints
    ppo/        PPO in worlds wrapped by the reward shaper, the rollback wrapper and the safety filter
    self_improvement/   the experience store of judged-successful practice episodes, each round's cloning
    eval.json   success per split (and per task family), navigation efficiency, episode statistics
    final/      the trained agent (`Agent.from_pretrained(run / "final")`)
    pipeline.json, timings in eval.json

Each stage reuses the shared pieces (`record_demonstrations`, `train_bc`, `train_ppo`, `self_improve`,
`evaluate_splits`)
and keeps its own checkpoints, so `--resume` picks every stage up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from sima2 import presets
from sima2.envs.shaping import ShapingCoefficients
from sima2.interop.pretrained import atomic_write
from sima2.training.config import EvalConfig, TrainConfig, apply_overrides, check_fields, config_to_dict
from sima2.training.data import Judge
from sima2.training.evaluate import check_eval_config, evaluate_world
from sima2.training.experience import world_success
from sima2.training.pipeline_agent import (
    build_agent,
    check_pretrained_vision,
    plan_supervision_for,
    unloadable,
    writes_plans,
)
from sima2.training.report import INTERVENTIONS, evaluation_report, read_metrics, write_report
from sima2.training.self_improvement import SelfImprovementConfig, self_improve

log = logging.getLogger("sima2.training")


@dataclasses.dataclass(frozen=True)
class RollbackConfig:
    """`RollbackWrapper` settings used during PPO (see `sima2.envs.wrappers.RollbackWrapper`)."""

    timeout_s: float = 10.0
    penalty: float = 0.5
    fallback_steps: int = 4


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What `sima2 train` runs: the world, the agent preset, and each stage's settings.

    `bc` and `ppo` are full `TrainConfig`s (optimiser, loop length, checkpoints, monitoring) of the two
    training stages; override them as e.g. `bc.num_updates=3000`, `bc.bc.batch_size=32`,
    `ppo.ppo.num_envs=128`, `ppo.optim.lr=1e-4`.
    """

    preset: str = "cpu-small"
    # Every task family in one agent (`sima2.envs.MIXTURES`); one level (`sima2/GoTo-v0`) or ids joined by
    # commas also work.
    level: str = "sima2/AllFamilies-v0"
    image_size: int = 64
    seed: int = 0
    demo_envs: int = 64
    demo_steps: int = 128
    demo_noise: float = 0.0  # chance of a random executed action while the expert's is recorded (DART)
    # The levels the demonstrations come from (None: all of `level`); the others are met only in practice
    # (PPO, self-improvement), e.g. to measure a family learned without any demonstration.
    demo_level: str | None = None
    # Pretrained parts by HF name or local path (`--vision`, `--planner`, `--text-encoder`); None: random init.
    vision: str | None = None
    planner: str | None = None
    text_encoder: str | None = None
    # A pretrained planner or text encoder as loaded (True: no adapters, its instruction features computed
    # once per episode and never differentiated) or LoRA-tuned (False); None: the preset's choice (LoRA).
    freeze_language: bool | None = None
    # Give the agent the world's touch observation (contact and grip, through its own encoder); `touch=false`
    # builds it without (the ablation).
    touch: bool = True
    # Plans at run time, for an agent whose planner can write them (a causal LM over the instruction ids):
    # cloning on the expert's current subgoal and its boundaries, and evaluation with the agent's own plan
    # beside the instruction alone. `plans=false`: neither (the agent acts from its instruction).
    plans: bool = True
    bc: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(stage="bc"))
    ppo: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(stage="ppo", num_updates=0))
    # After PPO: practice in the training worlds, its judged-successful episodes cloned with the demonstrations.
    self_improvement: SelfImprovementConfig = dataclasses.field(default_factory=SelfImprovementConfig)
    # `RewardShaper` coefficients during PPO (defaults: the seed's; the presets say what they change and why).
    shaper: ShapingCoefficients = dataclasses.field(default_factory=ShapingCoefficients)
    rollback: RollbackConfig = dataclasses.field(default_factory=RollbackConfig)
    # The agent as deployed: its most likely action at each step.
    eval: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(deterministic=True))

    def __post_init__(self) -> None:
        # The image size is checked by `envs.make`, also before the run folder is written.
        check_fields(
            self,
            demo_envs=(self.demo_envs >= 1, "must be >= 1"),
            demo_steps=(self.demo_steps >= 1, "must be >= 1"),
            demo_noise=(0 <= self.demo_noise < 1, "must be a probability in [0, 1)"),
        )


def _merge(config: Any, values: dict[str, Any]) -> Any:
    updates = {}
    for name, value in values.items():
        current = getattr(config, name)
        updates[name] = _merge(current, value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **updates)


def pipeline_config(preset: str, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The preset's configuration with `key=value` overrides (e.g. `bc.num_updates=500`, `demo_envs=32`)."""
    config = _merge(PipelineConfig(preset=preset), presets.preset(preset).pipeline_overrides())
    return apply_overrides(config, list(overrides))


def intervention_summary(metrics_file: Path) -> dict[str, float] | None:
    """What the wrappers did during PPO, from its metrics log: the mean per-step rate of world rollbacks,
    fallback steps and blocked actions over the logged updates (None without a PPO stage)."""
    if not metrics_file.exists():
        return None
    records, _ = read_metrics(metrics_file)
    summary = {}
    for name in INTERVENTIONS:
        values = [float(r[name]) for r in records if r.get(name) is not None]
        if values:
            summary[name] = sum(values) / len(values)
    return summary or None


def is_destructive(state: Any, action: Any, params: Any) -> Any:
    """The safety filter's rule in the built-in world: never drop a carried object (it could wall off a
    doorway or the target, and picking it up again costs the episode)."""
    from sima2.envs.world import DROP

    del params
    return (action[0] == DROP) & (state.carrying >= 0)


def wrapped_world(env: Any, config: PipelineConfig) -> Any:
    """The world PPO trains in: reward shaper, rollback wrapper (the expert takes over after a rollback)
    and safety filter, composed as `SafetyFilter(RollbackWrapper(RewardShaper(env)))`."""
    from sima2.envs.wrappers import RewardShaper, RollbackWrapper, SafetyFilter

    shaper = RewardShaper(env, **dataclasses.asdict(config.shaper))
    rollback = RollbackWrapper(shaper, **dataclasses.asdict(config.rollback))
    return SafetyFilter(rollback, is_destructive=is_destructive)


def _check_divisible(config: PipelineConfig, devices: int) -> None:
    """Data parallelism splits BC batches and PPO worlds over the devices: name what does not divide."""
    sizes = {"bc.bc.batch_size": config.bc.bc.batch_size}
    if config.ppo.num_updates > 0:
        sizes["ppo.ppo.num_envs"] = config.ppo.ppo.num_envs
    if config.self_improvement.rounds > 0:
        sizes["self_improvement.bc.bc.batch_size"] = config.self_improvement.bc.bc.batch_size
    bad = {name: size for name, size in sizes.items() if size % devices}
    if bad:
        listed = ", ".join(f"{name}={size}" for name, size in bad.items())
        raise ValueError(f"{listed} must divide by the {devices} devices the run is split over (override them)")


def _sub_world(env: Any, level: str | None, field: str, config: PipelineConfig) -> tuple[Any, Any]:
    """The world of some of `env`'s levels (`level`; None: `env` itself) with the same image size and
    instruction ids padded as `env` pads them, so the agent reads the same shapes in every stage."""
    import sima2.envs as envs

    if level is None:
        return env, env.default_params("train")
    sub, params = envs.make(
        level, split="train", image_size=config.image_size, tokenizer=env.tokenizer,
        instruction_length=env.instruction_length if env.tokenizer is not None else None,
    )
    outside = sorted(set(sub.level_names) - set(env.level_names))
    if outside:
        raise ValueError(f"{field} names {outside}, which level={config.level} does not contain")
    return sub, params


def _check_stages(config: PipelineConfig) -> None:
    """Cross-field rules of the stages, checked before any stage starts (single fields check themselves
    when the config is built; overrides apply one at a time, so a pair can only be checked at the end)."""
    ppo = config.ppo.ppo
    if config.ppo.num_updates > 0 and ppo.num_envs % ppo.num_minibatches:
        raise ValueError(
            f"ppo.ppo.num_envs ({ppo.num_envs}) must be divisible by ppo.ppo.num_minibatches ({ppo.num_minibatches})"
        )
    # The agent's memory is never trained on single rows (`train_bc` refuses them): told before any stage.
    improvement = config.self_improvement
    for name, stage in [("bc", config.bc)] + [("self_improvement.bc", improvement.bc)] * (improvement.rounds > 0):
        if stage.bc.sequence_length == 1:
            raise ValueError(f"{name}.bc.sequence_length=1 would clone the agent on single rows, so its memory is "
                             "never trained; set it to e.g. 8 (as in pipeline_config('cpu-small').bc.bc)")


def train(
    preset: str = "cpu-small",
    out: str | Path = "runs/cpu-small",
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    vision: str | None = None,
    planner: str | None = None,
    text_encoder: str | None = None,
    report: bool = True,
    progress: bool = True,
    judge: Judge = world_success,
) -> dict[str, Any]:
    """Run the whole job and return the evaluation report (also written to `out/eval.json`).

    `vision`, `planner`, `text_encoder`: pretrained components by HF name or path (see `Agent.from_preset`);
    they override the config's. `report`: also write plots, episode GIFs and `summary.md`. `progress`: a
    line per stage and progress bars (the stages' own bars follow `<stage>.monitor.progress`). `judge`: which
    practice episodes the self-improvement stage keeps (default: the world's success signal).
    """
    import sima2.envs as envs
    from sima2.training.data import load_demonstrations, record_demonstrations, save_demonstrations
    from sima2.training.parallel import make_mesh, to_host
    from sima2.training.stages import train_bc, train_ppo

    config = pipeline_config(preset, overrides)
    pretrained = {"vision": vision, "planner": planner, "text_encoder": text_encoder}
    # "none" asks for a randomly initialised part instead of the preset's pretrained one.
    chosen = {k: None if v.lower() == "none" else v for k, v in pretrained.items() if v is not None}
    config = dataclasses.replace(config, **chosen)
    # The agent reads language with one model: the one the user named.
    if text_encoder is not None and planner is None:
        config = dataclasses.replace(config, planner=None)
    if planner is not None and text_encoder is None:
        config = dataclasses.replace(config, text_encoder=None)
    # Data parallel over every device (of every process, after `initialize_distributed`): BC batches and
    # PPO worlds are split over them, so batch_size and num_envs must divide by the device count.
    mesh = make_mesh() if jax.device_count() > 1 else None
    if mesh is not None:
        _check_divisible(config, jax.device_count())
    is_main = jax.process_index() == 0
    show = progress and is_main

    def announce(text: str) -> None:
        if show:
            print(text, flush=True)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the run folder {str(out)!r} is an existing file, not a folder")
    key = jax.random.key(config.seed)
    k_demo, k_agent, k_eval = jax.random.split(key, 3)
    k_practice = jax.random.fold_in(key, 2)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    # Everything that can refuse the configuration (level, image size, presets, pretrained parts, the
    # minibatch split) runs before the run folder is touched: a bad override must not overwrite the
    # pipeline.json of a finished run in the same folder.
    _check_stages(config)
    # With a pretrained language model, the world writes its instructions in that model's tokenizer.
    check_pretrained_vision(config)
    try:
        env, params = envs.make(
            config.level, split="train", image_size=config.image_size, tokenizer=config.text_encoder or config.planner
        )
    except ValueError as err:
        if (config.text_encoder or config.planner) is None or "tokenizer" not in str(err):
            raise
        raise unloadable(config, err) from None
    check_eval_config(config.eval, env)
    demo_env, demo_params = _sub_world(env, config.demo_level, "demo_level", config)
    practice_env, practice_params = _sub_world(env, config.self_improvement.practice_level,
                                               "self_improvement.practice_level", config)
    agent = build_agent(config, env.spec, k_agent)
    parts = {"vision": config.vision, "planner": config.planner, "text encoder": config.text_encoder}
    named = ", ".join(f"{part} {source}" for part, source in parts.items() if source is not None)
    announce(f"agent: preset {config.preset}; pretrained parts: {named or 'none (randomly initialised)'}")
    out.mkdir(parents=True, exist_ok=True)
    if is_main:
        text = json.dumps(config_to_dict(config), indent=2)
        atomic_write(out / "pipeline.json", lambda p: Path(p).write_text(text))

    # 1. Expert demonstrations with their instruction and plan text, saved as a Hugging Face dataset.
    demos_dir = out / "demos"
    announce(f"[1/5] expert demonstrations: {config.demo_envs} worlds x {config.demo_steps} steps of "
             f"{config.demo_level or config.level} "
             f"at {config.image_size}x{config.image_size} -> {demos_dir}")
    if resume and (demos_dir / "data").exists():
        dataset = load_demonstrations(str(demos_dir))
    else:
        # Every process records the same demonstrations (same key) and trains on its own share of them.
        dataset = record_demonstrations(
            demo_env, demo_params, k_demo, num_envs=config.demo_envs, num_steps=config.demo_steps,
            noise=config.demo_noise,
        )
        if is_main:
            save_demonstrations(dataset, demos_dir)
    if jax.process_count() > 1:
        dataset = dataset.shard(jax.process_count(), jax.process_index(), contiguous=True)
    timings["demos"] = time.perf_counter() - start
    announce(f"      {len(dataset)} steps in {len(dataset.unique('episode_id'))} episodes ({timings['demos']:.0f} s)")

    # 2. Behaviour cloning of perception + planner + policy together (the planner also learns the plans).
    stage_start = time.perf_counter()
    cloned = "perception + policy (the language model frozen)" if agent.config.freeze_planner else \
        "perception + language model + policy"
    announce(f"[2/5] behaviour cloning of {cloned}: {config.bc.num_updates} steps of "
             f"{config.bc.bc.batch_size} x {config.bc.bc.sequence_length} steps -> {out / 'bc'}")

    def clone(agent: Any, rows: Any, train_config: TrainConfig) -> Any:
        """Behaviour cloning on `rows` (the BC stage, and each self-improvement round); the planner learns the
        plans of these rows, padded to their longest."""
        transform, plan_loss = plan_supervision_for(agent, rows, subgoals=config.plans)
        return train_bc(
            dataclasses.replace(train_config, stage="bc", seed=config.seed),
            agent,
            rows,
            image_shape=(config.image_size, config.image_size, 3),
            action_nvec=env.action_nvec,
            plan_loss=plan_loss,
            transform=transform,
            resume=resume,
            mesh=mesh,
            vocab_size=env.vocab_size,
            proprio_size=env.proprio_size,
            touch_size=env.touch_size,
            # A frozen pretrained language model: its features once per distinct instruction, not per step.
            precompute_instructions=agent.config.freeze_planner and (config.text_encoder or config.planner) is not None,
        ).model

    agent = clone(agent, dataset, dataclasses.replace(config.bc, out=str(out / "bc")))
    timings["bc"] = time.perf_counter() - stage_start

    # 3. PPO on vmapped worlds with the reward shaper, the rollback wrapper and the safety filter.
    if config.ppo.num_updates > 0:
        stage_start = time.perf_counter()
        ppo = config.ppo.ppo
        announce(f"[3/5] PPO in shaped, rollback and safety-filtered worlds: {config.ppo.num_updates} updates of "
                 f"{ppo.num_envs} worlds x {ppo.rollout_length} steps -> {out / 'ppo'}")
        ppo_config = dataclasses.replace(config.ppo, stage="ppo", seed=config.seed, out=str(out / "ppo"))
        state = train_ppo(ppo_config, agent, wrapped_world(env, config), params, resume=resume, mesh=mesh)
        agent = state.model
        timings["ppo"] = time.perf_counter() - stage_start

    # 4. Self-improvement: practice in the training worlds, then cloning on its own successes and the demos.
    improvement = config.self_improvement
    practice: list[dict[str, Any]] = []
    if improvement.rounds > 0:
        stage_start = time.perf_counter()
        announce(f"[4/5] self-improvement: {improvement.rounds} x (practice in {improvement.practice_envs} worlds x "
                 f"{improvement.practice_steps} steps of {improvement.practice_level or config.level}, then "
                 f"{improvement.bc.num_updates} cloning steps) -> {out / 'self_improvement'}")
        agent, practice = self_improve(
            improvement, agent, practice_env, practice_params, dataset, k_practice, out / "self_improvement",
            clone=clone, judge=judge, announce=announce,
        )
        timings["self_improvement"] = time.perf_counter() - stage_start
    if mesh is not None:  # evaluate on this process's default device, with the replicated weights
        arrays, static = eqx.partition(agent, eqx.is_array)
        agent = eqx.combine(jax.device_put(to_host(arrays)), static)
    if is_main:
        agent.save_pretrained(out / "final")

    # 4. Evaluation on the training level(s) and every held-out split, in the plain world.
    stage_start = time.perf_counter()
    per_level = f" and each of the {len(env.levels)} levels" if len(env.levels) > 1 else ""
    announce(f"[5/5] evaluation: up to {config.eval.num_episodes} episodes on each of {', '.join(env.splits)}"
             f"{per_level}")
    # An agent that writes plans is scored with its plan and from the instruction alone (the ablation).
    use_plan = config.plans and writes_plans(agent)
    results = evaluate_world(agent, env, k_eval, config.eval, plans=use_plan, progress=show)
    timings["eval"] = time.perf_counter() - stage_start
    timings["total"] = time.perf_counter() - start
    eval_report = evaluation_report(
        results, preset=config.preset, level=config.level, timings_s={k: round(v, 1) for k, v in timings.items()},
        ppo_interventions=intervention_summary(out / "ppo" / "metrics.jsonl"),
    )
    if practice:
        eval_report["self_improvement"] = practice
    if not is_main:
        return eval_report
    text = json.dumps(eval_report, indent=2, default=float)
    atomic_write(out / "eval.json", lambda p: Path(p).write_text(text))

    # 5. The report: learning curves, success per split and task, evaluation GIFs, summary.md.
    if report:
        stages = {k: v for k, v in timings.items() if k != "total"}
        write_report(out, agent, env, eval_report, jax.random.fold_in(key, 1), max_steps=env.max_steps, timings=stages,
                     use_plan=use_plan)
    return eval_report

