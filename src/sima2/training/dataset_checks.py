"""Validation of demonstration datasets: every bad row found and named, then refused or dropped.

A row is bad when its image has the wrong shape, its action is out of range or of the wrong length, its
instruction is empty or its ids out of the vocabulary, its proprioception or touch vector is missing,
non-finite or of the wrong length, or its episode/step id is missing. Dropping removes the rest of a bad
row's episode too, so sequence windows never jump over a hole; bad rows are never trained on silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

log = logging.getLogger("sima2.training")


def validate_rows(
    dataset: datasets.Dataset,
    *,
    image_shape: Sequence[int],
    action_nvec: Sequence[int],
    vocab_size: int | None = None,
    proprio_size: int | None = None,
    touch_size: int | None = None,
    chunk_size: int = 256,
    allow_empty_instructions: bool = False,
) -> list[tuple[int, str]]:
    """Every bad row as `(index, problem)`: wrong image shape, out-of-range or mis-sized action, empty
    instruction (unless `allow_empty_instructions`: data of agents that are not told the task), instruction
    ids missing or outside `[0, vocab_size)`, proprioception or touch missing, non-finite or of another length
    than `proprio_size` / `touch_size` (default: the first row's), or a missing episode/step id. An empty list
    means the dataset is clean."""
    image_shape, action_nvec = tuple(image_shape), tuple(action_nvec)
    sizes = {"proprio": proprio_size, "touch": touch_size}
    problems: list[tuple[int, str]] = []
    for start in range(0, len(dataset), chunk_size):
        rows = dataset[start : start + chunk_size]
        for offset in range(len(rows["action"])):
            index = start + offset
            image = rows["image"][offset]
            shape = None if image is None else np.asarray(image).shape
            if shape != image_shape:
                problems.append((index, f"image shape {shape} != {image_shape}"))
            action = rows["action"][offset]
            if action is None or len(action) != len(action_nvec):
                problems.append((index, f"action {action} must have {len(action_nvec)} factors"))
            elif any(not 0 <= a < n for a, n in zip(action, action_nvec, strict=True)):
                problems.append((index, f"action {list(action)} out of range for {list(action_nvec)}"))
            text = rows["instruction"][offset]
            if text is None or (not allow_empty_instructions and not str(text).strip()):
                problems.append((index, "empty instruction"))
            if "instruction_ids" in rows:
                ids = rows["instruction_ids"][offset]
                if ids is None or len(ids) == 0:
                    problems.append((index, "no instruction ids"))
                elif min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size):
                    bound = f"[0, {vocab_size})" if vocab_size is not None else "non-negative"
                    problems.append((index, f"instruction ids {list(ids)} not all {bound}"))
            for column in ("proprio", "touch"):
                if column in rows:
                    problem = _vector_problem(rows[column][offset], column, sizes)
                    if problem:
                        problems.append((index, problem))
            for column in ("episode_id", "step_id"):
                if column in rows and rows[column][offset] is None:
                    problems.append((index, f"no {column}"))
    return problems


def _vector_problem(value: Any, column: str, sizes: dict[str, int | None]) -> str | None:
    """What is wrong with one row's `column` vector, if anything; the first good row fixes the size when
    `sizes[column]` is None."""
    if value is None:
        return f"no {column}"
    if sizes[column] is not None and len(value) != sizes[column]:
        return f"{column} of length {len(value)} != {sizes[column]}"
    if not np.all(np.isfinite(np.asarray(value, np.float32))):
        return f"non-finite {column}"
    if sizes[column] is None:
        sizes[column] = len(value)  # later rows must match the first good one
    return None


def check_dataset(
    dataset: datasets.Dataset,
    *,
    image_shape: Sequence[int],
    action_nvec: Sequence[int],
    on_invalid: str = "raise",
    vocab_size: int | None = None,
    proprio_size: int | None = None,
    touch_size: int | None = None,
    allow_empty_instructions: bool = False,
) -> datasets.Dataset:
    """Validate (see `validate_rows`); with `on_invalid="raise"` bad rows raise a ValueError listing them,
    with `"drop"` they are logged with their index and removed, together with the rest of their episode
    when the dataset has `episode_id` (sequence windows must not jump over a hole). Bad rows are never
    trained on silently."""
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    problems = validate_rows(
        dataset,
        image_shape=image_shape,
        action_nvec=action_nvec,
        vocab_size=vocab_size,
        proprio_size=proprio_size,
        touch_size=touch_size,
        allow_empty_instructions=allow_empty_instructions,
    )
    if not problems:
        return dataset
    listing = "; ".join(f"row {i}: {p}" for i, p in problems[:20])
    more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
    if on_invalid == "raise":
        raise ValueError(f"{len(problems)} invalid dataset rows: {listing}{more}")
    bad = {i for i, _ in problems}
    log.warning("dropping %d invalid dataset rows: %s%s", len(bad), listing, more)
    if "episode_id" in dataset.column_names:
        episodes = dataset["episode_id"]
        broken = {episodes[i] for i in bad if episodes[i] is not None}
        whole = {i for i, episode in enumerate(episodes) if episode in broken}
        if whole - bad:
            log.warning("dropping the other %d rows of their %d episodes too", len(whole - bad), len(broken))
        bad |= whole
    return dataset.select(sorted(set(range(len(dataset))) - bad))


__all__ = ["check_dataset", "validate_rows"]
