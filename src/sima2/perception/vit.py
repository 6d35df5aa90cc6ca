"""`ViTEncoder`: the Vision Transformer towers of HF `ViTModel`, `CLIPVisionModel` and `SiglipVisionModel`.

One Equinox module serves the three families; they differ only in details that the config records: a class
token or none, a norm before the blocks (CLIP), where the final norm applies, the pooling head, the
activation. `encoder(pixels)` returns what HF calls `last_hidden_state`, for any image size (position
embeddings are resampled exactly as HF's `interpolate_pos_encoding=True` does).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from sima2.interop.checkpoint import CheckpointError
from sima2.interop.mapping import HFParam, fused, reshaped, same
from sima2.interop.pretrained import PretrainedModel, hf_config_to_dict, with_hf_defaults
from sima2.layers import attention, get_activation, linear, resize_bicubic_torch

Family = Literal["vit", "clip", "siglip"]

_FAMILY_OF_MODEL_TYPE: dict[str, Family] = {
    "vit": "vit",
    "clip_vision_model": "clip",
    "clip": "clip",
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Static description of a ViT tower, read from (and written back to) an HF `config.json`."""

    family: Family
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    use_pooler: bool = False  # ViT: tanh(dense(CLS)); SigLIP: attention-pooling head
    hf_json: str = "{}"  # the full HF config, so save_pretrained writes back exactly what was read

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid**2 + (1 if self.family != "siglip" else 0)

    @classmethod
    def from_hf(cls, config: Any) -> VisionConfig:
        raw = hf_config_to_dict(config)
        model_type = raw.get("model_type")
        if model_type not in _FAMILY_OF_MODEL_TYPE:
            raise CheckpointError(
                f"ViTEncoder serves model_type vit, clip(_vision_model) and siglip(_vision_model); got {model_type!r}"
            )
        if model_type in ("clip", "siglip"):  # a full two-tower model: take its vision tower
            vision = dict(raw.get("vision_config") or {})
            vision["model_type"] = f"{model_type}_vision_model"
            raw = vision
        hf = with_hf_defaults(raw)
        family = _FAMILY_OF_MODEL_TYPE[hf["model_type"]]
        image_size = hf["image_size"]
        if isinstance(image_size, (list, tuple)):
            if image_size[0] != image_size[1]:
                raise CheckpointError(f"non-square pretraining image_size {image_size} is not supported")
            image_size = image_size[0]
        if family == "vit":
            use_pooler = bool(hf.get("add_pooling_layer", True))
        elif family == "siglip":
            use_pooler = bool(hf.get("vision_use_head", True))
        else:
            use_pooler = False
        return cls(
            family=family,
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            image_size=int(image_size),
            patch_size=int(hf["patch_size"]),
            num_channels=hf.get("num_channels", 3),
            layer_norm_eps=float(hf["layer_norm_eps"]),
            hidden_act=hf["hidden_act"],
            qkv_bias=bool(hf.get("qkv_bias", True)),
            use_pooler=use_pooler,
            hf_json=json.dumps(hf, sort_keys=True),
        )


class Attention(eqx.Module):
    """Multi-head self-attention with a fused q/k/v projection (one GEMM instead of three)."""

    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)

    def __call__(self, x: Float[Array, "T D"]) -> Float[Array, "T D"]:
        qkv = jax.vmap(self.qkv)(x)
        q, k, v = einops.rearrange(qkv, "t (three h d) -> three t h d", three=3, h=self.num_heads)
        out = attention(q, k, v)
        return jax.vmap(self.out)(einops.rearrange(out, "t h d -> t (h d)"))


class Block(eqx.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    norm1: eqx.nn.LayerNorm
    attn: Attention
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    act: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "T D"]) -> Float[Array, "T D"]:
        x = x + self.attn(jax.vmap(self.norm1)(x))
        h = jax.vmap(self.fc1)(jax.vmap(self.norm2)(x))
        return x + jax.vmap(self.fc2)(get_activation(self.act)(h))


class SiglipHead(eqx.Module):
    """SigLIP's multihead attention pooling: a learned probe attends over the tokens."""

    probe: Float[Array, " D"]
    in_proj: eqx.nn.Linear
    out_proj: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    act: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "T D"]) -> Float[Array, " D"]:
        dim = x.shape[-1]
        w, b = self.in_proj.weight, self.in_proj.bias
        q = self.probe[None] @ w[:dim].T + b[:dim]
        k = x @ w[dim : 2 * dim].T + b[dim : 2 * dim]
        v = x @ w[2 * dim :].T + b[2 * dim :]
        split = lambda t: einops.rearrange(t, "t (h d) -> t h d", h=self.num_heads)
        pooled = einops.rearrange(attention(split(q), split(k), split(v)), "t h d -> t (h d)")
        pooled = jax.vmap(self.out_proj)(pooled)[0]
        return pooled + self.fc2(get_activation(self.act)(self.fc1(self.norm(pooled))))


class ViTEncoder(PretrainedModel):
    """Vision Transformer image encoder loadable from HF ViT, CLIP-vision and SigLIP-vision checkpoints.

    Call on one CHW float image (already normalised, see `sima2.perception.preprocess`); `jax.vmap` for
    batches. Output: `last_hidden_state`, `(tokens, hidden_size)`; `pool(hidden)` gives the family's
    pooled embedding.
    """

    patch_weight: Float[Array, "D C p p"]
    patch_bias: Float[Array, " D"] | None
    cls_token: Float[Array, " D"] | None
    position_embeddings: Float[Array, "N D"]
    pre_norm: eqx.nn.LayerNorm | None
    blocks: list[Block]
    final_norm: eqx.nn.LayerNorm
    pooler: eqx.nn.Linear | None
    head: SiglipHead | None
    config: VisionConfig = eqx.field(static=True)

    hf_aliases = (
        # transformers 5 names ViT layers `layers.N.attention.q_proj` in memory but still writes the names
        # on the right to disk (as transformers 4 and Hub checkpoints do); accept both, write the latter.
        # Anchored on `encoder.layer.N` so CLIP/SigLIP names (`encoder.layers.N.mlp.fc1`) are untouched.
        (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
        (r"^(encoder\.layer\.\d+)\.attention\.q_proj\.", r"\1.attention.attention.query."),
        (r"^(encoder\.layer\.\d+)\.attention\.k_proj\.", r"\1.attention.attention.key."),
        (r"^(encoder\.layer\.\d+)\.attention\.v_proj\.", r"\1.attention.attention.value."),
        (r"^(encoder\.layer\.\d+)\.attention\.o_proj\.", r"\1.attention.output.dense."),
        (r"^(encoder\.layer\.\d+)\.mlp\.fc1\.", r"\1.intermediate.dense."),
        (r"^(encoder\.layer\.\d+)\.mlp\.fc2\.", r"\1.output.dense."),
    )
    hf_ignored = (r"position_ids$",)

    @classmethod
    def config_from_hf(cls, hf_config: Mapping[str, Any]) -> VisionConfig:
        return VisionConfig.from_hf(hf_config)

    @classmethod
    def config_for_checkpoint(cls, hf_config: Mapping[str, Any], checkpoint_keys: list[str]) -> VisionConfig:
        # Task checkpoints (e.g. ViTForImageClassification) are saved without the pooler: follow the file.
        config = VisionConfig.from_hf(hf_config)
        if config.family == "clip":
            return config
        marker = "pooler.dense.weight" if config.family == "vit" else "head.probe"
        has_pooler = any(k.endswith(marker) for k in checkpoint_keys)
        return dataclasses.replace(config, use_pooler=has_pooler)

    @classmethod
    def from_config(cls, config: VisionConfig | Mapping[str, Any] | Any, *, key: PRNGKeyArray) -> ViTEncoder:
        """A randomly initialised encoder; `config` is a `VisionConfig` or any HF vision config."""
        if not isinstance(config, VisionConfig):
            config = VisionConfig.from_hf(config)
        c = config
        d, p = c.hidden_size, c.patch_size
        keys = iter(jax.random.split(key, 8 + 4 * c.num_layers))
        ln = lambda: eqx.nn.LayerNorm(d, eps=c.layer_norm_eps)
        blocks = [
            Block(
                norm1=ln(),
                attn=Attention(
                    qkv=linear(d, 3 * d, use_bias=c.qkv_bias, key=next(keys)),
                    out=linear(d, d, key=next(keys)),
                    num_heads=c.num_heads,
                ),
                norm2=ln(),
                fc1=linear(d, c.intermediate_size, key=next(keys)),
                fc2=linear(c.intermediate_size, d, key=next(keys)),
                act=c.hidden_act,
            )
            for _ in range(c.num_layers)
        ]
        head = None
        if c.family == "siglip" and c.use_pooler:
            head = SiglipHead(
                probe=0.02 * jax.random.normal(next(keys), (d,)),
                in_proj=linear(d, 3 * d, key=next(keys)),
                out_proj=linear(d, d, key=next(keys)),
                norm=ln(),
                fc1=linear(d, c.intermediate_size, key=next(keys)),
                fc2=linear(c.intermediate_size, d, key=next(keys)),
                num_heads=c.num_heads,
                act=c.hidden_act,
            )
        return cls(
            patch_weight=0.02 * jax.random.normal(next(keys), (d, c.num_channels, p, p)),
            patch_bias=None if c.family == "clip" else jnp.zeros((d,)),
            cls_token=None if c.family == "siglip" else 0.02 * jax.random.normal(next(keys), (d,)),
            position_embeddings=0.02 * jax.random.normal(next(keys), (c.num_positions, d)),
            pre_norm=ln() if c.family == "clip" else None,
            blocks=blocks,
            final_norm=ln(),
            pooler=linear(d, d, key=next(keys)) if (c.family == "vit" and c.use_pooler) else None,
            head=head,
            config=c,
        )

    # --- forward -----------------------------------------------------------------------------------------
    def embed(self, pixels: Float[Array, "C H W"]) -> Float[Array, "T D"]:
        """Patch embedding + class token + (resampled) position embeddings."""
        c = self.config
        if pixels.shape[0] != c.num_channels:
            raise ValueError(f"expected {c.num_channels} channels (CHW), got image of shape {pixels.shape}")
        p = c.patch_size
        gh, gw = pixels.shape[1] // p, pixels.shape[2] // p
        if gh == 0 or gw == 0:
            raise ValueError(f"image {pixels.shape[1:]} is smaller than one {p}x{p} patch")
        # A stride-p convolution is a matmul over flattened patches (remainder rows/cols dropped, as in torch).
        patches = einops.rearrange(
            pixels[:, : gh * p, : gw * p], "c (h p1) (w p2) -> (h w) (c p1 p2)", p1=p, p2=p
        )
        x = patches.astype(self.patch_weight.dtype) @ self.patch_weight.reshape(c.hidden_size, -1).T
        if self.patch_bias is not None:
            x = x + self.patch_bias
        pos = self.position_embeddings
        has_cls = self.cls_token is not None
        patch_pos = pos[1:] if has_cls else pos
        if (gh, gw) != (c.grid, c.grid):
            grid = patch_pos.reshape(c.grid, c.grid, -1)
            patch_pos = resize_bicubic_torch(grid, gh, gw).reshape(gh * gw, -1)
        x = x + patch_pos
        if has_cls:
            x = jnp.concatenate([(self.cls_token + pos[0])[None], x], axis=0)
        return x

    def __call__(self, pixels: Float[Array, "C H W"]) -> Float[Array, "tokens dim"]:
        x = self.embed(pixels)
        if self.pre_norm is not None:
            x = jax.vmap(self.pre_norm)(x)
        for block in self.blocks:
            x = block(x)
        if self.config.family == "clip":  # CLIP's post_layernorm only touches the pooled token
            return x
        return jax.vmap(self.final_norm)(x)

    def pool(self, hidden: Float[Array, "tokens dim"]) -> Float[Array, " dim"]:
        """The family's pooled output from `last_hidden_state` (HF `pooler_output`; CLS token if no pooler)."""
        if self.config.family == "clip":
            return self.final_norm(hidden[0])
        if self.head is not None:
            return self.head(hidden)
        if self.pooler is not None:
            return jnp.tanh(self.pooler(hidden[0]))
        return hidden[0] if self.cls_token is not None else hidden.mean(axis=0)

    # --- HF mapping --------------------------------------------------------------------------------------
    def hf_key_map(self) -> dict[str, HFParam]:
        c = self.config
        d = c.hidden_size
        m: dict[str, HFParam] = {}
        if c.family == "vit":
            e = "embeddings."
            m["patch_weight"] = same(e + "patch_embeddings.projection.weight")
            m["patch_bias"] = same(e + "patch_embeddings.projection.bias")
            m["cls_token"] = reshaped(e + "cls_token", (1, 1, d), (d,))
            n = c.num_positions
            m["position_embeddings"] = reshaped(e + "position_embeddings", (1, n, d), (n, d))
            for i in range(c.num_layers):
                hf, me = f"encoder.layer.{i}.", f"blocks.{i}."
                att = hf + "attention.attention."
                for part in ("weight", "bias"):
                    m[me + f"attn.qkv.{part}"] = fused([att + f"{n}.{part}" for n in ("query", "key", "value")])
                    m[me + f"attn.out.{part}"] = same(hf + f"attention.output.dense.{part}")
                    m[me + f"norm1.{part}"] = same(hf + f"layernorm_before.{part}")
                    m[me + f"norm2.{part}"] = same(hf + f"layernorm_after.{part}")
                    m[me + f"fc1.{part}"] = same(hf + f"intermediate.dense.{part}")
                    m[me + f"fc2.{part}"] = same(hf + f"output.dense.{part}")
            for part in ("weight", "bias"):
                m[f"final_norm.{part}"] = same(f"layernorm.{part}")
                m[f"pooler.{part}"] = same(f"pooler.dense.{part}")
            return m
        e = "embeddings."
        m["patch_weight"] = same(e + "patch_embedding.weight")
        m["patch_bias"] = same(e + "patch_embedding.bias")
        m["cls_token"] = same(e + "class_embedding")
        m["position_embeddings"] = same(e + "position_embedding.weight")
        for part in ("weight", "bias"):
            m[f"pre_norm.{part}"] = same(f"pre_layrnorm.{part}")
            m[f"final_norm.{part}"] = same(f"post_layernorm.{part}")
        for i in range(c.num_layers):
            hf, me = f"encoder.layers.{i}.", f"blocks.{i}."
            att = hf + "self_attn."
            for part in ("weight", "bias"):
                m[me + f"attn.qkv.{part}"] = fused([att + f"{n}_proj.{part}" for n in "qkv"])
                m[me + f"attn.out.{part}"] = same(att + f"out_proj.{part}")
                m[me + f"norm1.{part}"] = same(hf + f"layer_norm1.{part}")
                m[me + f"norm2.{part}"] = same(hf + f"layer_norm2.{part}")
                m[me + f"fc1.{part}"] = same(hf + f"mlp.fc1.{part}")
                m[me + f"fc2.{part}"] = same(hf + f"mlp.fc2.{part}")
        m["head.probe"] = reshaped("head.probe", (1, 1, d), (d,))
        for part in ("weight", "bias"):
            m[f"head.in_proj.{part}"] = same(f"head.attention.in_proj_{part}")
            m[f"head.out_proj.{part}"] = same(f"head.attention.out_proj.{part}")
            m[f"head.norm.{part}"] = same(f"head.layernorm.{part}")
            m[f"head.fc1.{part}"] = same(f"head.mlp.fc1.{part}")
            m[f"head.fc2.{part}"] = same(f"head.mlp.fc2.{part}")
        return m

    def hf_config(self) -> dict[str, Any]:
        config = json.loads(self.config.hf_json)
        # Whether the module has a pooler follows the checkpoint it was loaded from, not the file's config.
        if self.config.family == "vit":
            config["add_pooling_layer"] = self.config.use_pooler
        elif self.config.family == "siglip":
            config["vision_use_head"] = self.config.use_pooler
        architectures = {"vit": "ViTModel", "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}
        config["architectures"] = [architectures[self.config.family]]
        return config


def num_tokens(config: VisionConfig, height: int, width: int) -> int:
    """Tokens `ViTEncoder` returns for an image of this size."""
    return (height // config.patch_size) * (width // config.patch_size) + (config.family != "siglip")


__all__ = ["ViTEncoder", "VisionConfig", "num_tokens"]
