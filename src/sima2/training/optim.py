"""The optimiser shared by every stage, and the trainable/frozen split of a model.

AdamW with linear warmup and cosine decay (`optax.warmup_cosine_decay_schedule`), after global-norm
gradient clipping. Small models are optimised as one flat vector: their many small arrays would otherwise
cost more in per-operation overhead than the arithmetic itself. Frozen parts of a model are described by a
filter spec (a PyTree of bools shaped like the model, as `eqx.partition` takes it); only floating-point
arrays marked True are trained.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from sima2.contract import AbstractAgent
from sima2.training.config import OptimConfig

# Up to this many trainable elements (of one dtype), the optimiser works on one concatenated vector: a few
# fused operations per step instead of several per array. Larger models skip the extra copy.
FLAT_OPTIMIZER_MAX_SIZE = 1 << 20


def make_schedule(config: OptimConfig) -> optax.Schedule:
    """Warmup from 0 to `lr` over `warmup_steps`, then cosine to `final_lr` at `decay_steps`."""
    if config.decay_steps <= config.warmup_steps:
        raise ValueError(
            f"decay_steps ({config.decay_steps}) must exceed warmup_steps ({config.warmup_steps})"
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=config.decay_steps,
        end_value=config.final_lr,
    )


def _optimised_flat(tree: PyTree, max_size: int = FLAT_OPTIMIZER_MAX_SIZE) -> bool:
    leaves = jax.tree.leaves(tree)
    return sum(leaf.size for leaf in leaves) <= max_size and len({leaf.dtype for leaf in leaves}) == 1


def global_norm(grads: PyTree) -> Float[Array, ""]:
    """The L2 norm of all of `grads`. Where `make_optimizer` works on one flat vector, the norm is taken over
    that same concatenation, so XLA computes it once for the metric and the optimiser's clipping."""
    if _optimised_flat(grads):
        return optax.tree.norm(jnp.concatenate([jnp.reshape(g, [-1]) for g in jax.tree.leaves(grads)]))
    return optax.tree.norm(grads)


def flatten_small(
    inner: optax.GradientTransformation, max_size: int = FLAT_OPTIMIZER_MAX_SIZE
) -> optax.GradientTransformation:
    """`inner` on the parameters raveled into one vector when they are few (at most `max_size` elements)
    and share one dtype; otherwise `inner` unchanged. Decided from static shapes, so init and update agree."""
    flat = optax.flatten(inner)

    def pick(tree: PyTree) -> optax.GradientTransformation:
        return flat if _optimised_flat(tree, max_size) else inner

    def init(params: PyTree) -> Any:
        return pick(params).init(params)

    def update(updates: PyTree, state: Any, params: PyTree | None = None) -> tuple[PyTree, Any]:
        return pick(updates).update(updates, state, params)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW on the warmup + cosine schedule (flat for small models)."""
    adamw = optax.adamw(
        learning_rate=make_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    return flatten_small(optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw))


def trainable_spec(model: PyTree, filter_spec: PyTree | None = None) -> PyTree:
    """A bool PyTree marking the arrays to train: floating-point arrays allowed by `filter_spec`.

    `filter_spec` may be None (the model's own `trainable_filter()` when it has one, e.g. an `Agent`'s frozen
    pretrained encoder or LoRA-only language model; else every float array), a bool PyTree shaped like
    `model`, or a PyTree of callables, as accepted by `eqx.partition`.
    """
    if filter_spec is None:
        if not isinstance(model, AbstractAgent):
            return jax.tree.map(eqx.is_inexact_array, model)
        filter_spec = model.trainable_filter()
    selected, _ = eqx.partition(model, filter_spec)
    return jax.tree.map(
        lambda leaf, chosen: eqx.is_inexact_array(leaf) and chosen is not None,
        model,
        selected,
        is_leaf=lambda x: x is None,
    )


def split_trainable(model: PyTree, spec: PyTree) -> tuple[PyTree, PyTree]:
    """`(trainable, rest)` so that `eqx.combine(trainable, rest)` rebuilds `model`."""
    return eqx.partition(model, spec)


def init_opt_state(optimizer: optax.GradientTransformation, model: PyTree, spec: PyTree) -> Any:
    """Optimiser state for the trainable part of `model` only."""
    trainable, _ = split_trainable(model, spec)
    return optimizer.init(trainable)
