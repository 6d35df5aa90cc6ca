"""Planning: language models from Hugging Face weights (GPT-2, Llama, Qwen2, BERT), jitted KV-cache
generation, the `LanguagePlanner` whose instruction embeddings steer the policy, and the `TokenBridge` from the
world's word ids to a pretrained tokenizer's ids."""

from __future__ import annotations

from sima2.planning.bridge import TokenBridge
from sima2.planning.causal_lm import CausalLM, KVCache, LMConfig, positions_from_mask
from sima2.planning.generate import generate
from sima2.planning.planner import LanguagePlanner, LoRA
from sima2.planning.text_encoder import TextEncoder, TextEncoderConfig, mean_pool
from sima2.planning.tokenizer import (
    encode_plan_pairs,
    load_tokenizer,
    plan_prompt_ids,
    plan_target_ids,
    split_plan,
)

_MODEL_CLASSES: dict[str, type] = {"gpt2": CausalLM, "llama": CausalLM, "qwen2": CausalLM, "bert": TextEncoder}


def model_class_for(model_type: str | None) -> type | None:
    """The sima2 class that loads checkpoints of this HF `model_type` (for `sima2 convert`); None if none."""
    return _MODEL_CLASSES.get(model_type or "")


__all__ = [
    "CausalLM",
    "KVCache",
    "LMConfig",
    "LanguagePlanner",
    "LoRA",
    "TextEncoder",
    "TextEncoderConfig",
    "TokenBridge",
    "encode_plan_pairs",
    "generate",
    "load_tokenizer",
    "mean_pool",
    "model_class_for",
    "plan_prompt_ids",
    "plan_target_ids",
    "positions_from_mask",
    "split_plan",
]
