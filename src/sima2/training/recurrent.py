"""Running an agent over time-major sequences with per-episode memory resets.

Shared by behaviour cloning on demonstration windows and by PPO's recurrent replay, so that a recurrent
agent is trained exactly as it acts: its carry threads through time and goes back to
`agent.initial_carry()` wherever a step is the first of an episode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int, PyTree


def initial_carries(agent: Any, num: int) -> PyTree:
    """`agent.initial_carry()` broadcast to a leading axis of `num` worlds."""
    carry = agent.initial_carry()
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), carry)


def reset_where(first: Bool[Array, " E"], initial: PyTree, carry: PyTree) -> PyTree:
    """Per-world carry reset: `initial` where `first`, else `carry` (leading world axis)."""

    def pick(init: Array, current: Array) -> Array:
        mask = first.reshape(first.shape + (1,) * (current.ndim - first.ndim))
        return jnp.where(mask, init, current)

    return jax.tree.map(pick, initial, carry)


def is_memoryless(agent: Any) -> bool:
    """True when the agent's carry is empty, so time steps can be evaluated independently."""
    return all(jnp.size(leaf) == 0 for leaf in jax.tree.leaves(agent.initial_carry()))


def _over_time_and_worlds(fn: Any, *trees: PyTree) -> PyTree:
    """`fn` on every (time, world) pair of time-major `trees` as one flat vmapped batch; outputs keep the
    leading `(T, E)` axes."""
    time_worlds = jax.tree.leaves(trees[0])[0].shape[:2]
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), trees)
    return jax.tree.map(lambda x: x.reshape(*time_worlds, *x.shape[1:]), jax.vmap(fn)(*flat))


def observation_features(model: Any, obs: PyTree, instruction: PyTree, subgoal: PyTree) -> PyTree:
    """`model.observation_features(obs, instruction)`, with the precomputed `subgoal` features when there are
    any (the contract's agents take only the instruction's; a sima2 `Agent` also a subgoal's)."""
    if subgoal is None:
        return model.observation_features(obs, instruction)
    return model.observation_features(obs, instruction, subgoal)


def per_distinct_row(fn: Callable[[Array], PyTree], rows: Int[Array, "N L"], budget: int) -> PyTree:
    """`jax.vmap(fn)(rows)`, computing `fn` once per distinct row when there are at most `budget` of them
    (else for every row). Instructions repeat over the steps of an episode, so a batch of steps holds few
    distinct ones; differentiable either way."""
    num = rows.shape[0]
    if budget >= num:
        return jax.vmap(fn)(rows)
    order = jnp.lexsort(rows.T[::-1])  # rows in lexicographic order: equal rows side by side
    ordered = rows[order]
    starts = jnp.concatenate([jnp.ones((1,), bool), jnp.any(ordered[1:] != ordered[:-1], axis=1)])
    group_of_ordered = jnp.cumsum(starts) - 1
    group = jnp.zeros((num,), jnp.int32).at[order].set(group_of_ordered.astype(jnp.int32))
    first_row = jnp.zeros((budget,), jnp.int32).at[jnp.where(starts, group_of_ordered, budget)].set(
        order.astype(jnp.int32), mode="drop"
    )

    def distinct() -> PyTree:
        return jax.tree.map(lambda x: x[group], jax.vmap(fn)(rows[first_row]))

    return jax.lax.cond(group_of_ordered[-1] < budget, distinct, lambda: jax.vmap(fn)(rows))


def instruction_features_of(model: Any, instructions: Int[Array, "*B L"]) -> PyTree:
    """`model.instruction_features` of a batch of instructions (any leading axes), once per distinct one."""
    lead = instructions.shape[:-1]
    flat = instructions.reshape(-1, instructions.shape[-1])
    features = per_distinct_row(model.instruction_features, flat, max(1, flat.shape[0] // 4))
    return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), features)


def evaluate_sequences(
    model: Any,
    obs: PyTree,
    action: Int[Array, "T E *A"],
    first: Bool[Array, "T E"],
    start_carry: PyTree,
    instruction: PyTree | None = None,
    *,
    subgoal: PyTree | None = None,
    with_carries: bool = False,
) -> tuple[Array, ...]:
    """`(log_prob(action), entropy, value)` of every step, running `model.evaluate` over time per world;
    `with_carries`: also the carry after each step (`(T, E, ...)`, e.g. for a head that reads the memory).

    `action` may stack K candidate actions per step (`(T, E, *K, F)`); their log-probs come back as `*K`.

    `obs`, `action` and `first` are time-major (leading axes `(T, E)`); `start_carry` has a leading world
    axis and is the carry before step 0 (it is reset where `first[0]`). `instruction`: the steps'
    `model.instruction_features` when known (e.g. precomputed for a frozen encoder); by default they are
    computed once per distinct instruction of the batch. `subgoal`: the features of `obs["subgoal"]` when
    precomputed likewise.
    """
    initial = model.initial_carry()
    if instruction is None and jax.tree.leaves(jax.eval_shape(model.instruction_features, obs["instruction"][0, 0])):
        instruction = instruction_features_of(model, obs["instruction"])
    if is_memoryless(model):
        # No carry to thread: evaluate all (time, world) pairs as one flat batch. A single vmap keeps the
        # agent's matmuls plain 2-D (nested vmaps make XLA CPU transpose around every layer).
        def one_step(o: PyTree, i: PyTree, s: PyTree, a: Array) -> tuple[Array, ...]:
            features = observation_features(model, o, i, s)
            log_prob, entropy, value, carry = model.evaluate_features(features, initial, a)
            return (log_prob, entropy, value, carry) if with_carries else (log_prob, entropy, value)

        return _over_time_and_worlds(one_step, obs, instruction, subgoal, action)

    # Perception does not depend on the memory (the contract splits `observation_features` from
    # `evaluate_features`): encode every (time, world) step in one flat batch and replay only the recurrent
    # core over time. One wide batch instead of T narrow ones is several times cheaper for the vision and
    # language encoders on CPU.
    encode = lambda o, i, s: observation_features(model, o, i, s)  # noqa: E731
    features = _over_time_and_worlds(encode, obs, instruction, subgoal)

    def one_world(obs: PyTree, action: Array, first: Array, carry: PyTree) -> tuple[Array, ...]:
        def step(carry: PyTree, x: tuple) -> tuple[PyTree, tuple]:
            o, a, f = x
            carry = jax.tree.map(lambda i, c: jnp.where(f, i, c), initial, carry)
            log_prob, entropy, value, carry = model.evaluate_features(o, carry, a)
            return carry, (log_prob, entropy, value, carry) if with_carries else (log_prob, entropy, value)

        _, outs = jax.lax.scan(step, carry, (obs, action, first))
        return outs

    # Time-major inputs, world-major carries: map over axis 1 of the sequences and axis 0 of the carries.
    return jax.vmap(one_world, in_axes=(1, 1, 1, 0), out_axes=1)(features, action, first, start_carry)


def evaluate_windows(
    model: Any, batch: dict[str, Any], action: Int[Array, "B T *A"], *, with_carries: bool = False
) -> tuple[Array, ...]:
    """`evaluate_sequences` on demonstration windows, in and out in the batch's `(B, T)` layout.

    `batch` as `DemonstrationBatches(sequence_length=T)` serves it: `obs` and `first` with leading axes
    `(B, T)`, and optionally the precomputed `instruction_features` / `subgoal_features`; every window starts
    from the initial carry. `action`: the batch's actions, or a stack of candidate actions per step.
    """
    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    first = time_major(batch["first"])
    outs = evaluate_sequences(
        model,
        jax.tree.map(time_major, batch["obs"]),
        time_major(action),
        first,
        initial_carries(model, first.shape[1]),
        instruction=jax.tree.map(time_major, batch.get("instruction_features")),
        subgoal=jax.tree.map(time_major, batch.get("subgoal_features")),
        with_carries=with_carries,
    )
    return jax.tree.map(time_major, outs)


__all__ = [
    "evaluate_sequences",
    "evaluate_windows",
    "initial_carries",
    "instruction_features_of",
    "is_memoryless",
    "per_distinct_row",
    "reset_where",
]
