"""`generate`: batched autoregressive decoding of a `CausalLM` as ONE jitted program.

Prefill runs the (left-padded) prompts once and fills a preallocated KV cache; a `lax.while_loop` then
decodes one token per step for the whole batch, stopping early only when every row has emitted an
end-of-sequence token. Compiled programs are cached per (model structure, shapes, static options).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from sima2.layers import check_token_ids
from sima2.planning.causal_lm import CausalLM, positions_from_mask

# Python, numpy or 0-d JAX integers: all are coerced to `int` before tracing.
Integer = int | np.integer | Int[Array, ""]


def _filter_logits(
    logits: Float[Array, "B V"], temperature: Float[Array, ""], top_k: int | None, top_p: float | None
) -> Float[Array, "B V"]:
    """Temperature, then top-k, then nucleus (top-p) filtering, in the order HF's warpers apply them."""
    logits = logits / temperature
    masked = jnp.finfo(logits.dtype).min
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, masked, logits)
    if top_p is not None and top_p < 1.0:
        order = jnp.argsort(logits, axis=-1)  # ascending, as HF's TopPLogitsWarper
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted = remove_sorted.at[:, -1].set(False)  # always keep the most likely token
        remove = jnp.zeros_like(remove_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
        logits = jnp.where(remove, masked, logits)
    return logits


def _choose(
    logits: Float[Array, "B V"], key: PRNGKeyArray, temperature: Float[Array, ""], greedy: bool,
    top_k: int | None, top_p: float | None,
) -> Int[Array, " B"]:
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, _filter_logits(logits, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


@eqx.filter_jit
def _generate(
    lm: CausalLM,
    prompt_ids: Int[Array, "B T"],
    attention_mask: Bool[Array, "B T"],
    key: PRNGKeyArray,
    temperature: Float[Array, ""],
    max_new_tokens: int,
    greedy: bool,
    top_k: int | None,
    top_p: float | None,
    eos_ids: tuple[int, ...],
    pad_token_id: int,
) -> Int[Array, "B S"]:
    batch, prompt_len = prompt_ids.shape
    total = prompt_len + max_new_tokens
    cache = jax.vmap(lambda _: lm.init_cache(total))(jnp.arange(batch))
    positions = jax.vmap(positions_from_mask)(attention_mask)
    # Slots past the prompt are valid keys once written; causality keeps queries off unwritten ones.
    kv_valid = jnp.concatenate([attention_mask, jnp.ones((batch, max_new_tokens), bool)], axis=1)
    slots = jnp.arange(total)

    def prefill(ids, pos, valid, cache):
        mask = (slots[None, :] <= jnp.arange(prompt_len)[:, None]) & valid[None, :]
        hidden, cache = lm.forward(ids, pos, mask, cache, 0)
        return lm.logits(hidden[-1:])[0], cache

    def decode(token, pos, valid, cache, index):
        mask = (slots <= index)[None, :] & valid[None, :]
        hidden, cache = lm.forward(token[None], pos[None], mask, cache, index)
        return lm.logits(hidden)[0], cache

    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    logits, cache = jax.vmap(prefill)(prompt_ids, positions, kv_valid, cache)
    key, sub = jax.random.split(key)
    token = _choose(logits, sub, temperature, greedy, top_k, top_p)
    out = jnp.full((batch, total), pad_token_id, jnp.int32).at[:, :prompt_len].set(prompt_ids.astype(jnp.int32))
    out = out.at[:, prompt_len].set(token)
    done = jnp.isin(token, eos)
    position = positions[:, -1] + 1

    def cond(carry):
        step, _, _, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, token, position, cache, out, done, key = carry
        index = prompt_len + step - 1  # the slot of `token`, fed back in
        logits, cache = jax.vmap(decode, in_axes=(0, 0, 0, 0, None))(token, position, kv_valid, cache, index)
        key, sub = jax.random.split(key)
        new = _choose(logits, sub, temperature, greedy, top_k, top_p)
        new = jnp.where(done, pad_token_id, new)
        out = jax.lax.dynamic_update_slice(out, new[:, None], (0, index + 1))
        return step + 1, new, position + 1, cache, out, done | jnp.isin(new, eos), key

    carry = (jnp.asarray(1), token, position, cache, out, done, key)
    return jax.lax.while_loop(cond, body, carry)[4]


def _as_int(name: str, value: Any) -> int:
    """`value` as a Python int; floats, strings and traced values are refused (they are static options)."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{name} must be a concrete integer, got a traced value")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None


def _eos_ids(eos_token_id: Any) -> tuple[int, ...]:
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, (str, bytes)):  # else "12" would read as the ids (1, 2)
        raise TypeError(f"eos_token_id must be an integer or a sequence of integers, got {eos_token_id!r}")
    if np.ndim(eos_token_id) == 0:
        return (_as_int("eos_token_id", eos_token_id),)
    return tuple(_as_int("eos_token_id", e) for e in eos_token_id)


def _as_matrix(name: str, value: Any) -> Array:
    if isinstance(value, jax.Array):
        return value
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an integer array [batch, length], got {type(value).__name__}: {err}") from None


def generate(
    lm: CausalLM,
    prompt_ids: Int[Array, "B T"] | Int[np.ndarray, "B T"] | Sequence[Sequence[int]],
    *,
    max_new_tokens: Integer,
    key: PRNGKeyArray | None = None,
    temperature: float = 0.0,
    top_k: Integer | None = None,
    top_p: float | None = None,
    eos_token_id: Integer | Sequence[Integer] | Int[Array, " E"] | None = None,
    pad_token_id: Integer = 0,
    attention_mask: Int[Array, "B T"] | Bool[Array, "B T"] | Int[np.ndarray, "B T"] | Bool[np.ndarray, "B T"]
    | Sequence[Sequence[int]] | None = None,
) -> Int[Array, "B S"]:
    """Continue each prompt by `max_new_tokens` tokens; returns `[B, T + max_new_tokens]` (prompts included).

    `temperature=0` decodes greedily (token-identical to HF `generate(do_sample=False)`); otherwise tokens
    are sampled (with optional `top_k` / `top_p`) using `key`. Prompts of different lengths are
    left-padded, with `attention_mask` marking real tokens. A row that emits an `eos_token_id` is filled
    with `pad_token_id` afterwards; `eos_token_id=None` never stops early.

    Prompt ids must lie in [0, vocab_size) and padding must be on the left: concrete inputs are checked
    here, but traced ones (generate called under `jit`) cannot be, and bad ids then give garbage tokens.
    """
    if not isinstance(lm, CausalLM):
        raise TypeError(f"generate needs a CausalLM, got {type(lm).__name__}")
    prompt_ids = _as_matrix("prompt_ids", prompt_ids)
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be [batch, length>0], got shape {prompt_ids.shape}")
    max_new_tokens = _as_int("max_new_tokens", max_new_tokens)
    top_k = None if top_k is None else _as_int("top_k", top_k)
    pad_token_id = _as_int("pad_token_id", pad_token_id)
    eos_ids = _eos_ids(eos_token_id)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:  # also catches NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    greedy = temperature == 0.0
    if not greedy and key is None:
        raise ValueError("sampling (temperature > 0) needs a PRNG key")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    total = prompt_ids.shape[1] + max_new_tokens
    if lm.position_embeddings is not None and total > lm.position_embeddings.shape[0]:
        raise ValueError(f"{total} tokens exceed the model's {lm.position_embeddings.shape[0]} learned positions")
    check_token_ids(prompt_ids, lm.config.vocab_size, name="prompt_ids")
    if attention_mask is None:
        attention_mask = jnp.ones(prompt_ids.shape, bool)
    else:
        attention_mask = _as_matrix("attention_mask", attention_mask)
        if attention_mask.shape != prompt_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != prompt_ids shape {prompt_ids.shape}")
        if not isinstance(attention_mask, jax.core.Tracer):
            valid = np.asarray(attention_mask).astype(bool)
            right = valid[:, :-1] & ~valid[:, 1:]  # a real token followed by padding
            if right.any():
                row, col = (int(i) for i in np.argwhere(right)[0])
                raise ValueError(
                    f"attention_mask row {row} has padding at position {col + 1} after a real token: "
                    "generation needs left padding (pad at the start of each row)"
                )
    prompt_ids = jnp.asarray(prompt_ids, jnp.int32)
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    return _generate(
        lm,
        prompt_ids,
        attention_mask,
        key if key is not None else jax.random.key(0),
        jnp.asarray(max(temperature, 1e-6), jnp.float32),
        max_new_tokens,
        greedy,
        top_k,
        top_p,
        eos_ids,
        pad_token_id,
    )


__all__ = ["generate"]
