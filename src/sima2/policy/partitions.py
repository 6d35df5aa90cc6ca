"""Which of an agent's arrays a stage trains: `trainable_filter` (the policy and plan writer always, vision
and language model unless frozen) and `critic_filter` (the value head alone, for a critic warm-up). Both are
PyTrees of bools for `eqx.partition` or, as labels, for `optax.multi_transform`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree


def trainable_filter(agent: Any, *, freeze_vision: bool, freeze_planner: bool) -> PyTree[bool]:
    """True for every array to train: the policy and the plan writer always; vision unless frozen; the
    planner per its own `trainable_filter()` (e.g. LoRA adapters only for a large LM) unless frozen."""
    trainable = jax.tree.map(eqx.is_inexact_array, agent)
    if freeze_vision:
        trainable = eqx.tree_at(lambda a: a.vision, trainable, jax.tree.map(lambda _: False, agent.vision))
    if freeze_planner:
        planner_filter = jax.tree.map(lambda _: False, agent.planner)
    else:
        planner_filter = agent.planner.trainable_filter()
    return eqx.tree_at(lambda a: a.planner, trainable, planner_filter)


def critic_filter(agent: Any) -> PyTree[bool]:
    """True for the arrays only the value estimate uses (the critic head)."""
    head = lambda a: (a.policy.critic_hidden, a.policy.critic_out)  # noqa: E731
    return eqx.tree_at(head, jax.tree.map(lambda _: False, agent), jax.tree.map(eqx.is_inexact_array, head(agent)))


__all__ = ["critic_filter", "trainable_filter"]
