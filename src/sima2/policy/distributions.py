"""Factorised categorical distribution over the world's multi-discrete action (key x look x duration).

The policy emits one flat logit vector, factor after factor: `sum(nvec)` long for independent factors, or
with each factor conditioned on the previous one a table per factor (see `FactorisedCategorical`). An
optional action mask is per value, `sum(nvec)` long (True = allowed). Masked logits become a large negative
number (not `-inf`, so that `p * log p` stays 0 instead of NaN) and are never sampled: Gumbel noise on
float32 is below 17.

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


def num_logits(nvec: Sequence[int], conditional: bool = False) -> int:
    """Length of the flat logit vector: `sum(nvec)`, or with `conditional` factors
    `nvec[0] + sum(nvec[i - 1] * nvec[i])` (a table per factor, one row per value of the previous factor)."""
    nvec = _check_nvec(nvec)
    if not conditional:
        return sum(nvec)
    return nvec[0] + sum(a * b for a, b in zip(nvec[:-1], nvec[1:], strict=True))


class FactorisedCategorical(eqx.Module):
    """A categorical per action factor, each either independent of the others or conditioned on the
    value of the factor before it (a chain: key -> look -> duration).

    Conditioning matters when the factors of a good action go together: a keyboard + mouse expert turns
    *or* walks, so independent factors put mass on "walk while turning" and "stand still" combinations it
    never uses. With `conditional=True` the policy emits, for each factor after the first, a table of
    logits with one row per value of the previous factor. Every operation stays exact: log-probabilities,
    sampling (ancestral), entropy (through the chain's marginals) and the mode (the most likely joint
    action, by max-product over the chain).
    """

    # Normalised log-probabilities per factor: `[n_0]`, then `[n_i]` (independent) or `[n_{i-1}, n_i]`
    # (row = the previous factor's value).
    log_probs: list[Float[Array, "..."]]

    @classmethod
    def from_logits(
        cls,
        logits: Float[Array, " N"],
        nvec: Sequence[int],
        mask: Bool[Array, " M"] | None = None,
        *,
        conditional: bool = False,
    ) -> FactorisedCategorical:
        """`logits` are flat, `num_logits(nvec, conditional)` long, factor after factor (conditional tables
        row-major). `mask` is always per value, `sum(nvec)` long: a masked value is masked in every row."""
        nvec = _check_nvec(nvec)
        expected = num_logits(nvec, conditional)
        if logits.shape != (expected,):
            what = "num_logits(nvec, conditional=True)" if conditional else "sum(nvec)"
            raise ValueError(f"expected flat logits of size {what}={expected}, got shape {logits.shape}")
        if mask is not None and mask.shape != (sum(nvec),):
            raise ValueError(f"action_mask shape {mask.shape} must be (sum(nvec),) = ({sum(nvec)},)")
        parts = []
        start = mask_start = 0
        for i, n in enumerate(nvec):
            rows = nvec[i - 1] if conditional and i > 0 else 1
            part = logits[start : start + rows * n].astype(jnp.float32).reshape(rows, n)
            if mask is not None:
                allowed = mask[mask_start : mask_start + n]
                allowed = jnp.where(allowed.any(), allowed, True)  # all-False factor: unmasked (see module doc)
                part = jnp.where(allowed, part, MASKED_LOGIT)
            part = jax.nn.log_softmax(part, axis=-1)
            parts.append(part if conditional and i > 0 else part[0])
            start += rows * n
            mask_start += n
        return cls(parts)

    @property
    def nvec(self) -> tuple[int, ...]:
        return tuple(p.shape[-1] for p in self.log_probs)

    def _factor(self, i: int, previous: Int[Array, "*K"] | None) -> Float[Array, "*K n"]:
        """Factor i's log-probabilities given the previous factor's value(s)."""
        lp = self.log_probs[i]
        return lp if lp.ndim == 1 else lp[previous]

    def log_prob(self, action: Int[Array, "*K F"]) -> Float[Array, "*K"]:
        """Log-probability of an action, or of each of a stack of candidate actions (leading axes)."""
        if action.shape[-1:] != (len(self.log_probs),):
            raise ValueError(f"expected actions of {len(self.log_probs)} factor indices, got shape {action.shape}")
        total = 0.0
        for i, lp in enumerate(self.log_probs):
            value = action[..., i]
            total = total + (lp[value] if lp.ndim == 1 else lp[action[..., i - 1], value])
        return total

    def sample(self, key: PRNGKeyArray) -> Int[Array, " F"]:
        keys = jax.random.split(key, len(self.log_probs))
        values: list[Array] = []
        for i, k in enumerate(keys):
            lp = self._factor(i, values[-1] if values else None)
            values.append(jax.random.categorical(k, lp).astype(jnp.int32))
        return jnp.stack(values)

    def marginals(self) -> list[Float[Array, " _"]]:
        """Each factor's marginal probabilities (for an independent factor, its own distribution)."""
        out = [jnp.exp(self.log_probs[0])]
        for lp in self.log_probs[1:]:
            out.append(jnp.exp(lp) if lp.ndim == 1 else out[-1] @ jnp.exp(lp))
        return out

    def marginal_log_probs(self) -> list[Float[Array, " _"]]:
        """Each factor's marginal log-probabilities (masked values at `MASKED_LOGIT`)."""
        return [
            lp if lp.ndim == 1 else jnp.maximum(jnp.log(p), MASKED_LOGIT)
            for lp, p in zip(self.log_probs, self.marginals(), strict=True)
        ]

    def entropy(self) -> Float[Array, ""]:
        """Exact joint entropy: H(a_0) + sum_i E_{a_(i-1)}[H(a_i | a_(i-1))]."""
        marginals = self.marginals()
        total = 0.0
        for i, lp in enumerate(self.log_probs):
            conditional = -jnp.sum(jnp.exp(lp) * lp, axis=-1)  # [] or [n_(i-1)]
            total = total + (conditional if lp.ndim == 1 else marginals[i - 1] @ conditional)
        return total

    def mode(self) -> Int[Array, " F"]:
        """The most likely joint action (max-product over the chain; per-factor argmax when independent)."""
        # best[v]: the best log-probability of factors 0..i with factor i = v; back[i][v]: factor i-1's value.
        best = self.log_probs[0]
        back = []
        for lp in self.log_probs[1:]:
            if lp.ndim == 1:
                back.append(jnp.full(lp.shape, jnp.argmax(best), jnp.int32))
                best = jnp.max(best) + lp
            else:
                scores = best[:, None] + lp  # [previous value, value]
                back.append(jnp.argmax(scores, axis=0).astype(jnp.int32))
                best = jnp.max(scores, axis=0)
        values = [jnp.argmax(best).astype(jnp.int32)]
        for pointers in reversed(back):
            values.append(pointers[values[-1]])
        return jnp.stack(values[::-1])

    def probs(self) -> list[Float[Array, " _"]]:
        """Per-factor marginal probabilities (see `marginals`)."""
        return self.marginals()


__all__ = ["MASKED_LOGIT", "FactorisedCategorical", "check_action_mask", "num_logits"]
