"""Replay buffer for shared experience, up to 1e6 transitions: a thin layer over `flashbax`.

flashbax keeps the buffer as a PyTree of preallocated arrays with pure `add`/`sample` functions, so it
lives inside jitted training steps and checkpoints with the rest of the state.
"""

from __future__ import annotations

from typing import Any

import flashbax as fbx


def make_replay_buffer(
    *, capacity: int = 1_000_000, sample_batch_size: int = 128, add_batch_size: int = 1, min_length: int = 1
) -> Any:
    """A uniform flat (transition) buffer: `buffer.init(example)`, `buffer.add(state, batch)` with a leading
    `add_batch_size` axis, `buffer.sample(state, key).experience.first` for a batch of transitions."""
    if capacity < add_batch_size or capacity <= 0:
        raise ValueError(
            f"capacity ({capacity}) must be positive and at least add_batch_size ({add_batch_size})"
        )
    return fbx.make_flat_buffer(
        max_length=capacity,
        min_length=min_length,
        sample_batch_size=sample_batch_size,
        add_sequences=False,
        add_batch_size=add_batch_size,
    )
