"""Subgoal supervision for behaviour cloning: the policy learns to act on the expert's current subgoal and
its subgoal-done head learns where the expert's subgoals end.

Each demonstration row carries its expert plan, the index of the subgoal current in its state and whether
its step completed that subgoal (`sima2.training.data.FEATURES`). `subgoal_supervision` turns them into
`obs["subgoal"]` (the subgoal's text in the ids the agent reads instructions in) and `batch["subgoal_done"]`;
`bc_loss` then adds `subgoal_done_loss` on the memory each step produced. The rows of every
`without_plan_every`-th episode get an empty subgoal, so the same agent also acts from its instruction
alone (the planner ablation compares the two on the same weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PyTree

from sima2.planning.tokenizer import subgoal_ids

SUBGOAL_COLUMNS = ("plan", "subgoal_index", "subgoal_done")


def has_subgoal_labels(dataset: Any) -> bool:
    """Whether `dataset` carries plans with subgoal indices and boundaries (datasets recorded before they
    existed, or from envs without plans, do not)."""
    if any(name not in dataset.column_names for name in SUBGOAL_COLUMNS):
        return False
    return any(dataset["plan"][:1]) and any(dataset["subgoal_done"])


def subgoal_supervision(
    dataset: Any,
    *,
    tokenizer: Any,
    pad_id: int = 0,
    subgoal_length: int | None = None,
    without_plan_every: int = 4,
) -> Callable[[dict[str, list], dict[str, Any]], dict[str, Any]]:
    """A `DemonstrationBatches` transform adding `obs["subgoal"]` and `batch["subgoal_done"]` from the rows'
    plans; `tokenizer` (an HF tokenizer) and `pad_id` those of the agent's instruction ids
    (`sima2.policy.plans.instruction_tokenizer`), subgoals written as a plan writer writes them
    (`subgoal_ids`) in `subgoal_length` ids (`AgentConfig.subgoal_length`; None: the batch's instruction
    length). Episodes whose id is a multiple of `without_plan_every` (0: none) get an empty subgoal
    (all padding) and so teach acting from the instruction alone."""
    if not has_subgoal_labels(dataset):
        raise ValueError(
            f"the demonstrations carry no subgoal labels (columns {SUBGOAL_COLUMNS} with a plan and at least "
            "one completed subgoal); record them with sima2.training.record_demonstrations"
        )
    if without_plan_every < 0:
        raise ValueError(f"without_plan_every must be >= 0, got {without_plan_every}")
    cache: dict[tuple[str, int], np.ndarray] = {}

    def ids(text: str, length: int) -> np.ndarray:
        if (text, length) not in cache:
            cache[(text, length)] = subgoal_ids(tokenizer, text, length, pad_id)
        return cache[(text, length)]

    def transform(rows: dict[str, list], batch: dict[str, Any]) -> dict[str, Any]:
        length = subgoal_length or batch["obs"]["instruction"].shape[-1]
        subgoals = np.full((len(rows["plan"]), length), pad_id, np.int32)
        for row, (plan, index, episode) in enumerate(
            zip(rows["plan"], rows["subgoal_index"], rows["episode_id"], strict=True)
        ):
            if plan and not (without_plan_every and episode % without_plan_every == 0):
                subgoals[row] = ids(plan[min(int(index), len(plan) - 1)], length)
        batch["obs"] = dict(batch["obs"], subgoal=subgoals)
        batch["subgoal_done"] = np.asarray(rows["subgoal_done"], bool)
        return batch

    return transform


def subgoal_done_loss(
    model: Any, carries: PyTree, labels: Bool[Array, "*B"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Binary cross-entropy of the subgoal-done head on the memory after each step (`carries`, leading axes
    as `labels`) against whether that step completed its subgoal; returns (loss, accuracy at 0.5)."""
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[labels.ndim :]), carries)
    logits = jax.vmap(model.policy.subgoal_done_logit)(flat)
    target = labels.reshape(-1).astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(logits, target).mean()
    accuracy = ((logits > 0) == (target > 0.5)).mean()
    return loss, accuracy


__all__ = ["SUBGOAL_COLUMNS", "has_subgoal_labels", "subgoal_done_loss", "subgoal_supervision"]
