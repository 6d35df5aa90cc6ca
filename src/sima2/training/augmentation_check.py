"""Does behaviour cloning's image augmentation help on these demonstrations? A held-out comparison.

The default augmentation (`BCConfig`: a random crop of up to `crop_padding` pixels, pixel noise) suits
camera-like views; a world drawn on a fixed grid is another matter: at 64x64 a MiniGrid tile is a few
pixels wide, and a 4-pixel shift moves every object by half a tile. `compare_augmentations` clones the same
starting agent for a few updates once per augmentation setting (by default the config's own and none at
all), on the same training episodes, batches and keys, and scores each on the same held-out episodes
(`sima2.training.validation`), through `train_bc` itself:

    comparison = compare_augmentations(agent, demos, config, num_updates=200, validation_episodes=10,
                                       image_shape=(64, 64, 3), action_nvec=env.action_nvec)
    print(comparison.summary())       # states whether and by how much the augmentation lowers accuracy
    config = dataclasses.replace(config, bc=comparison.best.bc)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from sima2.training.config import BCConfig, TrainConfig
from sima2.training.stages import train_bc
from sima2.training.validation import ACCURACY, read_validation

log = logging.getLogger("sima2.training")

AUGMENTATION_FIELDS = ("crop_padding", "noise_std", "brightness", "contrast")


def without_augmentation(bc: BCConfig) -> BCConfig:
    """`bc` with every image augmentation off."""
    return dataclasses.replace(bc, crop_padding=0, noise_std=0.0, brightness=0.0, contrast=0.0)


def noise_margin(steps: int) -> float:
    """How much lower an augmented run's held-out accuracy must be before it counts as a real loss.

    The runs share their start, batches and keys, so what separates their scores besides the augmentation
    is the sampling noise of the held-out steps: two standard errors of the difference of two accuracies on
    `steps` steps, at the worst case of 0.5 each, sqrt(2 / steps) (0.045 on 1,000 steps). Steps of one
    episode are correlated, so the true noise is larger; the margin errs toward warning, and a warning
    only asks for a look. At least 0.02, below which no choice of augmentation is worth a warning.
    """
    return max(0.02, math.sqrt(2.0 / steps))


@dataclasses.dataclass(frozen=True)
class AugmentationResult:
    """One augmentation setting and the held-out greedy action accuracy it led to."""

    bc: BCConfig
    accuracy: float
    factor_accuracy: tuple[float, ...]

    @property
    def augmented(self) -> bool:
        return any(getattr(self.bc, name) for name in AUGMENTATION_FIELDS)

    def describe(self) -> str:
        """The augmentations that are on, as override keys, or "no augmentation"."""
        if not self.augmented:
            return "no augmentation"
        return " ".join(f"bc.{name}={getattr(self.bc, name):g}" for name in AUGMENTATION_FIELDS
                        if getattr(self.bc, name))


@dataclasses.dataclass(frozen=True)
class AugmentationComparison:
    """The results of `compare_augmentations`, in the order of its candidates."""

    results: tuple[AugmentationResult, ...]
    num_updates: int
    held_out_episodes: int
    held_out_steps: int
    margin: float  # `noise_margin(held_out_steps)`

    @property
    def best(self) -> AugmentationResult:
        """The most accurate setting (the earlier candidate on a tie)."""
        return max(self.results, key=lambda result: result.accuracy)

    def losses(self) -> list[tuple[AugmentationResult, float]]:
        """Each augmented setting scoring below the unaugmented one, with how much lower (empty when no
        candidate is unaugmented)."""
        baseline = next((result for result in self.results if not result.augmented), None)
        if baseline is None:
            return []
        return [(result, baseline.accuracy - result.accuracy) for result in self.results
                if result.augmented and result.accuracy < baseline.accuracy]

    def summary(self) -> str:
        """One line: each setting's held-out accuracy, and whether (and by how much) augmentation lowers it."""
        scores = "; ".join(f"{result.describe()}: {result.accuracy:.3f}" for result in self.results)
        text = (f"held-out greedy action accuracy after {self.num_updates} updates ({self.held_out_episodes} "
                f"episodes, {self.held_out_steps} steps): {scores}.")
        for result, loss in self.losses():
            beyond = "beyond" if loss > self.margin else "within"
            text += f" {result.describe()} lowers it by {loss:.3f} ({beyond} the noise margin {self.margin:.3f})."
        if not self.losses() and any(not result.augmented for result in self.results):
            text += " Augmentation does not lower it."
        return text + f" Best: {self.best.describe()}."


def compare_augmentations(
    agent: Any,
    dataset: datasets.Dataset,
    config: TrainConfig,
    *,
    num_updates: int,
    validation_episodes: int,
    image_shape: Sequence[int],
    action_nvec: Sequence[int],
    candidates: Sequence[BCConfig] | None = None,
    seed: int | None = None,
    out: str | os.PathLike | None = None,
    **train_options: Any,
) -> AugmentationComparison:
    """Clone `agent` for `num_updates` updates with each candidate `BCConfig` (default: `config.bc` and
    `without_augmentation(config.bc)`) and score each on the last `validation_episodes` episodes, held out.

    Every run is `train_bc` with `config` (its optimiser, batch settings and `seed`, or `seed` when given),
    the same training episodes, batches and keys, and checkpoints only at the end; each writes its stage
    folder under `out/candidate<i>` (default: a temporary folder, deleted). `train_options` go to `train_bc`
    (e.g. `transform`, `plan_loss`, `precompute_instructions`). Logs a warning when an augmented setting
    scores more than `noise_margin` below the unaugmented one.
    """
    if num_updates < 1:
        raise ValueError(f"num_updates must be >= 1 to compare augmentations, got {num_updates}")
    if validation_episodes < 1:
        raise ValueError(f"validation_episodes must be >= 1 to compare augmentations, got {validation_episodes}")
    candidates = tuple(candidates) if candidates is not None else (config.bc, without_augmentation(config.bc))
    if not candidates:
        raise ValueError("candidates is empty; pass at least one BCConfig, or None for the default pair")
    base = dataclasses.replace(
        config,
        stage="bc",
        num_updates=num_updates,
        seed=config.seed if seed is None else seed,
        data=dataclasses.replace(config.data, validation_episodes=validation_episodes),
        checkpoint=dataclasses.replace(config.checkpoint, every=num_updates, async_save=False),
        monitor=dataclasses.replace(config.monitor, progress=False, tensorboard=False),
    )
    with tempfile.TemporaryDirectory(prefix="sima2-augmentations-") as scratch:
        folder = Path(scratch if out is None else out)
        results, scores = [], {}
        for i, bc in enumerate(candidates):
            run = dataclasses.replace(base, bc=bc, out=str(folder / f"candidate{i}"))
            train_bc(run, agent, dataset, image_shape=image_shape, action_nvec=action_nvec, **train_options)
            scores = read_validation(run.out)
            factors = tuple(scores[f"{ACCURACY}/factor{f}"] for f in range(len(action_nvec)))
            results.append(AugmentationResult(bc=bc, accuracy=scores[ACCURACY], factor_accuracy=factors))
    comparison = AugmentationComparison(
        results=tuple(results),
        num_updates=num_updates,
        held_out_episodes=scores["episodes"],
        held_out_steps=scores["steps"],
        margin=noise_margin(scores["steps"]),
    )
    if any(loss > comparison.margin for _, loss in comparison.losses()):
        log.warning("image augmentation lowers held-out accuracy: %s", comparison.summary())
    return comparison


__all__ = [
    "AugmentationComparison",
    "AugmentationResult",
    "compare_augmentations",
    "noise_margin",
    "without_augmentation",
]
