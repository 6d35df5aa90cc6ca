"""Pretrained parts of an `Agent` by Hugging Face name or local path: a vision encoder, a language model (causal
LM planner or BERT text encoder), and the token bridge from the world's word ids to that model's tokenizer;
and the plan writer an agent gets when that model cannot write plans in the instruction's ids.

A name or path that cannot be loaded raises a ValueError naming it; the agent never falls back to random
weights behind your back.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxtyping import PRNGKeyArray

from sima2 import presets
from sima2.interop.checkpoint import CheckpointError, resolve_checkpoint
from sima2.perception.preprocess import ImageProcessorConfig
from sima2.perception.vit import ViTEncoder
from sima2.planning import CausalLM, LanguagePlanner, TextEncoder
from sima2.planning.bridge import TokenBridge
from sima2.planning.tokenizer import DEFAULT_SEPARATOR, load_tokenizer


def pretrained_vision(source: str | os.PathLike) -> tuple[ViTEncoder, dict[str, Any]]:
    """A ViT / CLIP / SigLIP encoder from HF weights, frozen by default, with its checkpoint's image
    normalisation when it ships a `preprocessor_config.json`; returns (encoder, AgentConfig fields)."""
    try:
        encoder = ViTEncoder.from_pretrained(source)
        folder = resolve_checkpoint(source).folder
    except (CheckpointError, OSError) as err:
        raise ValueError(f"cannot load the pretrained vision encoder {os.fspath(source)!r}: {err}") from None
    fields: dict[str, Any] = {"freeze_vision": True}  # a pretrained encoder keeps its features unless asked
    if (folder / "preprocessor_config.json").is_file():
        processor = ImageProcessorConfig.from_pretrained(folder)
        fields.update(image_mean=tuple(processor.image_mean), image_std=tuple(processor.image_std))
    return encoder, fields


def pretrained_language(
    source: str | os.PathLike,
    backbone: type[CausalLM] | type[TextEncoder],
    flag: str,
    *,
    key: PRNGKeyArray,
    lora: bool = True,
) -> LanguagePlanner:
    """A pretrained causal LM (`planner=`) or BERT encoder (`text_encoder=`), finetuned through LoRA adapters
    with the `base` preset's rank and alpha (its weights stay as loaded), or without adapters (`lora=False`)."""
    base = presets.preset("base").planner
    rank, alpha = (base["lora_rank"], base["lora_alpha"]) if lora else (0, None)
    try:
        planner = LanguagePlanner.from_pretrained(source, lora_rank=rank, lora_alpha=alpha, key=key)
    except (CheckpointError, OSError) as err:
        raise ValueError(f"cannot load the pretrained {flag} {os.fspath(source)!r}: {err}") from None
    if not isinstance(planner.backbone, backbone):
        other = "text_encoder" if backbone is CausalLM else "planner"
        raise ValueError(
            f"{flag}={os.fspath(source)!r} is a {type(planner.backbone).__name__}, not a {backbone.__name__}; "
            f"pass it as {other}= instead"
        )
    return planner


def token_bridge(tokenizer: Any, planner: LanguagePlanner, instruction_length: int) -> TokenBridge:
    """The bridge from the world's word ids to `tokenizer` (an HF tokenizer, or its name or path), checked
    against `planner`: every id must be in its vocabulary, and the output for an instruction of
    `instruction_length` ids (the env's `spec.observation.instruction.shape[0]`) must fit its positions."""
    if isinstance(tokenizer, str | os.PathLike):
        try:
            tokenizer = load_tokenizer(tokenizer)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load a tokenizer from {os.fspath(tokenizer)!r}: {err}") from None
    bridge = TokenBridge.from_tokenizer(tokenizer)
    config = planner.backbone.config
    if bridge.max_token_id >= config.vocab_size:
        raise ValueError(
            f"tokenizer {bridge.tokenizer_name!r} emits id {bridge.max_token_id}, beyond the language model's "
            f"vocabulary of {config.vocab_size}; is it this model's tokenizer?"
        )
    if bridge.output_length(instruction_length) > config.max_position_embeddings:
        bridge = dataclasses.replace(bridge, max_length=int(config.max_position_embeddings))  # truncate like HF
    return bridge


__all__ = ["pretrained_language", "pretrained_vision", "token_bridge"]


def plan_vocabulary(tokenizer: Any, separator: str) -> tuple[int, ...]:
    """The ids of every built-in world word (and the separator) in `tokenizer`, with its special tokens: what
    a plan writer beside a large tokenizer reads and writes (any other id reads as the unknown token)."""
    from sima2.envs.vocabulary import vocabulary
    from sima2.planning.tokenizer import eos_id, pad_id

    words = [w for w in vocabulary() if not w.startswith("[")] + [separator]
    ids = {int(i) for w in words for i in tokenizer(w, add_special_tokens=False)["input_ids"]}
    specials = {eos_id(tokenizer), pad_id(tokenizer), *tokenizer.all_special_ids}
    return tuple(sorted(ids | specials))


def plan_writer_for(
    planner: LanguagePlanner, spec: Any, agent_fields: dict[str, Any], table: presets.Preset, *, key: PRNGKeyArray
) -> tuple[LanguagePlanner | None, dict[str, Any]]:
    """The preset's small causal LM to write plans for an agent whose language model cannot (a sentence
    encoder, or a model reading through a token bridge), or None when the planner writes them itself; and the
    `AgentConfig` fields plans need: `subgoal_length` (half the instruction's: a subgoal is one clause of an
    instruction of up to two, at least 8 ids) and, for a writer over an env's tokenizer ids, the world's words
    in those ids (`plan_vocabulary`)."""
    length = agent_fields.get("instruction_length") or spec.observation.instruction.shape[0]
    fields: dict[str, Any] = {"subgoal_length": min(length, max(8, -(-length // 2)))}
    if isinstance(planner.backbone, CausalLM) and agent_fields.get("text_bridge") is None:
        return None, fields
    from sima2.policy.instructions import load_cached_tokenizer
    from sima2.policy.persistence import planner_from_config

    separator = table.planner_config(1).get("separator", DEFAULT_SEPARATOR)
    vocab = spec.observation.vocab_size
    if spec.observation.tokenizer is not None:
        ids = plan_vocabulary(load_cached_tokenizer(spec.observation.tokenizer), separator)
        vocab, fields = len(ids), {**fields, "plan_vocabulary": ids}
    return planner_from_config(table.planner_config(vocab), key=key), fields
