"""Counter-based random streams (`_mix32`, `_Draws`) for world generation.

Kept apart so that the exact draw order, on which every generated world depends, lives in one small file.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float32, Int32, UInt32


def _mix32(x: UInt32[Array, "*s"]) -> UInt32[Array, "*s"]:
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class _Draws:
    """Counter-based random draws from one 32-bit seed, for world generation.

    Word i of the n-th stream is mix(mix(seed ^ n * golden) + i): elementwise integer arithmetic that XLA
    fuses, instead of one threefry call per draw (each a loop on CPU, and generation makes dozens). Each
    method takes the next stream, so the draws of a world depend only on the seed and the code's order.
    """

    def __init__(self, seed: UInt32[Array, ""]):
        self.seed = seed
        self.stream = 0

    def words(self, shape: tuple[int, ...] = ()) -> UInt32[Array, "..."]:
        self.stream += 1
        base = _mix32(self.seed ^ jnp.uint32((self.stream * 0x9E3779B9) & 0xFFFFFFFF))
        count = math.prod(shape)
        return _mix32(base + jnp.arange(count, dtype=jnp.uint32)).reshape(shape)

    def uniform(self, shape: tuple[int, ...] = ()) -> Float32[Array, "..."]:
        """Uniform in [0, 1) with 24 bits of resolution."""
        return (self.words(shape) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)

    def integers(self, low, high, shape: tuple[int, ...] = ()) -> Int32[Array, "..."]:
        """Uniform integers in [low, high) (bounds may be traced)."""
        count = jnp.asarray(high, jnp.int32) - low
        draw = jnp.floor(self.uniform(shape) * count.astype(jnp.float32)).astype(jnp.int32)
        return (low + jnp.minimum(draw, count - 1)).astype(jnp.int32)

    def choice(self, allowed: Bool[Array, "..."]) -> Int32[Array, ""]:
        """A uniformly random flat index among the True entries of `allowed` (which must have one)."""
        scores = jnp.where(allowed, (self.words(allowed.shape) >> 1).astype(jnp.int32), -1)
        return jnp.argmax(scores.reshape(-1)).astype(jnp.int32)

    def permutation(self, n: int) -> Int32[Array, " {n}"]:
        return jnp.argsort(self.words((n,))).astype(jnp.int32)
