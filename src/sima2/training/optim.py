"""The optimiser shared by every stage, and the trainable/frozen split of a model.

AdamW with linear warmup and cosine decay (`optax.warmup_cosine_decay_schedule`), after global-norm
gradient clipping. Frozen parts of a model are described by a filter spec (a PyTree of bools shaped like
the model, as `eqx.partition` takes it); only floating-point arrays marked True are trained.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import optax
from jaxtyping import PyTree

from sima2.training.config import OptimConfig


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


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW on the warmup + cosine schedule."""
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(
            learning_rate=make_schedule(config),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
        ),
    )


def trainable_spec(model: PyTree, filter_spec: PyTree | None = None) -> PyTree:
    """A bool PyTree marking the arrays to train: floating-point arrays allowed by `filter_spec`.

    `filter_spec` may be None (the model's own `trainable_filter()` when it has one, e.g. an `Agent`'s frozen
    pretrained encoder or LoRA-only language model; else every float array), a bool PyTree shaped like
    `model`, or a PyTree of callables, as accepted by `eqx.partition`.
    """
    if filter_spec is None:
        own_filter = getattr(model, "trainable_filter", None)
        if not callable(own_filter):
            return jax.tree.map(eqx.is_inexact_array, model)
        filter_spec = own_filter()
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
