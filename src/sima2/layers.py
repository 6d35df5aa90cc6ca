"""Small building blocks shared by the ported architectures: activations by HF name, attention,
linear layers with HF-style initialisation, and torch-exact bicubic resampling."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray


def _quick_gelu(x: Array) -> Array:
    return x * jax.nn.sigmoid(1.702 * x)


# Hugging Face `hidden_act` names -> functions with the same numerics.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    check_activation(name, key="activation")
    return ACTIVATIONS[name]


def check_activation(name: str, *, key: str = "hidden_act") -> None:
    """Raise `ValueError` naming the config `key` if `name` is not a supported activation (configs call it
    when they are built, so a typo fails there rather than on the first forward pass)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{key}={name!r} is not supported; supported: {sorted(ACTIVATIONS)}")


def check_token_ids(ids: Any, limit: int, *, name: str = "input_ids", bound: str = "vocab_size") -> None:
    """Raise `ValueError` on ids outside [0, limit) when `ids` are concrete. Traced ids (under jit / vmap)
    are not checked: that would need a host callback, and `jnp.take` then fills NaN instead."""
    if isinstance(ids, jax.core.Tracer):
        return
    ids = np.asarray(ids)
    bad = (ids < 0) | (ids >= limit)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} has {int(ids[where])} at position {where[0] if len(where) == 1 else where}, "
            f"outside [0, {limit}) ({bound}={limit})"
        )


def linear(in_features: int, out_features: int, *, use_bias: bool = True, std: float = 0.02,
           key: PRNGKeyArray) -> eqx.nn.Linear:
    """An `eqx.nn.Linear` initialised like HF transformers (normal(0, std) weights, zero bias)."""
    # Only the layer's structure is built (no arrays): its own uniform initialisation, replaced here anyway,
    # would compile one more random program per weight shape when a model is built outside jit.
    layer = eqx.filter_eval_shape(eqx.nn.Linear, in_features, out_features, use_bias=use_bias, key=key)
    layer = eqx.tree_at(lambda m: m.weight, layer, _normal(key, (out_features, in_features), std))
    if use_bias:
        layer = eqx.tree_at(lambda m: m.bias, layer, jnp.asarray(np.zeros((out_features,), np.float32)))
    return layer


@functools.partial(jax.jit, static_argnums=(1, 2))
def _normal(key: PRNGKeyArray, shape: tuple[int, ...], std: float) -> Float[Array, "..."]:
    """`std * normal(key, shape)` as one program per shape (eagerly it is two: the draw and the scaling). The
    barrier keeps XLA from folding `std` into the draw's own constants, so the weights are the eager ones bit
    for bit."""
    return std * jax.lax.optimization_barrier(jax.random.normal(key, shape))


def attention(
    q: Float[Array, "Tq H Dh"],
    k: Float[Array, "Tk Hkv Dh"],
    v: Float[Array, "Tk Hkv Dh"],
    *,
    mask: Bool[Array, "Tq Tk"] | None = None,
) -> Float[Array, "Tq H Dh"]:
    """Scaled dot-product attention; grouped-query when `Hkv` divides `H`.

    Softmax runs in float32 whatever the input dtype, as transformers does.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads != kv_heads:
        k = jnp.repeat(k, heads // kv_heads, axis=1)
        v = jnp.repeat(v, heads // kv_heads, axis=1)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = jnp.einsum("qhd,khd->hqk", q, k).astype(jnp.float32) * scale
    if mask is not None:
        scores = jnp.where(mask[None], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("hqk,khd->qhd", weights, v)


def _torch_cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic-convolution weights for taps at offsets -1, 0, 1, 2 (torch's bicubic, A = -0.75)."""

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`(out, in)` matrix equal to `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
    along one axis when called with an explicit output `size` (borders clamped as torch does)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _torch_cubic_weights(src - base)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for tap in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), idx), weights[:, tap])
    return matrix


def resize_bicubic_torch(grid: Float[Array, "h w d"], out_h: int, out_w: int) -> Float[Array, "oh ow d"]:
    """Resize a `(h, w, d)` grid exactly like torch's bicubic interpolate (align_corners=False)."""
    h, w, _ = grid.shape
    if (h, w) == (out_h, out_w):
        return grid
    rows = jnp.asarray(torch_bicubic_matrix(h, out_h), dtype=jnp.float32)
    cols = jnp.asarray(torch_bicubic_matrix(w, out_w), dtype=jnp.float32)
    out = jnp.einsum("oh,hwd->owd", rows, grid.astype(jnp.float32), precision="highest")
    out = jnp.einsum("pw,owd->opd", cols, out, precision="highest")
    return out.astype(grid.dtype)
