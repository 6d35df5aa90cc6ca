"""Factorised categorical distribution over the world's multi-discrete action (key x look x duration).

The policy emits one flat logit vector, `sum(nvec)` long, factor after factor; an optional action mask has
the same layout (True = allowed). Masked logits become a large negative number (not `-inf`, so that
`p * log p` stays 0 instead of NaN) and are never sampled: Gumbel noise on float32 is below 17.

A factor whose mask is all False cannot be honoured by any action. Inside `jit` nothing can raise, so such a
factor falls back deterministically to its *unmasked* distribution; call `check_action_mask` on the host to
turn that situation into a `ValueError` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

# Far below any real logit, but finite: exp() underflows to exactly 0 and 0 * MASKED_LOGIT == 0.
MASKED_LOGIT = -1e9


def _check_nvec(nvec: Sequence[int]) -> tuple[int, ...]:
    nvec = tuple(int(n) for n in nvec)
    if not nvec or any(n < 1 for n in nvec):
        raise ValueError(f"action nvec must be a non-empty sequence of positive sizes, got {nvec}")
    return nvec


def check_action_mask(mask: ArrayLike, nvec: Sequence[int]) -> None:
    """Host-side check: raise `ValueError` if `mask` has the wrong length or leaves a factor no action.

    Works on one mask `(sum(nvec),)` or a batch `(..., sum(nvec))` of concrete (not traced) arrays.
    """
    nvec = _check_nvec(nvec)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"action_mask must be boolean, got dtype {mask.dtype}")
    if mask.shape[-1:] != (sum(nvec),):
        raise ValueError(f"action_mask must end in an axis of size sum(nvec)={sum(nvec)}, got shape {mask.shape}")
    offsets = np.cumsum((0,) + nvec)
    for factor, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        if not mask[..., start:stop].any(axis=-1).all():
            raise ValueError(
                f"action_mask allows no value of action factor {factor} (values {start}..{stop - 1} of the "
                "flat mask) for at least one example; every factor needs at least one allowed value"
            )


class FactorisedCategorical(eqx.Module):
    """Independent categoricals, one per action factor, from (optionally masked) logits."""

    log_probs: list[Float[Array, " _"]]  # normalised log-probabilities, one vector per factor

    @classmethod
    def from_logits(
        cls,
        logits: Float[Array, " N"],
        nvec: Sequence[int],
        mask: Bool[Array, " N"] | None = None,
    ) -> FactorisedCategorical:
        """`logits` and `mask` are flat, `sum(nvec)` long, factor after factor."""
        nvec = _check_nvec(nvec)
        if logits.shape != (sum(nvec),):
            raise ValueError(f"expected flat logits of size sum(nvec)={sum(nvec)}, got shape {logits.shape}")
        if mask is not None and mask.shape != logits.shape:
            raise ValueError(f"action_mask shape {mask.shape} does not match the flat logits {logits.shape}")
        parts = []
        start = 0
        for n in nvec:
            part = logits[start : start + n].astype(jnp.float32)
            if mask is not None:
                allowed = mask[start : start + n]
                allowed = jnp.where(allowed.any(), allowed, True)  # all-False factor: unmasked (see module doc)
                part = jnp.where(allowed, part, MASKED_LOGIT)
            parts.append(jax.nn.log_softmax(part))
            start += n
        return cls(parts)

    @property
    def nvec(self) -> tuple[int, ...]:
        return tuple(p.shape[0] for p in self.log_probs)

    def sample(self, key: PRNGKeyArray) -> Int[Array, " F"]:
        keys = jax.random.split(key, len(self.log_probs))
        return jnp.stack(
            [jax.random.categorical(k, lp).astype(jnp.int32) for k, lp in zip(keys, self.log_probs, strict=True)]
        )

    def mode(self) -> Int[Array, " F"]:
        return jnp.stack([jnp.argmax(lp).astype(jnp.int32) for lp in self.log_probs])

    def log_prob(self, action: Int[Array, "*K F"]) -> Float[Array, "*K"]:
        """Log-probability of an action, or of each of a stack of candidate actions (leading axes)."""
        if action.shape[-1:] != (len(self.log_probs),):
            raise ValueError(f"expected actions of {len(self.log_probs)} factor indices, got shape {action.shape}")
        return sum(lp[action[..., i]] for i, lp in enumerate(self.log_probs))

    def entropy(self) -> Float[Array, ""]:
        return sum(-jnp.sum(jnp.exp(lp) * lp) for lp in self.log_probs)

    def probs(self) -> list[Float[Array, " _"]]:
        return [jnp.exp(lp) for lp in self.log_probs]


__all__ = ["MASKED_LOGIT", "FactorisedCategorical", "check_action_mask"]
