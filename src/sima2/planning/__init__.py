"""Planning: language models from Hugging Face weights (GPT-2, Llama, Qwen2, BERT), jitted KV-cache
generation, and the `LanguagePlanner` whose instruction embeddings steer the policy."""

from __future__ import annotations

from sima2.planning.causal_lm import CausalLM, KVCache, LMConfig, positions_from_mask


def model_class_for(model_type: str) -> type:
    """The sima2 class that loads checkpoints of this HF `model_type` (for `sima2 convert`)."""
    classes: dict[str, type] = {"gpt2": CausalLM, "llama": CausalLM, "qwen2": CausalLM}
    if model_type not in classes:
        raise ValueError(f"no sima2 language model for model_type {model_type!r}; supported: {sorted(classes)}")
    return classes[model_type]


__all__ = ["CausalLM", "KVCache", "LMConfig", "model_class_for", "positions_from_mask"]
