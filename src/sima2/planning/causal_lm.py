"""`CausalLM`: decoder-only language models of HF `GPT2LMHeadModel`, `LlamaForCausalLM` and `Qwen2ForCausalLM`.

One Equinox module serves the three families; the config records what differs: learned positions
(GPT-2) or rotary ones (Llama, Qwen2, with `rope_scaling` incl. `llama3`), LayerNorm or RMSNorm, a GELU MLP
or a SwiGLU one, which projections carry biases, grouped-query attention, tied or separate output
embeddings. Projections are fused (q/k/v in one GEMM, gate/up in one GEMM) so a decode step is few, large
matmuls. The same forward serves plain calls and cached decoding (`sima2.planning.generate`).

Over 400 lines on purpose: the three families share one module, one attention with its KV cache and
one weight map; a file per family would repeat them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from sima2.interop.checkpoint import CheckpointError
from sima2.interop.mapping import HFParam, fused, named_arrays, same, transposed
from sima2.interop.pretrained import PretrainedModel, hf_config_to_dict, with_hf_defaults
from sima2.layers import attention, check_activation, check_token_ids, get_activation, linear

LMFamily = Literal["gpt2", "llama", "qwen2"]
LM_MODEL_TYPES: tuple[str, ...] = ("gpt2", "llama", "qwen2")
_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_SUPPORTED_ROPE = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Static description of a decoder-only LM, read from (and written back to) an HF `config.json`."""

    family: LMFamily
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    hidden_act: str
    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    rope_json: str = "{}"  # the HF `rope_parameters` (theta, type, scaling), as JSON so the config hashes
    hf_json: str = "{}"  # the full HF config, so save_pretrained writes back exactly what was read

    def __post_init__(self) -> None:
        # Fail at config time, not on the first call deep inside a layer.
        check_activation(self.hidden_act)

    @property
    def gated_mlp(self) -> bool:
        return self.family != "gpt2"

    @property
    def rope(self) -> dict[str, Any]:
        return json.loads(self.rope_json)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = json.loads(self.hf_json).get("eos_token_id")
        if eos is None:
            return ()
        return tuple(eos) if isinstance(eos, list) else (int(eos),)

    @classmethod
    def from_hf(cls, config: Any) -> LMConfig:
        raw = hf_config_to_dict(config)
        model_type = raw.get("model_type")
        if model_type not in LM_MODEL_TYPES:
            raise CheckpointError(f"CausalLM serves model_type {list(LM_MODEL_TYPES)}; got {model_type!r}")
        hf = with_hf_defaults(raw)
        if model_type == "gpt2":
            for flag, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                             ("add_cross_attention", False)):
                if bool(hf.get(flag, ok)) != ok:
                    raise CheckpointError(f"GPT-2 with {flag}={hf[flag]} is not supported")
            d = hf["n_embd"]
            if d % hf["n_head"]:
                raise CheckpointError(f"n_embd={d} is not divisible by n_head={hf['n_head']}")
            check_activation(hf["activation_function"], key="activation_function")
            return cls(
                family="gpt2",
                vocab_size=hf["vocab_size"],
                hidden_size=d,
                num_layers=hf["n_layer"],
                num_heads=hf["n_head"],
                num_kv_heads=hf["n_head"],
                head_dim=d // hf["n_head"],
                intermediate_size=hf.get("n_inner") or 4 * d,
                max_position_embeddings=hf["n_positions"],
                norm_eps=float(hf["layer_norm_epsilon"]),
                hidden_act=hf["activation_function"],
                qkv_bias=True,
                out_bias=True,
                mlp_bias=True,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
                hf_json=json.dumps(hf, sort_keys=True),
            )
        if model_type == "qwen2" and hf.get("use_sliding_window") and any(
            t == "sliding_attention" for t in hf.get("layer_types") or []
        ):
            raise CheckpointError("Qwen2 with sliding-window attention layers is not supported")
        rope = dict(hf.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in _SUPPORTED_ROPE:
            raise CheckpointError(f"rope_type {rope_type!r} is not supported; supported: {list(_SUPPORTED_ROPE)}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError("partial_rotary_factor != 1 is not supported")
        rope["rope_type"] = rope_type
        rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
        heads = hf["num_attention_heads"]
        kv_heads = hf.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise CheckpointError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        if not raw.get("head_dim") and hf["hidden_size"] % heads:
            raise CheckpointError(
                f"hidden_size={hf['hidden_size']} is not divisible by num_attention_heads={heads} "
                "and no head_dim is given"
            )
        qwen = model_type == "qwen2"
        return cls(
            family=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            norm_eps=float(hf["rms_norm_eps"]),
            hidden_act=hf["hidden_act"],
            qkv_bias=True if qwen else bool(hf.get("attention_bias", False)),
            out_bias=False if qwen else bool(hf.get("attention_bias", False)),
            mlp_bias=False if qwen else bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_json=json.dumps(rope, sort_keys=True),
            hf_json=json.dumps(hf, sort_keys=True),
        )


def rope_inverse_frequencies(config: LMConfig) -> np.ndarray:
    """RoPE inverse frequencies in float32, computed as transformers does for each supported `rope_type`."""
    rope = config.rope
    dim = config.head_dim
    base = float(rope["rope_theta"])
    inv_freq = (1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float32)
    kind = rope["rope_type"]
    if kind == "linear":
        inv_freq = inv_freq / np.float32(rope["factor"])
    elif kind == "llama3":
        factor = np.float32(rope["factor"])
        low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old_len = float(rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (np.float32(old_len) / wavelen - np.float32(low)) / np.float32(high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rotary_tables(
    inv_freq: np.ndarray, positions: Int[Array, " T"]
) -> tuple[Float[Array, "T Dh"], Float[Array, "T Dh"]]:
    """cos/sin tables for the given positions, once per call and shared by every layer."""
    freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _apply_rotary(x: Float[Array, "T H Dh"], cos: Float[Array, "T Dh"], sin: Float[Array, "T Dh"]
                  ) -> Float[Array, "T H Dh"]:
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


def _dense(layer: eqx.nn.Linear, x: Float[Array, "T i"]) -> Float[Array, "T o"]:
    # Weight on the left, contracting its minor (row-major) dimension: with one token this is XLA:CPU's
    # matrix-vector product on the weight as stored; `x @ W.T` made XLA copy every weight transposed on each
    # decoding step.
    y = (layer.weight @ x.T).T
    return y if layer.bias is None else y + layer.bias


class KVCache(eqx.Module):
    """Preallocated keys and values of one sequence, one `[S, Hkv, Dh]` array per layer."""

    keys: list[Float[Array, "S Hkv Dh"]]
    values: list[Float[Array, "S Hkv Dh"]]

    @property
    def length(self) -> int:
        return self.keys[0].shape[0]


class DecoderLayer(eqx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)); fused q/k/v and gate/up."""

    attn_norm: eqx.nn.LayerNorm | eqx.nn.RMSNorm
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    mlp_norm: eqx.nn.LayerNorm | eqx.nn.RMSNorm
    up: eqx.nn.Linear  # gated families: [gate; up] stacked on the output axis
    down: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    num_kv_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    act: str = eqx.field(static=True)
    gated: bool = eqx.field(static=True)

    def __call__(
        self,
        x: Float[Array, "T D"],
        mask: Bool[Array, "T S"],
        rotary: tuple[Float[Array, "T Dh"], Float[Array, "T Dh"]] | None,
        cache: tuple[Float[Array, "S Hkv Dh"], Float[Array, "S Hkv Dh"]] | None,
        cache_index: Int[Array, ""] | int,
    ) -> tuple[Float[Array, "T D"], tuple[Float[Array, "S Hkv Dh"], Float[Array, "S Hkv Dh"]] | None]:
        h, kv, dh = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = _dense(self.qkv, jax.vmap(self.attn_norm)(x))
        q = einops.rearrange(qkv[:, : h * dh], "t (h d) -> t h d", h=h)
        k = einops.rearrange(qkv[:, h * dh : (h + kv) * dh], "t (h d) -> t h d", h=kv)
        v = einops.rearrange(qkv[:, (h + kv) * dh :], "t (h d) -> t h d", h=kv)
        if rotary is not None:
            q, k = _apply_rotary(q, *rotary), _apply_rotary(k, *rotary)
        if cache is not None:
            start = (cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
        attended = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
        x = x + _dense(self.out, einops.rearrange(attended, "t h d -> t (h d)"))
        up = _dense(self.up, jax.vmap(self.mlp_norm)(x))
        act = get_activation(self.act)
        if self.gated:
            gate, up = jnp.split(up, 2, axis=-1)
            up = act(gate) * up
        else:
            up = act(up)
        return x + _dense(self.down, up), cache


class CausalLM(PretrainedModel):
    """A decoder-only LM loadable from HF GPT-2, Llama (SmolLM, TinyLlama, Llama 3) and Qwen2 checkpoints.

    Call on one token sequence; `jax.vmap` for batches. `attention_mask` marks real tokens (padding may sit
    on either side); positions default to `cumsum(mask) - 1`, so a left-padded row gives the same logits
    at its real tokens as the unpadded sequence.
    """

    embed_tokens: Float[Array, "V D"]
    position_embeddings: Float[Array, "P D"] | None  # GPT-2's learned positions; None with RoPE
    layers: list[DecoderLayer]
    final_norm: eqx.nn.LayerNorm | eqx.nn.RMSNorm
    lm_head: Float[Array, "V D"] | None  # None when tied to `embed_tokens`
    config: LMConfig = eqx.field(static=True)

    hf_aliases = (
        # GPT-2 base-model checkpoints (e.g. the original `gpt2` repo) have no `transformer.` prefix.
        (r"^(wte|wpe|h|ln_f)\.", r"transformer.\1."),
        # Bare LlamaModel / Qwen2Model checkpoints have no `model.` prefix.
        (r"^(embed_tokens|layers|norm)\.", r"model.\1."),
    )
    hf_ignored = (
        r"\.attn\.(bias|masked_bias)$",  # GPT-2's causal-mask buffers in old files
        r"rotary_emb\.inv_freq$",
        r"position_ids$",
        r"^lm_head\.weight$",  # present in some tied checkpoints
    )

    @classmethod
    def config_from_hf(cls, hf_config: Mapping[str, Any]) -> LMConfig:
        return LMConfig.from_hf(hf_config)

    @classmethod
    def from_config(cls, config: LMConfig | Mapping[str, Any] | Any, *, key: PRNGKeyArray) -> CausalLM:
        """A randomly initialised LM; `config` is an `LMConfig` or any supported HF config."""
        if not isinstance(config, LMConfig):
            config = LMConfig.from_hf(config)
        c = config
        d, dh = c.hidden_size, c.head_dim
        std = float(json.loads(c.hf_json).get("initializer_range", 0.02))
        keys = iter(jax.random.split(key, 4 + 4 * c.num_layers))

        def norm() -> eqx.nn.LayerNorm | eqx.nn.RMSNorm:
            if c.family == "gpt2":
                return eqx.nn.LayerNorm(d, eps=c.norm_eps)
            return eqx.nn.RMSNorm(d, eps=c.norm_eps, use_bias=False)

        up_size = 2 * c.intermediate_size if c.gated_mlp else c.intermediate_size
        layers = [
            DecoderLayer(
                attn_norm=norm(),
                qkv=linear(d, (c.num_heads + 2 * c.num_kv_heads) * dh, use_bias=c.qkv_bias, std=std, key=next(keys)),
                out=linear(c.num_heads * dh, d, use_bias=c.out_bias, std=std, key=next(keys)),
                mlp_norm=norm(),
                up=linear(d, up_size, use_bias=c.mlp_bias, std=std, key=next(keys)),
                down=linear(c.intermediate_size, d, use_bias=c.mlp_bias, std=std, key=next(keys)),
                num_heads=c.num_heads,
                num_kv_heads=c.num_kv_heads,
                head_dim=dh,
                act=c.hidden_act,
                gated=c.gated_mlp,
            )
            for _ in range(c.num_layers)
        ]
        return cls(
            embed_tokens=std * jax.random.normal(next(keys), (c.vocab_size, d)),
            position_embeddings=(
                std * jax.random.normal(next(keys), (c.max_position_embeddings, d)) if c.family == "gpt2" else None
            ),
            layers=layers,
            final_norm=norm(),
            lm_head=None if c.tie_word_embeddings else std * jax.random.normal(next(keys), (c.vocab_size, d)),
            config=c,
        )

    # --- forward -----------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def init_cache(self, length: int, dtype: Any = None) -> KVCache:
        """An empty cache for one sequence of up to `length` tokens."""
        c = self.config
        dtype = dtype or self.embed_tokens.dtype
        shape = (length, c.num_kv_heads, c.head_dim)
        return KVCache(
            keys=[jnp.zeros(shape, dtype) for _ in range(c.num_layers)],
            values=[jnp.zeros(shape, dtype) for _ in range(c.num_layers)],
        )

    def forward(
        self,
        input_ids: Int[Array, " T"],
        positions: Int[Array, " T"],
        mask: Bool[Array, "T S"],
        cache: KVCache | None = None,
        cache_index: Int[Array, ""] | int = 0,
    ) -> tuple[Float[Array, "T D"], KVCache | None]:
        """Final hidden states (after the last norm) for `input_ids` at `positions`.

        Without a cache, `mask` is `[T, T]` (query, key). With one, the new keys/values are written at
        `cache_index` and `mask` is `[T, S]` over the cache's slots.
        """
        c = self.config
        x = jnp.take(self.embed_tokens, input_ids, axis=0)
        rotary = None
        if self.position_embeddings is not None:
            x = x + jnp.take(self.position_embeddings, positions, axis=0)
        else:
            rotary = rotary_tables(rope_inverse_frequencies(c), positions)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, layer_cache = layer(x, mask, rotary, layer_cache, cache_index)
            if layer_cache is not None:
                new_keys.append(layer_cache[0])
                new_values.append(layer_cache[1])
        x = jax.vmap(self.final_norm)(x)
        return x, (None if cache is None else KVCache(new_keys, new_values))

    def logits(self, hidden: Float[Array, "T D"]) -> Float[Array, "T V"]:
        """Output-embedding projection (the tied input embeddings when there is no separate head)."""
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return (head @ hidden.T).T  # weight on the left, as in `_dense`

    def hidden_states(
        self,
        input_ids: Int[Array, " T"],
        *,
        attention_mask: Int[Array, " T"] | Bool[Array, " T"] | None = None,
        positions: Int[Array, " T"] | None = None,
    ) -> Float[Array, "T D"]:
        """Final hidden states (what HF calls `last_hidden_state` of the base model).

        Token ids must lie in [0, vocab_size) and GPT-2 positions in [0, n_positions): concrete inputs are
        checked, but under `jit` nothing can raise and out-of-range ids give NaN.
        """
        t = input_ids.shape[0]
        check_token_ids(input_ids, self.config.vocab_size)
        if self.position_embeddings is not None:
            limit = self.position_embeddings.shape[0]
            if positions is None and t > limit:  # static: raise even under jit
                raise ValueError(f"{t} tokens exceed the model's {limit} learned positions")
            if positions is not None:
                check_token_ids(positions, limit, name="positions", bound="learned positions")
        valid = jnp.ones((t,), bool) if attention_mask is None else attention_mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(valid)
        causal = jnp.tril(jnp.ones((t, t), bool))
        hidden, _ = self.forward(input_ids, positions, causal & valid[None, :])
        return hidden

    def __call__(
        self,
        input_ids: Int[Array, " T"],
        *,
        attention_mask: Int[Array, " T"] | Bool[Array, " T"] | None = None,
        positions: Int[Array, " T"] | None = None,
    ) -> Float[Array, "T V"]:
        return self.logits(self.hidden_states(input_ids, attention_mask=attention_mask, positions=positions))

    # --- HF mapping --------------------------------------------------------------------------------------
    def hf_key_map(self) -> dict[str, HFParam]:
        c = self.config
        m: dict[str, HFParam] = {}
        if c.family == "gpt2":
            t = "transformer."
            m["embed_tokens"] = same(t + "wte.weight")
            m["position_embeddings"] = same(t + "wpe.weight")
            for part in ("weight", "bias"):
                m[f"final_norm.{part}"] = same(t + f"ln_f.{part}")
            for i in range(c.num_layers):
                hf, me = f"{t}h.{i}.", f"layers.{i}."
                # GPT-2's Conv1D stores weights (in, out): transposed to Equinox's (out, in).
                m[me + "qkv.weight"] = transposed(hf + "attn.c_attn.weight")
                m[me + "out.weight"] = transposed(hf + "attn.c_proj.weight")
                m[me + "up.weight"] = transposed(hf + "mlp.c_fc.weight")
                m[me + "down.weight"] = transposed(hf + "mlp.c_proj.weight")
                m[me + "qkv.bias"] = same(hf + "attn.c_attn.bias")
                m[me + "out.bias"] = same(hf + "attn.c_proj.bias")
                m[me + "up.bias"] = same(hf + "mlp.c_fc.bias")
                m[me + "down.bias"] = same(hf + "mlp.c_proj.bias")
                for part in ("weight", "bias"):
                    m[me + f"attn_norm.{part}"] = same(hf + f"ln_1.{part}")
                    m[me + f"mlp_norm.{part}"] = same(hf + f"ln_2.{part}")
        else:
            b = "model."
            m["embed_tokens"] = same(b + "embed_tokens.weight")
            m["final_norm.weight"] = same(b + "norm.weight")
            qkv_sizes = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim)
            for i in range(c.num_layers):
                hf, me = f"{b}layers.{i}.", f"layers.{i}."
                att, mlp = hf + "self_attn.", hf + "mlp."
                for part in ("weight", "bias"):
                    m[me + f"qkv.{part}"] = fused([att + f"{n}_proj.{part}" for n in "qkv"], sizes=qkv_sizes)
                    m[me + f"out.{part}"] = same(att + f"o_proj.{part}")
                    m[me + f"up.{part}"] = fused([mlp + f"gate_proj.{part}", mlp + f"up_proj.{part}"])
                    m[me + f"down.{part}"] = same(mlp + f"down_proj.{part}")
                m[me + "attn_norm.weight"] = same(hf + "input_layernorm.weight")
                m[me + "mlp_norm.weight"] = same(hf + "post_attention_layernorm.weight")
        m["lm_head"] = same("lm_head.weight")
        # Only rules for leaves that exist: a checkpoint with biases the config rules out is then reported.
        present = named_arrays(self)
        return {name: rule for name, rule in m.items() if name in present}

    def hf_config(self) -> dict[str, Any]:
        config = json.loads(self.config.hf_json)
        config["architectures"] = [_ARCHITECTURES[self.config.family]]
        config["model_type"] = self.config.family
        return config


def positions_from_mask(mask: Bool[Array, " T"] | Int[Array, " T"]) -> Int[Array, " T"]:
    """Position ids that skip padding: `cumsum(mask) - 1`, clipped at 0 (left pads all get position 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32)) - 1, 0)


__all__ = ["CausalLM", "KVCache", "LMConfig", "positions_from_mask", "rope_inverse_frequencies"]
