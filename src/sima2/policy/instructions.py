"""Instructions at the agent's boundary: free text -> the ids an agent reads, the per-episode instruction
features, and the check that an env and a language model share one tokenizer."""

from __future__ import annotations

import functools
import os
from typing import Any

import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from sima2.contract import EnvSpec


class InstructionFeatures(eqx.Module):
    """An instruction's token embeddings from the agent's language model, and which tokens are real."""

    tokens: Float[Array, "N D"]
    valid: Bool[Array, " N"]


@functools.cache
def load_cached_tokenizer(source: str) -> Any:
    """`sima2.planning.tokenizer.load_tokenizer`, once per source."""
    from sima2.planning.tokenizer import load_tokenizer

    return load_tokenizer(source)


def tokenize(text: str, tokenizer: str | None, length: int | None, pad_id: int = 0) -> Int[np.ndarray, " L"]:
    """`text` as the ids of `tokenizer` (a Hub id or path; None: the world's own words, others as [UNK]),
    padded with `pad_id` to `length`; a ValueError when the text is empty or longer than `length`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the instruction is empty")
    if tokenizer is None:  # the world's words, spelt as the world spells them; others become [UNK]
        from sima2.envs.instruct import normalise_words
        from sima2.envs.vocabulary import encode_words

        ids = encode_words(" ".join(normalise_words(text)))
        pad = 0
    else:
        hf = load_cached_tokenizer(tokenizer)
        ids = [int(i) for i in hf(text)["input_ids"]]
        pad = pad_id
    if length is not None and len(ids) > length:
        raise ValueError(
            f"{text!r} is {len(ids)} tokens long, but this agent reads only the first {length} (its "
            "instruction_length, the longest instruction of the levels it was built for)"
        )
    out = np.full((length or len(ids),), pad, np.int32)
    out[: len(ids)] = ids
    return out


def check_fits(limit: int | None, num_words: int, what: str = "the instruction") -> None:
    """A ValueError when `num_words` ids exceed an agent's `instruction_length` (`limit`; None: no bound)."""
    if limit is not None and num_words > limit:
        raise ValueError(f"{what} has {num_words} words, but this agent reads only the first {limit} "
                         "(its instruction_length, the longest instruction of the level it was built for)")


def check_same_tokenizer(spec: EnvSpec, tokenizer: Any, planner: Any) -> None:
    """An env that writes instructions in one tokenizer's ids needs a language model of the same tokenizer."""
    vocab = planner.backbone.config.vocab_size
    if spec.observation.vocab_size > vocab:
        raise ValueError(
            f"the env writes instructions in {spec.observation.tokenizer!r} ids (vocabulary "
            f"{spec.observation.vocab_size}), beyond the language model's vocabulary of {vocab}"
        )
    if tokenizer is None or os.fspath(tokenizer) == spec.observation.tokenizer:
        return
    mine = load_cached_tokenizer(os.fspath(tokenizer)) if isinstance(tokenizer, str | os.PathLike) else tokenizer
    try:
        theirs = load_cached_tokenizer(spec.observation.tokenizer)
    except (OSError, ValueError):
        theirs = None  # a tokenizer object without a name or path: cannot be the model's
    if theirs is None or mine.get_vocab() != theirs.get_vocab():
        raise ValueError(
            f"the env writes instructions with the tokenizer {spec.observation.tokenizer!r}, but the language "
            f"model reads {getattr(mine, 'name_or_path', mine)!r}: make the env with the model's tokenizer "
            "(sima2.envs.make(id, tokenizer=...))"
        )


__all__ = ["InstructionFeatures", "check_fits", "check_same_tokenizer", "load_cached_tokenizer", "tokenize"]
