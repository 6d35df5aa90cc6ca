"""Configuration dataclasses for every training stage, and `key=value` overrides from the command line.

One `TrainConfig` holds the shared parts (optimiser, loop, checkpoints, monitoring, anomaly guard) and the
stage-specific parts (`bc`, `ppo`, `data`, `eval`); `apply_overrides(config, ["ppo.lr=3e-4"])` returns a
new config with typed values, so presets stay immutable.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from typing import Any


def check_fields(config: Any, **rules: tuple[bool, str]) -> None:
    """Raise a ValueError naming the first field whose value breaks its rule: `field=(ok, "must be ...")`.

    Runs in `__post_init__`, so presets, `dataclasses.replace` and command-line overrides are all checked when
    the config is built, before any stage starts (NaN fails every comparison, so it is refused too).
    """
    for name, (ok, requirement) in rules.items():
        if not ok:
            raise ValueError(f"{type(config).__name__}.{name} {requirement}, got {getattr(config, name)!r}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay from `lr` to `final_lr`, and global-norm clipping."""

    lr: float = 1e-4
    final_lr: float = 1e-5
    warmup_steps: int = 100
    decay_steps: int = 10_000
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            lr=(0 <= self.lr < math.inf, "must be a finite number >= 0"),
            final_lr=(0 <= self.final_lr < math.inf, "must be a finite number >= 0"),
            warmup_steps=(self.warmup_steps >= 0, "must be >= 0"),
            decay_steps=(self.decay_steps >= 0, "must be >= 0"),
            weight_decay=(0 <= self.weight_decay < math.inf, "must be a finite number >= 0"),
            b1=(0 <= self.b1 < 1, "must be in [0, 1)"),
            b2=(0 <= self.b2 < 1, "must be in [0, 1)"),
            eps=(self.eps > 0, "must be > 0"),
            max_grad_norm=(self.max_grad_norm > 0, "must be > 0 (inf: no clipping)"),
        )


@dataclasses.dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning: batch size, window length, augmentation strengths and the plan-loss weight.

    `sequence_length` > 1 trains on windows of that many consecutive demonstration steps (starting at
    episode starts and every `sequence_length`-th step of an episode) with the agent's memory threaded
    through time; `batch_size` then counts windows. An agent with a memory needs it > 1 (`train_bc` checks).
    """

    batch_size: int = 64
    sequence_length: int = 1
    # Where windows start (`sima2.training.windows`): "whole_episodes" (episode starts and every
    # `sequence_length`-th step, so every step is trained) or "episode_starts" (only there: true empty memories,
    # but the steps after the first `sequence_length` of longer episodes are dropped, with a warning).
    window_starts: str = "whole_episodes"
    plan_loss_weight: float = 1.0
    # Weight of the subgoal-done head's loss (`sima2.training.subgoals`), when the batches carry its labels.
    subgoal_done_weight: float = 1.0
    crop_padding: int = 4
    noise_std: float = 0.02
    brightness: float = 0.0  # images scaled by a factor in [1 - brightness, 1 + brightness]
    contrast: float = 0.0  # pixels moved from the image's mean grey by a factor in [1 - contrast, 1 + contrast]

    def __post_init__(self) -> None:
        check_fields(
            self,
            batch_size=(self.batch_size >= 1, "must be >= 1"),
            sequence_length=(self.sequence_length >= 1, "must be >= 1"),
            window_starts=(self.window_starts in ("whole_episodes", "episode_starts"),
                           "must be 'whole_episodes' or 'episode_starts'"),
            plan_loss_weight=(0 <= self.plan_loss_weight < math.inf, "must be a finite number >= 0"),
            subgoal_done_weight=(0 <= self.subgoal_done_weight < math.inf, "must be a finite number >= 0"),
            crop_padding=(self.crop_padding >= 0, "must be >= 0"),
            noise_std=(0 <= self.noise_std < math.inf, "must be a finite number >= 0"),
            brightness=(0 <= self.brightness < 1, "must be in [0, 1)"),
            contrast=(0 <= self.contrast < 1, "must be in [0, 1)"),
        )


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO with GAE on vmapped functional worlds; one update = one rollout of `rollout_length` steps in each
    of `num_envs` worlds, then `update_epochs` passes over it in `num_minibatches` minibatches."""

    num_envs: int = 64
    rollout_length: int = 128
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    clip_value: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    normalize_advantages: bool = True
    num_seeds: int = 1
    # Expert distillation ("kickstarting"): cross-entropy toward the env's `expert_action` on the rollout's
    # own states, weighted by `expert_coef` and decayed linearly to zero over `expert_decay_updates`
    # updates (0: constant). Needs an env with `expert_action` and an agent whose `evaluate` scores a stack
    # of actions (as `sima2.policy.Agent` does).
    expert_coef: float = 0.0
    expert_decay_updates: int = 0
    # Updates at the start that train only the critic's own parameters (the model's `critic_filter()`).
    # A policy cloned from demonstrations comes with an untrained critic: its first advantages are noise,
    # and its value loss flowing into the shared trunk would undo part of what behaviour cloning taught.
    critic_warmup_updates: int = 0

    def __post_init__(self) -> None:
        check_fields(
            self,
            num_envs=(self.num_envs >= 1, "must be >= 1"),
            rollout_length=(self.rollout_length >= 1, "must be >= 1"),
            update_epochs=(self.update_epochs >= 1, "must be >= 1"),
            num_minibatches=(self.num_minibatches >= 1, "must be >= 1"),
            gamma=(0 <= self.gamma <= 1, "must be in [0, 1]"),
            gae_lambda=(0 <= self.gae_lambda <= 1, "must be in [0, 1]"),
            clip_eps=(0 < self.clip_eps < math.inf, "must be a finite number > 0"),
            vf_coef=(0 <= self.vf_coef < math.inf, "must be a finite number >= 0"),
            ent_coef=(0 <= self.ent_coef < math.inf, "must be a finite number >= 0"),
            num_seeds=(self.num_seeds >= 1, "must be >= 1"),
            expert_coef=(0 <= self.expert_coef < math.inf, "must be a finite number >= 0"),
            expert_decay_updates=(self.expert_decay_updates >= 0, "must be >= 0"),
            critic_warmup_updates=(self.critic_warmup_updates >= 0, "must be >= 0"),
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Demonstration dataset location, what to do with rows that fail validation, and held-out episodes."""

    path: str = ""
    split: str = "train"
    shuffle: bool = True
    prefetch: int = 2
    on_invalid: str = "raise"  # "raise" or "drop" (dropped rows are logged with their index)
    # Rows with an empty instruction are valid (an agent that is not told the task, as split knowledge's
    # listener); otherwise they are refused as bad rows.
    allow_empty_instructions: bool = False
    # Episodes (the ones with the largest `episode_id`s) kept out of behaviour cloning and scored by greedy
    # action accuracy every `checkpoint.every` updates and at the end (`sima2.training.validation`).
    validation_episodes: int = 0

    def __post_init__(self) -> None:
        check_fields(
            self,
            prefetch=(self.prefetch >= 0, "must be >= 0"),
            validation_episodes=(self.validation_episodes >= 0, "must be >= 0"),
            on_invalid=(self.on_invalid in ("raise", "drop"), "must be 'raise' or 'drop'"),
        )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints every `every` steps, keeping the last `keep`."""

    every: int = 1000
    keep: int = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        check_fields(self, every=(self.every >= 1, "must be >= 1"), keep=(self.keep >= 1, "must be >= 1"))


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """Where metrics go, how often, and when to trace with the JAX profiler."""

    log_every: int = 10
    jsonl: bool = True
    tensorboard: bool = True
    progress: bool = True
    memory_warning_fraction: float = 0.8
    profile_start: int = -1  # first step of a profiler trace (-1: only on demand, via a PROFILE file)
    profile_steps: int = 5

    def __post_init__(self) -> None:
        check_fields(
            self,
            log_every=(self.log_every >= 1, "must be >= 1"),
            memory_warning_fraction=(0 < self.memory_warning_fraction <= 1, "must be in (0, 1]"),
            profile_start=(self.profile_start >= -1, "must be >= 0, or -1 (on demand only)"),
            profile_steps=(self.profile_steps >= 1, "must be >= 1"),
        )


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """Anomaly guard: skip updates with non-finite values or a loss spike; stop after repeated ones."""

    enabled: bool = True
    spike_factor: float = 10.0  # loss > spike_factor * running mean of |loss| counts as a spike
    warmup_steps: int = 20  # no spike detection before the running mean has settled
    ema_decay: float = 0.98
    max_consecutive: int = 5

    def __post_init__(self) -> None:
        check_fields(
            self,
            spike_factor=(self.spike_factor > 1, "must be > 1"),
            warmup_steps=(self.warmup_steps >= 0, "must be >= 0"),
            ema_decay=(0 <= self.ema_decay < 1, "must be in [0, 1)"),
            max_consecutive=(self.max_consecutive >= 1, "must be >= 1"),
        )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation: worlds run at once, episodes scored, steps per world and greedy or sampled actions."""

    num_envs: int = 32
    num_episodes: int = 64
    max_steps: int = 500
    # True: the agent's most likely action at each step (Stable-Baselines3's `evaluate_policy` default), for
    # agents whose `act` takes `deterministic=`; False samples actions as in training rollouts.
    deterministic: bool = False
    # True: the agent writes each episode's plan and acts on its current subgoal (`PlanningActor`); False:
    # it acts from the instruction alone.
    use_plan: bool = False
    # The splits the main job scores (names of `sima2.envs.SPLITS`, e.g. `eval.splits=train`); empty: every
    # split of the world's levels.
    splits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # One name, or a list as read back from pipeline.json.
        object.__setattr__(self, "splits", (self.splits,) if isinstance(self.splits, str) else tuple(self.splits))
        check_fields(
            self,
            num_envs=(self.num_envs >= 1, "must be >= 1"),
            num_episodes=(self.num_episodes >= 1, "must be >= 1"),
            max_steps=(self.max_steps >= 1, "must be >= 1"),
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the agent and the world.

    The defaults are generic; a preset's tuned settings of the behaviour-cloning and PPO stages (batch,
    window length, optimiser schedule) are `sima2.training.pipeline_config("cpu-small").bc` and `.ppo`, e.g.
    `dataclasses.replace(pipeline_config("cpu-small").bc, out="runs/mine", num_updates=500)`.
    """

    stage: str = "bc"  # "bc" or "ppo"
    seed: int = 0
    num_updates: int = 1000  # optimiser updates of the stage (BC batches; PPO rollout + update rounds)
    out: str = "runs/default"
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    bc: BCConfig = dataclasses.field(default_factory=BCConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    guard: GuardConfig = dataclasses.field(default_factory=GuardConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        check_fields(
            self,
            stage=(self.stage in ("bc", "ppo"), "must be 'bc' or 'ppo'"),
            num_updates=(self.num_updates >= 0, "must be >= 0"),
        )


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a parsed override to the field's declared type, or raise a ValueError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"override {name}: expected a bool, got {value!r}")
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or int(value) != value
        ):
            raise ValueError(f"override {name}: expected an int, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"override {name}: expected a float, got {value!r}")
        return float(value)
    if annotation is str:
        return str(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = (value,)
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        return tuple(_coerce(v, item_type, name) if item_type is not Any else v for v in value)
    return value


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words such as `bc` or paths are strings


def apply_overrides(config: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Return a copy of the dataclass `config` with `a.b=value` overrides applied (values typed by field).

    Raises ValueError for a malformed override, an unknown key or a value of the wrong type.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        dotted, text = item.split("=", 1)
        path = dotted.strip().split(".")
        config = _replace_path(config, path, _parse_value(text.strip()), dotted)
    return config


def _replace_path(node: Any, path: list[str], value: Any, dotted: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ValueError(f"override {dotted!r}: {type(node).__name__} has no sub-keys")
    hints = typing.get_type_hints(type(node))
    fields = {f.name for f in dataclasses.fields(node)}
    head = path[0]
    renamed = RENAMED_KEYS.get(type(node), {}).get(head)
    if renamed is not None:
        new = ".".join([*dotted.strip().split(".")[: -len(path)], renamed, *path[1:]])
        raise ValueError(f"override {dotted!r}: {head!r} was renamed; use {new!r}")
    if head not in fields:
        raise ValueError(f"override {dotted!r}: unknown key {head!r} (choose from {sorted(fields)})")
    if len(path) == 1:
        if dataclasses.is_dataclass(getattr(node, head)):
            raise ValueError(f"override {dotted!r}: {head!r} is a section, set one of its keys")
        try:
            return dataclasses.replace(node, **{head: _coerce(value, hints[head], dotted)})
        except ValueError as err:  # a range check in __post_init__: say which override broke it
            if str(err).startswith("override "):
                raise
            raise ValueError(f"override {dotted!r}: {err}") from None
    return dataclasses.replace(node, **{head: _replace_path(getattr(node, head), path[1:], value, dotted)})


# Keys renamed so that each says what it counts: an override with the old name is refused, naming the new one.
RENAMED_KEYS: dict[type, dict[str, str]] = {
    TrainConfig: {"num_steps": "num_updates"},
    PPOConfig: {"num_steps": "rollout_length", "num_epochs": "update_epochs"},
}


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts (for JSON logs and checkpoint metadata)."""
    return dataclasses.asdict(config)
