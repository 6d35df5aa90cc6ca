"""Held-out demonstration episodes for behaviour cloning: kept out of training, scored by greedy action accuracy.

`split_validation(dataset, k)` holds out the k episodes with the largest `episode_id`s (for recorded
demonstrations, the last ones recorded). `HeldOutAccuracy(rows, action_nvec)(model)` runs the model over
each held-out episode from its first step, its memory threaded through time, with the `evaluate_windows`
the behaviour-cloning loss uses, and at every step takes the action it would choose greedily: the most
likely joint action (the mode of its action distribution, as `act(..., deterministic=True)` takes it),
found by scoring every joint action. A step is right when every factor of that action equals the
expert's; the share per factor says which factor is wrong.

`train_bc` with `data.validation_episodes = k` logs these as `val_action_accuracy` and
`val_action_accuracy/factor<i>` every `checkpoint.every` updates and at the end, and writes the latest to
`out/validation.json`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from sima2.interop.pretrained import atomic_write
from sima2.training.data import rows_to_batch
from sima2.training.loop import TrainState, host_step
from sima2.training.recurrent import evaluate_windows

log = logging.getLogger("sima2.training")

VALIDATION_NAME = "validation.json"
ACCURACY = "val_action_accuracy"
# Every joint action is scored at every held-out step; past this many the scores would cost more than the
# agent's forward pass.
MAX_JOINT_ACTIONS = 4096
_ROWS_PER_CALL = 1024  # held-out steps through the model in one call (bounds its activations)
_SCORES_PER_CALL = 2**21  # steps x joint actions scored in one call


def split_validation(dataset: datasets.Dataset, num_episodes: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """`(training rows, held-out rows)`: the rows of the `num_episodes` largest `episode_id`s held out
    (None when `num_episodes` is 0). Row order is kept, so each episode stays contiguous and in step order."""
    if num_episodes == 0:
        return dataset, None
    if num_episodes < 0:
        raise ValueError(f"num_episodes must be >= 0, got {num_episodes}")
    if "episode_id" not in dataset.column_names:
        raise ValueError(
            f"holding out validation episodes needs an 'episode_id' column; the dataset has {dataset.column_names}"
        )
    if jax.process_count() > 1:
        raise ValueError(
            f"data.validation_episodes needs a single process (this run has {jax.process_count()}); set it to 0 "
            "and score held-out episodes with sima2.training.validation.HeldOutAccuracy after training"
        )
    episode = np.asarray(dataset["episode_id"], np.int64)
    ids = np.unique(episode)
    if num_episodes >= len(ids):
        raise ValueError(
            f"data.validation_episodes={num_episodes} would hold out all {len(ids)} episodes of the dataset; set "
            f"it below {len(ids)} so some are left to train on"
        )
    held = np.isin(episode, ids[-num_episodes:])
    return dataset.select(np.flatnonzero(~held)), dataset.select(np.flatnonzero(held))


def joint_actions(action_nvec: Sequence[int]) -> Int[np.ndarray, "K F"]:
    """Every joint action of a factored action space, one per row."""
    grids = np.meshgrid(*(np.arange(n) for n in action_nvec), indexing="ij")
    return np.stack([grid.reshape(-1) for grid in grids], axis=-1).astype(np.int32)


@eqx.filter_jit
def _greedy_counts(
    model: Any,
    batch: dict[str, Any],
    labels: Int[Array, "B T F"],
    valid: Bool[Array, "B T"],
    candidates: Int[Array, "K F"],
) -> tuple[Int[Array, ""], Int[Array, " F"], Int[Array, ""]]:
    """(steps whose greedy action is the label, steps right per factor, valid steps) of a batch of episodes."""
    stacked = jnp.broadcast_to(candidates, (*valid.shape, *candidates.shape))
    log_prob = evaluate_windows(model, batch, stacked)[0]  # (B, T, K)
    greedy = candidates[jnp.argmax(log_prob, axis=-1)]  # the mode: ties go to the first, as in `mode()`
    right = (greedy == labels) & valid[..., None]
    return (right.all(-1) & valid).sum(), right.sum((0, 1)), valid.sum()


class HeldOutAccuracy:
    """Greedy action accuracy of a model on held-out episodes (see the module docstring).

    The rows are batched once, here: each episode is one window from its first step, padded to the longest
    with masked steps. `instruction_length` should be the training batches' (default: the longest of
    `rows`); `transform` the training batches' `DemonstrationBatches` transform, so the model reads the
    held-out steps as it read the training ones (e.g. precomputed instruction features, subgoals).
    """

    def __init__(
        self,
        rows: datasets.Dataset,
        action_nvec: Sequence[int],
        *,
        instruction_length: int | None = None,
        transform: Callable[[dict, dict], dict] | None = None,
    ):
        if len(rows) == 0:
            raise ValueError("no held-out rows to score")
        self.action_nvec = tuple(int(n) for n in action_nvec)
        if math.prod(self.action_nvec) > MAX_JOINT_ACTIONS:
            raise ValueError(
                f"held-out accuracy scores every joint action, and action_nvec {self.action_nvec} has "
                f"{math.prod(self.action_nvec)} (at most {MAX_JOINT_ACTIONS}); leave data.validation_episodes at 0"
            )
        self.candidates = joint_actions(self.action_nvec)
        episode, step = np.asarray(rows["episode_id"], np.int64), np.asarray(rows["step_id"], np.int64)
        order = np.lexsort((step, episode))
        _, starts, lengths = np.unique(episode[order], return_index=True, return_counts=True)
        self.episodes, self.steps = len(starts), len(rows)
        length = int(lengths.max())
        per_call = max(1, min(_ROWS_PER_CALL // length, _SCORES_PER_CALL // (length * len(self.candidates))))
        per_call = min(per_call, self.episodes)
        windows = -(-self.episodes // per_call) * per_call  # every call the same shape: one compilation
        index = np.zeros((windows, length), np.int64)
        valid = np.zeros((windows, length), bool)
        for window, (start, count) in enumerate(zip(starts, lengths, strict=True)):
            index[window, :count] = order[start : start + count]
            index[window, count:] = order[start + count - 1]  # padding: repeats of the last step, masked
            valid[window, :count] = True
        index[self.episodes :] = index[0]  # whole padding windows, all masked
        if instruction_length is None:
            instruction_length = max(1, max(len(ids) for ids in rows["instruction_ids"]))
        self.instruction_length = instruction_length
        self._calls = [
            self._batch(rows, index[i : i + per_call], valid[i : i + per_call], transform)
            for i in range(0, windows, per_call)
        ]

    def _batch(
        self, rows: datasets.Dataset, index: np.ndarray, valid: np.ndarray, transform: Callable | None
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        picked = rows[index.reshape(-1).tolist()]
        batch = rows_to_batch(picked, self.instruction_length)
        if transform is not None:
            batch = transform(picked, batch)
        batch = jax.tree.map(lambda x: np.asarray(x).reshape(*index.shape, *np.shape(x)[1:]), batch)
        first = np.zeros(index.shape, bool)
        first[:, 0] = True
        inputs = {name: batch[name] for name in ("obs", "instruction_features", "subgoal_features") if name in batch}
        return dict(inputs, first=first), batch["action"], valid

    def __call__(self, model: Any) -> dict[str, float]:
        """`{"val_action_accuracy": ..., "val_action_accuracy/factor<i>": ...}` of `model` on the held-out steps."""
        totals = [np.zeros((), np.int64), np.zeros(len(self.action_nvec), np.int64), np.zeros((), np.int64)]
        for batch, labels, valid in self._calls:
            counts = jax.device_get(_greedy_counts(model, batch, labels, valid, self.candidates))
            totals = [total + count for total, count in zip(totals, counts, strict=True)]
        right, per_factor, steps = totals
        metrics = {ACCURACY: float(right / steps)}
        metrics.update({f"{ACCURACY}/factor{i}": float(n / steps) for i, n in enumerate(per_factor)})
        return metrics


def stage_validation(accuracy: HeldOutAccuracy, out: str | Path) -> Callable[[TrainState], dict[str, float]]:
    """The `run_loop` evaluation of a behaviour-cloning stage: the state's model scored by `accuracy`, the
    scores also written to `out/validation.json` (with the step and the held-out episodes and steps), so the
    stage's folder keeps the latest, the final ones once training ends."""
    path = Path(out) / VALIDATION_NAME

    def evaluate(state: TrainState) -> dict[str, float]:
        metrics = accuracy(state.model)
        summary = {"step": host_step(state), "episodes": accuracy.episodes, "steps": accuracy.steps, **metrics}
        text = json.dumps(summary, indent=2)
        atomic_write(path, lambda p: Path(p).write_text(text))
        return metrics

    return evaluate


def read_validation(out: str | Path) -> dict[str, Any]:
    """The latest held-out scores a behaviour-cloning stage wrote to `out/validation.json`."""
    path = Path(out) / VALIDATION_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; was the stage run with data.validation_episodes > 0?")
    return json.loads(path.read_text())


__all__ = [
    "ACCURACY",
    "MAX_JOINT_ACTIONS",
    "VALIDATION_NAME",
    "HeldOutAccuracy",
    "joint_actions",
    "read_validation",
    "split_validation",
    "stage_validation",
]
