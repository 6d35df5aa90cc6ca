"""Where the training windows of recurrent behaviour cloning start in a demonstration dataset.

Windows of T consecutive rows start at every episode start and at every T-th step inside an episode
(`step_id % T == 0`), so each row of an episode longer than T is still a position of some window: starting
only at episode starts would never train the steps after the first T of a long episode. A window that
starts inside an episode starts the agent's memory from its initial carry (the learner begins every window
there), R2D2's "zero start state": the memory it learns from has seen less than the episode, but every
step is trained. Windows may run on into the following episodes, whose starts the batch's `first` flag marks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Int


def episode_starts(dataset: Any) -> Int[np.ndarray, " S"]:
    """Indices of the rows that start an episode, after checking that every episode's rows are contiguous
    and in step order (`step_id` 0, 1, 2, ...). Raises a ValueError naming the first row that breaks it."""
    for name in ("episode_id", "step_id"):
        if name not in dataset.column_names:
            raise ValueError(f"sequence batches need an {name!r} column; the dataset has {dataset.column_names}")
    episode = np.asarray(dataset["episode_id"], np.int64)
    step = np.asarray(dataset["step_id"], np.int64)
    starts = step == 0
    continues = np.zeros_like(starts)
    continues[1:] = (episode[1:] == episode[:-1]) & (step[1:] == step[:-1] + 1)
    bad = np.flatnonzero(~(starts | continues))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"row {i} (episode_id {episode[i]}, step_id {step[i]}) does not continue the row before it; "
            "sequence batches need each episode's rows contiguous and in step order "
            "(sort the dataset by episode_id, step_id)"
        )
    return np.flatnonzero(starts)


WINDOW_STARTS = ("whole_episodes", "episode_starts")


def window_starts(dataset: Any, length: int, mode: str = "whole_episodes") -> Int[np.ndarray, " S"]:
    """First rows of the windows of `length` rows, after the checks of `episode_starts`.

    `"whole_episodes"`: every row whose `step_id` is a multiple of `length` (episode starts included); the one
    window that would run past the dataset's end starts `length` rows before it instead, so the last rows are
    trained too. `"episode_starts"`: episode starts only (with `length` rows left), every window starting
    from a true empty memory; the steps after the first `length` of a longer episode are then never trained
    (`steps_covered` says how many)."""
    if mode not in WINDOW_STARTS:
        raise ValueError(f"window starts must be one of {WINDOW_STARTS}, got {mode!r}")
    if length > len(dataset):
        raise ValueError(
            f"sequence_length {length} is longer than the dataset's {len(dataset)} rows; "
            "lower bc.sequence_length or record more demonstrations"
        )
    firsts = episode_starts(dataset)  # also the checks: whole episodes, contiguous and in step order
    if mode == "episode_starts":
        return firsts[firsts + length <= len(dataset)]
    step = np.asarray(dataset["step_id"], np.int64)
    starts = np.flatnonzero(step % length == 0)
    return np.unique(np.minimum(starts, len(dataset) - length))


def steps_covered(starts: Int[np.ndarray, " S"], length: int, num_rows: int) -> float:
    """The share of `num_rows` rows that lie inside at least one window of `length` rows from `starts`."""
    if num_rows == 0:
        return 0.0
    edges = np.zeros(num_rows + 1, np.int64)  # +1 where a window opens, -1 past where it closes
    np.add.at(edges, starts, 1)
    np.add.at(edges, np.minimum(starts + length, num_rows), -1)
    return float((np.cumsum(edges[:-1]) > 0).mean())


__all__ = ["WINDOW_STARTS", "episode_starts", "steps_covered", "window_starts"]
