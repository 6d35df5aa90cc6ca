"""Behaviour cloning: cross-entropy on the factored expert actions, plus an optional planner loss.

The loss is `-log_prob(expert action)` from `agent.evaluate`, which for a factored policy is the sum of the
per-factor cross-entropies. Batches are either single rows (leading axis `B`; every row starts from the
initial carry) or demonstration windows (leading axes `(B, T)` plus a `first` flag per step, see
`DemonstrationBatches(sequence_length=T)`): the agent then runs over each window with its memory threaded
through time and reset at episode starts, exactly as it acts in the world, so a recurrent agent's memory
is trained on the states it will see. An optional `plan_loss(model, batch)` (e.g. next-token loss of the
planner on the subgoal plan) is added with weight `bc.plan_loss_weight` in the same jitted step, and, for
batches with subgoal labels (`sima2.training.subgoals`), the subgoal-done head's loss. Images
are augmented (random crop, brightness and contrast jitter, pixel noise) inside the step from the state's key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from sima2.perception.preprocess import augment_images
from sima2.planning.tokenizer import DEFAULT_SEPARATOR
from sima2.policy.plans import plan_writer, writer_ids
from sima2.training.config import TrainConfig
from sima2.training.loop import TrainState, guard_step
from sima2.training.optim import init_opt_state, make_optimizer, split_trainable, trainable_spec
from sima2.training.recurrent import evaluate_windows, instruction_features_of, observation_features
from sima2.training.subgoals import subgoal_done_loss

PlanLoss = Callable[[Any, dict[str, Any]], Float[Array, ""]]


def bc_loss(
    model: Any,
    batch: dict[str, Any],
    plan_loss: PlanLoss | None = None,
    plan_loss_weight: float = 1.0,
    subgoal_done_weight: float = 1.0,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Mean action cross-entropy over the batch (+ weighted plan loss, + the subgoal-done head's loss when
    the batch carries `subgoal_done` labels); returns (loss, terms)."""
    instruction = batch.get("instruction_features")  # precomputed for a frozen language model
    subgoal = batch.get("subgoal_features")  # likewise, for the subgoals of `obs["subgoal"]`
    if "first" in batch:  # windows (B, T): run the memory through time
        log_prob, entropy, _, carries = evaluate_windows(model, batch, batch["action"], with_carries=True)
    else:
        carry = model.initial_carry()
        if instruction is None:
            instruction = instruction_features_of(model, batch["obs"]["instruction"])

        def one(obs: PyTree, instruction: PyTree, subgoal: PyTree, action: Array) -> tuple[Array, Array, PyTree]:
            features = observation_features(model, obs, instruction, subgoal)
            log_prob, entropy, _, new_carry = model.evaluate_features(features, carry, action)
            return log_prob, entropy, new_carry

        log_prob, entropy, carries = jax.vmap(one)(batch["obs"], instruction, subgoal, batch["action"])
    action_loss = -log_prob.mean()
    terms = {"action_loss": action_loss, "entropy": entropy.mean()}
    loss = action_loss
    if plan_loss is not None:
        terms["plan_loss"] = plan_loss(model, batch)
        loss = loss + plan_loss_weight * terms["plan_loss"]
    if "subgoal_done" in batch:
        terms["subgoal_done_loss"], terms["subgoal_done_accuracy"] = subgoal_done_loss(
            model, carries, batch["subgoal_done"]
        )
        loss = loss + subgoal_done_weight * terms["subgoal_done_loss"]
    return loss, terms


def make_bc(
    agent: Any,
    config: TrainConfig,
    *,
    filter_spec: PyTree | None = None,
    plan_loss: PlanLoss | None = None,
) -> tuple[Callable[[PRNGKeyArray], TrainState], Callable[[TrainState, Any], tuple[TrainState, dict]]]:
    """`(init_fn, step_fn)` for behaviour cloning; `step_fn(state, batch)` is pure and guarded."""
    optimizer: optax.GradientTransformation = make_optimizer(config.optim)
    spec = trainable_spec(agent, filter_spec)
    bc = config.bc

    def init_fn(key: PRNGKeyArray) -> TrainState:
        return TrainState.create(agent, init_opt_state(optimizer, agent, spec), key)

    def step_fn(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict]:
        key, augment_key = jax.random.split(state.key)
        obs = dict(batch["obs"])
        images = obs["image"]
        flat = images.reshape(-1, *images.shape[-3:])  # rows or (window, time) pairs
        obs["image"] = augment_images(
            augment_key, flat, crop_padding=bc.crop_padding, noise_std=bc.noise_std, brightness=bc.brightness,
            contrast=bc.contrast,
        ).reshape(images.shape)
        batch = dict(batch, obs=obs)
        trainable, rest = split_trainable(state.model, spec)

        def loss_fn(trainable: PyTree) -> tuple[Array, dict]:
            return bc_loss(
                eqx.combine(trainable, rest), batch, plan_loss, bc.plan_loss_weight, bc.subgoal_done_weight
            )

        (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = eqx.apply_updates(trainable, updates)
        new_state = TrainState(eqx.combine(trainable, rest), opt_state, key, state.step + 1, state.guard, None)
        return new_state, dict(terms, loss=loss, grad_norm=optax.global_norm(grads))

    return init_fn, guard_step(step_fn, config.guard)


def plan_supervision(
    tokenizer: Any, dataset: Any, *, separator: str = DEFAULT_SEPARATOR
) -> tuple[Callable[[dict, dict], dict], PlanLoss]:
    """`(transform, plan_loss)` that teach a `LanguagePlanner` the demonstrations' subgoal plans.

    `transform` (for `DemonstrationBatches`) makes each row's prompt from its instruction ids as the env
    wrote them (`<eos>` appended: the prompt a plan is written from at run time, `sima2.policy.plans`) and
    its target from the plan tokenised with `tokenizer` (the tokenizer of those ids), in the layout of
    `encode_plan_ids`, padded to the longest in `dataset` so shapes stay static; `plan_loss(model, batch)`
    is the mean next-token loss of the agent's plan writer (`sima2.policy.plans.plan_writer`: its
    `plan_writer`, else its planner) on those plans (one per window for sequence batches: the plan of the
    episode the window starts with).
    """
    from sima2.planning.tokenizer import encode_plan_ids, eos_id, pad_id, plan_target_ids

    pad, eos = pad_id(tokenizer), eos_id(tokenizer)

    def prompt_of(ids: Any) -> tuple[int, ...]:
        return (*(int(i) for i in ids if i != pad), eos)

    unique = {(prompt_of(ids), tuple(plan))
              for ids, plan in zip(dataset["instruction_ids"], dataset["plan"], strict=True) if plan}
    if not unique:
        raise ValueError("the demonstrations carry no plans to learn")
    targets = {plan: plan_target_ids(tokenizer, plan, separator) for plan in {plan for _, plan in unique}}
    prompt_length = max(len(prompt) for prompt, _ in unique)
    target_length = max(map(len, targets.values()))
    cache: dict[tuple[tuple[int, ...], tuple[str, ...]], dict[str, np.ndarray]] = {}

    def encode(prompt: tuple[int, ...], plan: tuple[str, ...]) -> dict[str, np.ndarray]:
        if (prompt, plan) not in cache:
            if plan not in targets:
                targets[plan] = plan_target_ids(tokenizer, plan, separator)
            arrays = encode_plan_ids([prompt], [targets[plan]], pad, prompt_length=prompt_length,
                                     target_length=target_length)
            cache[(prompt, plan)] = {name: value[0] for name, value in arrays.items()}
        return cache[(prompt, plan)]

    def transform(rows: dict[str, list], batch: dict[str, Any]) -> dict[str, Any]:
        pairs = [encode(prompt_of(ids), tuple(plan))
                 for ids, plan in zip(rows["instruction_ids"], rows["plan"], strict=True)]
        batch["plan"] = {name: np.stack([p[name] for p in pairs]) for name in pairs[0]}
        return batch

    def plan_loss(model: Any, batch: dict[str, Any]) -> Float[Array, ""]:
        plan = batch["plan"]
        if plan["target_ids"].ndim == 3:  # windows: the plan of the episode each window starts with
            plan = jax.tree.map(lambda x: x[:, 0], plan)
        writer = plan_writer(model)
        losses = jax.vmap(lambda p, pm, t, tm: writer.plan_loss(p, t, tm, prompt_mask=pm))(
            writer_ids(model, plan["prompt_ids"]), plan["prompt_mask"], writer_ids(model, plan["target_ids"]),
            plan["target_mask"],
        )
        return losses.mean()

    return transform, plan_loss


def frozen_instruction_features(
    agent: Any, dataset: Any, instruction_length: int, *, chunk: int = 256
) -> Callable[[dict, dict], dict]:
    """A `DemonstrationBatches` transform that adds each row's `agent.instruction_features` as
    `batch["instruction_features"]`, computed once per distinct instruction of `dataset` before training,
    and likewise `batch["subgoal_features"]` for batches with `obs["subgoal"]` (`sima2.training.subgoals`:
    every subgoal text of the dataset's plans, and the empty subgoal) when the language model embeds them.

    Only for an agent whose language model is frozen: its features never change, so behaviour cloning then
    spends nothing on the language model (a pretrained encoder would otherwise cost more than the rest of
    a step). `instruction_length` must be the batches' (`DemonstrationBatches.instruction_length`).
    """
    from sima2.planning.tokenizer import subgoal_ids
    from sima2.policy.plans import instruction_tokenizer

    config = agent.config
    pad = config.instruction_pad_id
    encode = eqx.filter_jit(lambda model, ids: jax.vmap(model.instruction_features)(ids))

    def table_of(rows: set[tuple[int, ...]], width: int) -> tuple[dict[tuple[int, ...], int], Any]:
        """Features of each distinct row of ids (padded to `width`), and the row -> table index map."""
        distinct = sorted(rows)
        padded = -(-len(distinct) // chunk) * chunk
        table_ids = np.full((padded, width), pad, np.int32)
        for row, ids in enumerate(distinct):
            table_ids[row, : len(ids)] = ids
        parts = [jax.device_get(encode(agent, table_ids[i : i + chunk])) for i in range(0, padded, chunk)]
        table = jax.tree.map(lambda *xs: np.concatenate(xs)[: len(distinct)], *parts)
        return {ids: row for row, ids in enumerate(distinct)}, table

    tables = {"instruction": table_of({tuple(ids[:instruction_length]) for ids in dataset["instruction_ids"]},
                                      instruction_length)}
    # Subgoals embedded by the frozen language model too (an agent with a plan writer embeds them with it,
    # trained, in the step).
    if agent.plan_writer is None and "plan" in dataset.column_names and len(dataset) and any(dataset["plan"][:1]):
        import pyarrow.compute as pc

        width = config.subgoal_length or instruction_length
        texts = pc.unique(pc.list_flatten(dataset.data.column("plan"))).to_pylist()
        tokenizer = instruction_tokenizer(agent)
        rows = {tuple(int(i) for i in subgoal_ids(tokenizer, text, width, pad)) for text in texts}
        tables["subgoal"] = table_of(rows | {(pad,) * width}, width)

    def lookup(name: str, ids: Any) -> Any:
        index, table = tables[name]
        rows_index = np.array([index[tuple(int(i) for i in row)] for row in ids])
        return jax.tree.map(lambda x: x[rows_index], table)

    def transform(rows: dict[str, list], batch: dict[str, Any]) -> dict[str, Any]:
        instructions = [ids[:instruction_length] for ids in rows["instruction_ids"]]
        batch["instruction_features"] = lookup("instruction", instructions)
        if "subgoal" in batch["obs"] and "subgoal" in tables:
            batch["subgoal_features"] = lookup("subgoal", batch["obs"]["subgoal"])
        return batch

    return transform
