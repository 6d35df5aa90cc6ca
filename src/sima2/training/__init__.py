"""sima2.training: behaviour cloning, PPO on vmapped worlds, data, checkpoints, monitoring, evaluation.

One loop (`run_loop`) drives every stage; a stage is an `init_fn(key) -> TrainState` and a pure
`step_fn(state, batch) -> (state, metrics)` (`make_bc`, `make_ppo`), and `train_bc` / `train_ppo` add
resume, logging, checkpoints and the final model's `save_pretrained`. `pipeline_config(preset)` gives a
preset's settings of every stage (`.bc` and `.ppo` are `TrainConfig`s) to start from.
"""

from sima2.perception.preprocess import augment_images
from sima2.training.augmentation_check import AugmentationComparison, AugmentationResult, compare_augmentations
from sima2.training.bc import bc_loss, make_bc
from sima2.training.checkpoint import Checkpointer
from sima2.training.config import (
    BCConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    GuardConfig,
    MonitorConfig,
    OptimConfig,
    PPOConfig,
    TrainConfig,
    apply_overrides,
)
from sima2.training.dagger import DaggerConfig, dagger
from sima2.training.data import (
    FEATURES,
    DemonstrationBatches,
    RecordedEpisode,
    load_demonstrations,
    record_demonstrations,
    record_rows,
    save_demonstrations,
)
from sima2.training.dataset_checks import check_dataset, validate_rows
from sima2.training.evaluate import decision_latency, evaluate, evaluate_splits
from sima2.training.experience import ExperienceStore, PracticeReport, practise, world_success
from sima2.training.gym_pipeline import GymRunConfig, gym_run_config, train_gym
from sima2.training.host_episodes import (
    Expert,
    GymEvaluation,
    HostEpisode,
    episode_rows,
    evaluate_gym,
    random_actions,
    run_episodes,
    score_episodes,
)
from sima2.training.host_rollout import HostRollout, make_host_ppo
from sima2.training.loop import GuardState, TrainingHalted, TrainState, guard_step, run_loop, scan_steps
from sima2.training.monitor import MetricsLogger, memory_stats
from sima2.training.optim import make_optimizer, make_schedule, trainable_spec
from sima2.training.parallel import initialize_distributed, make_mesh, shard_batch, shard_train_state
from sima2.training.pipeline import PipelineConfig, pipeline_config
from sima2.training.ppo import compute_gae, make_ppo, ppo_update, vmap_seeds
from sima2.training.stages import run_stage, train_bc, train_ppo
from sima2.training.validation import HeldOutAccuracy, split_validation

__all__ = [
    "FEATURES",
    "AugmentationComparison",
    "AugmentationResult",
    "BCConfig",
    "CheckpointConfig",
    "Checkpointer",
    "DaggerConfig",
    "DataConfig",
    "DemonstrationBatches",
    "EvalConfig",
    "ExperienceStore",
    "Expert",
    "GuardConfig",
    "GuardState",
    "GymEvaluation",
    "GymRunConfig",
    "HeldOutAccuracy",
    "HostEpisode",
    "HostRollout",
    "MetricsLogger",
    "MonitorConfig",
    "OptimConfig",
    "PPOConfig",
    "PipelineConfig",
    "PracticeReport",
    "RecordedEpisode",
    "TrainConfig",
    "TrainState",
    "TrainingHalted",
    "apply_overrides",
    "augment_images",
    "bc_loss",
    "check_dataset",
    "compare_augmentations",
    "compute_gae",
    "dagger",
    "decision_latency",
    "episode_rows",
    "evaluate",
    "evaluate_gym",
    "evaluate_splits",
    "guard_step",
    "gym_run_config",
    "initialize_distributed",
    "load_demonstrations",
    "make_bc",
    "make_host_ppo",
    "make_mesh",
    "make_optimizer",
    "make_ppo",
    "make_schedule",
    "memory_stats",
    "pipeline_config",
    "ppo_update",
    "practise",
    "random_actions",
    "record_demonstrations",
    "record_rows",
    "run_episodes",
    "run_loop",
    "run_stage",
    "save_demonstrations",
    "scan_steps",
    "score_episodes",
    "shard_batch",
    "shard_train_state",
    "split_validation",
    "train_bc",
    "train_gym",
    "train_ppo",
    "trainable_spec",
    "validate_rows",
    "vmap_seeds",
    "world_success",
]
