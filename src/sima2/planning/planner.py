"""`LanguagePlanner`: the language model at the decision layer.

It wraps a backbone (`CausalLM` or `TextEncoder`) and gives the policy instruction embeddings (token-level
and pooled), decomposes instructions into ordered subgoals (`plan`, generated text with a `CausalLM`), and
offers a differentiable `plan_loss`, so planner and policy train in one jitted step. Optional LoRA adapters
(rank r on every attention and MLP projection) let a large LM finetune with its base weights frozen: select
the trainable leaves with `trainable_filter()`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from sima2.interop.checkpoint import CheckpointError, resolve_checkpoint
from sima2.interop.pretrained import hf_config_to_dict
from sima2.planning.causal_lm import LM_MODEL_TYPES, CausalLM, LMConfig, positions_from_mask
from sima2.planning.text_encoder import TextEncoder, TextEncoderConfig, mean_pool
from sima2.planning.tokenizer import DEFAULT_SEPARATOR, eos_id, pad_id, plan_prompt_ids, split_plan

Backbone = CausalLM | TextEncoder


class LoRA(eqx.Module):
    """A low-rank update `scale * b @ a` of one `(out, in)` weight; `b` starts at zero (no change)."""

    a: Float[Array, "r i"]
    b: Float[Array, "o r"]
    scale: float = eqx.field(static=True)

    def delta(self) -> Float[Array, "o i"]:
        return self.scale * (self.b @ self.a)


def _projections(layer: eqx.Module) -> list[str]:
    """Names of a block's linear projections (attention and MLP): the LoRA targets."""
    return [f.name for f in dataclasses.fields(layer) if isinstance(getattr(layer, f.name), eqx.nn.Linear)]


def _backbone_class(model_type: str | None) -> type[CausalLM] | type[TextEncoder]:
    if model_type in LM_MODEL_TYPES:
        return CausalLM
    if model_type == "bert":
        return TextEncoder
    raise CheckpointError(
        f"LanguagePlanner backbones are model_type {[*LM_MODEL_TYPES, 'bert']}; got {model_type!r}"
    )


class LanguagePlanner(eqx.Module):
    """Instruction embeddings, plans and a plan loss over a `CausalLM` or `TextEncoder` backbone.

    All methods work on ONE example; `jax.vmap` over a batch.
    """

    backbone: Backbone
    lora: list[dict[str, LoRA]] | None  # per block, by projection name
    separator: str = eqx.field(static=True, default=DEFAULT_SEPARATOR)

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | LMConfig | TextEncoderConfig | Any,
        *,
        key: PRNGKeyArray,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        separator: str = DEFAULT_SEPARATOR,
    ) -> LanguagePlanner:
        """A randomly initialised planner; the backbone follows the HF config's `model_type`."""
        backbone_key, lora_key = jax.random.split(key)
        if isinstance(config, LMConfig):
            backbone: Backbone = CausalLM.from_config(config, key=backbone_key)
        elif isinstance(config, TextEncoderConfig):
            backbone = TextEncoder.from_config(config, key=backbone_key)
        else:
            raw = hf_config_to_dict(config)
            backbone = _backbone_class(raw.get("model_type")).from_config(raw, key=backbone_key)
        planner = cls(backbone=backbone, lora=None, separator=separator)
        return planner.with_lora(lora_rank, alpha=lora_alpha, key=lora_key) if lora_rank else planner

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        dtype: str | Any | None = None,
        revision: str | None = None,
        allow_pickle: bool = False,
        strict: bool = True,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        separator: str = DEFAULT_SEPARATOR,
        key: PRNGKeyArray | None = None,
    ) -> LanguagePlanner:
        """Load a backbone from HF weights: `TextEncoder` for BERT, `CausalLM` for GPT-2 / Llama / Qwen2."""
        files = resolve_checkpoint(path_or_repo_id, revision=revision, allow_pickle=allow_pickle)
        if files.config is None:
            raise CheckpointError(f"{files.folder} has no config.json; cannot tell the backbone")
        backbone = _backbone_class(files.config.get("model_type")).from_pretrained(
            path_or_repo_id, dtype=dtype, revision=revision, allow_pickle=allow_pickle, strict=strict
        )
        planner = cls(backbone=backbone, lora=None, separator=separator)
        if lora_rank:
            planner = planner.with_lora(lora_rank, alpha=lora_alpha, key=key if key is not None else jax.random.key(0))
        return planner

    def with_lora(self, rank: int, *, key: PRNGKeyArray, alpha: float | None = None) -> LanguagePlanner:
        """Add rank-`rank` adapters to every projection of every block (`b = 0`: the model is unchanged)."""
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        scale = (alpha if alpha is not None else rank) / rank
        adapters = []
        for layer, layer_key in zip(self.backbone.layers, jax.random.split(key, len(self.backbone.layers)),
                                    strict=True):
            names = _projections(layer)
            block = {}
            for name, k in zip(names, jax.random.split(layer_key, len(names)), strict=True):
                weight = getattr(layer, name).weight
                out_features, in_features = weight.shape
                a = jax.random.normal(k, (rank, in_features), weight.dtype) / jnp.sqrt(in_features)
                block[name] = LoRA(a=a, b=jnp.zeros((out_features, rank), weight.dtype), scale=float(scale))
            adapters.append(block)
        return dataclasses.replace(self, lora=adapters)

    def merged_backbone(self) -> Backbone:
        """The backbone with the LoRA updates folded into its weights (what every method runs; save it
        with `save_pretrained` to publish a finetuned model)."""
        if self.lora is None:
            return self.backbone
        targets = [(i, name) for i, block in enumerate(self.lora) for name in block]
        new_weights = [
            getattr(self.backbone.layers[i], name).weight + self.lora[i][name].delta().astype(
                getattr(self.backbone.layers[i], name).weight.dtype
            )
            for i, name in targets
        ]
        return eqx.tree_at(
            lambda b: [getattr(b.layers[i], name).weight for i, name in targets], self.backbone, new_weights
        )

    def trainable_filter(self) -> PyTree[bool]:
        """True on the leaves to train: only the LoRA adapters when there are any, else every float array.
        Use with `eqx.partition` or `optax.multi_transform`."""
        if self.lora is None:
            return jax.tree.map(eqx.is_inexact_array, self)
        frozen = jax.tree.map(lambda _: False, self)
        return eqx.tree_at(lambda p: p.lora, frozen, jax.tree.map(eqx.is_inexact_array, self.lora))

    # --- the policy's view ---------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def embed(
        self,
        input_ids: Int[Array, " L"],
        attention_mask: Int[Array, " L"] | Bool[Array, " L"],
    ) -> tuple[Float[Array, "L D"], Float[Array, " D"]]:
        """Instruction embeddings: per-token final hidden states (zero at padding) and their masked mean."""
        backbone = self.merged_backbone()
        mask = attention_mask.astype(bool)
        if isinstance(backbone, CausalLM):
            tokens = backbone.hidden_states(input_ids, attention_mask=mask)
        else:
            tokens = backbone(input_ids, mask)
        tokens = jnp.where(mask[:, None], tokens, 0)
        return tokens, mean_pool(tokens, mask)

    # --- planning ------------------------------------------------------------------------------------------
    def _causal_lm(self) -> CausalLM:
        backbone = self.merged_backbone()
        if not isinstance(backbone, CausalLM):
            raise TypeError(f"planning needs a CausalLM backbone; this planner wraps a {type(backbone).__name__}")
        return backbone

    def plan_loss(
        self,
        prompt_ids: Int[Array, " P"],
        target_ids: Int[Array, " T"],
        mask: Bool[Array, " T"] | Int[Array, " T"],
        *,
        prompt_mask: Bool[Array, " P"] | Int[Array, " P"] | None = None,
    ) -> Float[Array, ""]:
        """Mean next-token cross-entropy of the plan `target_ids` (where `mask`) given the prompt.

        Layout as `encode_plan_pairs` makes it: prompt left-padded (`prompt_mask`), target right-padded.
        """
        lm = self._causal_lm()
        p = prompt_ids.shape[0]
        if prompt_mask is None:
            prompt_mask = jnp.ones((p,), bool)
        ids = jnp.concatenate([prompt_ids, target_ids])
        valid = jnp.concatenate([prompt_mask.astype(bool), mask.astype(bool)])
        hidden = lm.hidden_states(ids, attention_mask=valid, positions=positions_from_mask(valid))
        # Position p-1+j predicts target token j.
        logits = lm.logits(hidden[p - 1 : -1]).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, target_ids)
        weights = mask.astype(jnp.float32)
        return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    def plan(self, tokenizer: Any, instruction: str, *, max_new_tokens: int = 64) -> list[str]:
        """Decompose `instruction` into an ordered list of subgoal strings (greedy decoding)."""
        from sima2.planning.generate import generate

        lm = self._causal_lm()
        prompt = jnp.asarray([plan_prompt_ids(tokenizer, instruction)], jnp.int32)
        out = generate(
            lm, prompt, max_new_tokens=max_new_tokens, eos_token_id=eos_id(tokenizer),
            pad_token_id=pad_id(tokenizer),
        )
        return split_plan(tokenizer, jax.device_get(out[0, prompt.shape[1] :]).tolist(), self.separator)


__all__ = ["LanguagePlanner", "LoRA"]
