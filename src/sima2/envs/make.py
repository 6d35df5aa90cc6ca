"""`make`: a functional environment from a gymnasium-style id, its image size and, optionally, the tokenizer
whose ids its observations carry; `registry` lists the levels by id."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from sima2.envs.env import Sima2Env
from sima2.envs.levels import LEVELS, LevelConfig, levels_from_id
from sima2.envs.world import EnvParams
from sima2.planning.bridge import TokenBridge
from sima2.planning.tokenizer import load_tokenizer

ImageSize = int | np.integer | tuple[int | np.integer, int | np.integer]


def image_shape(image_size: ImageSize) -> tuple[int, int]:
    """(height, width) of an `image_size` given as one int or a (height, width) pair of ints."""
    # bool is an int but never a size; strings would otherwise unpack into digits ("64" -> 6x4).
    def is_int(x):
        return isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_)

    if is_int(image_size):
        return int(image_size), int(image_size)
    if isinstance(image_size, tuple | list) and len(image_size) == 2 and all(map(is_int, image_size)):
        return int(image_size[0]), int(image_size[1])
    raise TypeError(f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}")


def instruction_tokenizer(tokenizer: Any) -> TokenBridge:
    """The bridge that writes the world's instructions in `tokenizer`'s ids (an HF tokenizer, or its Hub id or
    path), exactly as `tokenizer(text)` writes the instruction text, special tokens included."""
    if isinstance(tokenizer, TokenBridge):
        return tokenizer
    if isinstance(tokenizer, str | os.PathLike):
        try:
            tokenizer = load_tokenizer(tokenizer)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load a tokenizer from {os.fspath(tokenizer)!r}: {err}") from None
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"tokenizer must be an HF tokenizer or its name or path, not {type(tokenizer).__name__}")
    return TokenBridge.from_tokenizer(tokenizer)


def make(
    env_id: str = "sima2/GoTo-v0",
    split: str = "train",
    image_size: ImageSize = 64,
    tokenizer: Any = None,
    instruction_length: int | None = None,
) -> tuple[Sima2Env, EnvParams]:
    """Build a functional environment and its default parameters from a gymnasium-style id: one level
    (`sima2/GoTo-v0`), a registered mixture (`sima2/AllFamilies-v0`: every task family) or level ids
    joined by commas (`sima2/GoTo-v0,sima2/Pickup-v0`), whose mixture the default params draw from.

    `tokenizer`: an HF tokenizer (or its Hub id or path); observations then carry the instruction in its ids
    (`tokenizer(text)["input_ids"]` of the instruction text, padded with its pad id) instead of the world's
    word ids. `instruction_length` (with a tokenizer): pad them to that many ids rather than to the longest
    tokenisation of these levels (e.g. to match an agent built for more levels)."""
    levels = levels_from_id(env_id)  # also refuses an id that is not a string
    height, width = image_shape(image_size)
    bridge = None if tokenizer is None else instruction_tokenizer(tokenizer)
    env = Sima2Env(levels=levels, image_height=height, image_width=width)
    if bridge is not None:
        longest = bridge.longest_output(env.max_instruction_words)
        if instruction_length is not None and instruction_length < longest:
            raise ValueError(f"instruction_length={instruction_length} is shorter than these levels' longest "
                             f"instruction in {bridge.tokenizer_name!r} ids ({longest})")
        bridge = dataclasses.replace(bridge, max_length=instruction_length or longest)
        env = Sima2Env(levels=levels, image_height=height, image_width=width, tokenizer=bridge)
    return env, env.default_params(split)


def registry() -> dict[str, LevelConfig]:
    """All levels by gymnasium id, easiest first."""
    return {level.gym_id: level for level in LEVELS.values()}
