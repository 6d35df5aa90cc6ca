"""`TextEncoder`: the BERT-family encoder of HF `BertModel` (e.g. MiniLM sentence encoders).

`enc(input_ids, attention_mask)` returns `last_hidden_state`; `mean_pool` averages it over real tokens as
sentence-transformers does, and `pooler_output` is BERT's tanh(dense(CLS)) head when the checkpoint has it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from sima2.interop.checkpoint import CheckpointError
from sima2.interop.mapping import HFParam, fused, named_arrays, same
from sima2.interop.pretrained import PretrainedModel, hf_config_to_dict, with_hf_defaults
from sima2.layers import attention, check_activation, check_token_ids, get_activation, linear


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
    """Static description of a BERT encoder, read from (and written back to) an HF `config.json`."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    use_pooler: bool = True
    hf_json: str = "{}"  # the full HF config, so save_pretrained writes back exactly what was read

    def __post_init__(self) -> None:
        # Fail at config time, not on the first call deep inside a layer.
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_heads}"
            )
        check_activation(self.hidden_act)

    @classmethod
    def from_hf(cls, config: Any) -> TextEncoderConfig:
        raw = hf_config_to_dict(config)
        if raw.get("model_type") != "bert":
            raise CheckpointError(f"TextEncoder serves model_type 'bert'; got {raw.get('model_type')!r}")
        hf = with_hf_defaults(raw)
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise CheckpointError("BERT as a decoder / with cross-attention is not supported")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf["type_vocab_size"],
            layer_norm_eps=float(hf["layer_norm_eps"]),
            hidden_act=hf["hidden_act"],
            use_pooler=bool(hf.get("add_pooling_layer", True)),
            hf_json=json.dumps(hf, sort_keys=True),
        )


class EncoderLayer(eqx.Module):
    """Post-norm BERT block: norm(x + attn(x)), then norm(x + mlp(x)); fused q/k/v."""

    qkv: eqx.nn.Linear
    attn_out: eqx.nn.Linear
    attn_norm: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    mlp_norm: eqx.nn.LayerNorm
    num_heads: int = eqx.field(static=True)
    act: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "T D"], mask: Bool[Array, "T T"]) -> Float[Array, "T D"]:
        qkv = x @ self.qkv.weight.T + self.qkv.bias
        q, k, v = einops.rearrange(qkv, "t (three h d) -> three t h d", three=3, h=self.num_heads)
        attended = einops.rearrange(attention(q, k, v, mask=mask), "t h d -> t (h d)")
        x = jax.vmap(self.attn_norm)(x + attended @ self.attn_out.weight.T + self.attn_out.bias)
        h = get_activation(self.act)(x @ self.fc1.weight.T + self.fc1.bias)
        return jax.vmap(self.mlp_norm)(x + h @ self.fc2.weight.T + self.fc2.bias)


class TextEncoder(PretrainedModel):
    """BERT-family text encoder loadable from HF `BertModel` checkpoints (MiniLM, BERT, sentence encoders).

    Call on one tokenised sequence; `jax.vmap` for batches.
    """

    word_embeddings: Float[Array, "V D"]
    position_embeddings: Float[Array, "P D"]
    token_type_embeddings: Float[Array, "Y D"]
    embed_norm: eqx.nn.LayerNorm
    layers: list[EncoderLayer]
    pooler: eqx.nn.Linear | None
    config: TextEncoderConfig = eqx.field(static=True)

    hf_aliases = (
        (r"LayerNorm\.gamma$", "LayerNorm.weight"),  # TF-era checkpoints
        (r"LayerNorm\.beta$", "LayerNorm.bias"),
    )
    hf_ignored = (r"position_ids$", r"^cls\.", r"^classifier\.", r"^qa_outputs\.")

    @classmethod
    def config_from_hf(cls, hf_config: Mapping[str, Any]) -> TextEncoderConfig:
        return TextEncoderConfig.from_hf(hf_config)

    @classmethod
    def config_for_checkpoint(cls, hf_config: Mapping[str, Any], checkpoint_keys: list[str]) -> TextEncoderConfig:
        # Task checkpoints (e.g. BertForMaskedLM) are saved without the pooler: follow the file.
        config = TextEncoderConfig.from_hf(hf_config)
        has_pooler = any(k.endswith("pooler.dense.weight") for k in checkpoint_keys)
        return dataclasses.replace(config, use_pooler=has_pooler)

    @classmethod
    def from_config(cls, config: TextEncoderConfig | Mapping[str, Any] | Any, *, key: PRNGKeyArray
                    ) -> TextEncoder:
        """A randomly initialised encoder; `config` is a `TextEncoderConfig` or any HF BERT config."""
        if not isinstance(config, TextEncoderConfig):
            config = TextEncoderConfig.from_hf(config)
        c = config
        d = c.hidden_size
        std = float(json.loads(c.hf_json).get("initializer_range", 0.02))
        keys = iter(jax.random.split(key, 4 + 4 * c.num_layers))
        ln = lambda: eqx.nn.LayerNorm(d, eps=c.layer_norm_eps)
        layers = [
            EncoderLayer(
                qkv=linear(d, 3 * d, std=std, key=next(keys)),
                attn_out=linear(d, d, std=std, key=next(keys)),
                attn_norm=ln(),
                fc1=linear(d, c.intermediate_size, std=std, key=next(keys)),
                fc2=linear(c.intermediate_size, d, std=std, key=next(keys)),
                mlp_norm=ln(),
                num_heads=c.num_heads,
                act=c.hidden_act,
            )
            for _ in range(c.num_layers)
        ]
        return cls(
            word_embeddings=std * jax.random.normal(next(keys), (c.vocab_size, d)),
            position_embeddings=std * jax.random.normal(next(keys), (c.max_position_embeddings, d)),
            token_type_embeddings=std * jax.random.normal(next(keys), (c.type_vocab_size, d)),
            embed_norm=ln(),
            layers=layers,
            pooler=linear(d, d, std=std, key=next(keys)) if c.use_pooler else None,
            config=c,
        )

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def __call__(
        self,
        input_ids: Int[Array, " T"],
        attention_mask: Int[Array, " T"] | Bool[Array, " T"] | None = None,
        *,
        token_type_ids: Int[Array, " T"] | None = None,
    ) -> Float[Array, "T D"]:
        """`last_hidden_state` for one sequence (padding, marked by `attention_mask`, is never attended).

        Ids must lie in [0, vocab_size) and `token_type_ids` in [0, type_vocab_size): concrete inputs are
        checked, but under `jit` nothing can raise and out-of-range ids give NaN.
        """
        t = input_ids.shape[0]
        if t > self.config.max_position_embeddings:
            limit = self.config.max_position_embeddings
            raise ValueError(f"sequence of {t} tokens exceeds max_position_embeddings={limit}")
        check_token_ids(input_ids, self.config.vocab_size)
        if token_type_ids is not None:
            limit = self.config.type_vocab_size
            check_token_ids(token_type_ids, limit, name="token_type_ids", bound="type_vocab_size")
        types = jnp.zeros((t,), jnp.int32) if token_type_ids is None else token_type_ids
        x = (
            jnp.take(self.word_embeddings, input_ids, axis=0)
            + self.position_embeddings[:t]
            + jnp.take(self.token_type_embeddings, types, axis=0)
        )
        x = jax.vmap(self.embed_norm)(x)
        valid = jnp.ones((t,), bool) if attention_mask is None else attention_mask.astype(bool)
        mask = jnp.broadcast_to(valid[None, :], (t, t))
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def pooler_output(self, hidden: Float[Array, "T D"]) -> Float[Array, " D"]:
        """BERT's pooled output: tanh(dense(hidden[CLS]))."""
        if self.pooler is None:
            raise ValueError("this checkpoint has no pooler; use mean_pool")
        return jnp.tanh(self.pooler(hidden[0]))

    # --- HF mapping --------------------------------------------------------------------------------------
    def hf_key_map(self) -> dict[str, HFParam]:
        m: dict[str, HFParam] = {}
        e = "embeddings."
        m["word_embeddings"] = same(e + "word_embeddings.weight")
        m["position_embeddings"] = same(e + "position_embeddings.weight")
        m["token_type_embeddings"] = same(e + "token_type_embeddings.weight")
        for part in ("weight", "bias"):
            m[f"embed_norm.{part}"] = same(e + f"LayerNorm.{part}")
            m[f"pooler.{part}"] = same(f"pooler.dense.{part}")
            for i in range(self.config.num_layers):
                hf, me = f"encoder.layer.{i}.", f"layers.{i}."
                m[me + f"qkv.{part}"] = fused([hf + f"attention.self.{n}.{part}" for n in ("query", "key", "value")])
                m[me + f"attn_out.{part}"] = same(hf + f"attention.output.dense.{part}")
                m[me + f"attn_norm.{part}"] = same(hf + f"attention.output.LayerNorm.{part}")
                m[me + f"fc1.{part}"] = same(hf + f"intermediate.dense.{part}")
                m[me + f"fc2.{part}"] = same(hf + f"output.dense.{part}")
                m[me + f"mlp_norm.{part}"] = same(hf + f"output.LayerNorm.{part}")
        present = named_arrays(self)
        return {name: rule for name, rule in m.items() if name in present}

    def hf_config(self) -> dict[str, Any]:
        config = json.loads(self.config.hf_json)
        config["add_pooling_layer"] = self.config.use_pooler  # follows the checkpoint it was loaded from
        config["architectures"] = ["BertModel"]
        config["model_type"] = "bert"
        return config


def mean_pool(
    hidden: Float[Array, "T D"], attention_mask: Int[Array, " T"] | Bool[Array, " T"] | None = None
) -> Float[Array, " D"]:
    """Average of the real tokens' states (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return hidden.mean(axis=0)
    weights = attention_mask.astype(hidden.dtype)[:, None]
    return (hidden * weights).sum(axis=0) / jnp.maximum(weights.sum(), 1e-9)


__all__ = ["TextEncoder", "TextEncoderConfig", "mean_pool"]
