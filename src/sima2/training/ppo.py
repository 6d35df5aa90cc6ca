"""PPO (actor-critic with GAE and the clipped objective) on vmapped functional worlds, PureJaxRL style.

One update = one rollout of `rollout_length` steps in each of `num_envs` worlds (`jax.vmap` over worlds,
`jax.lax.scan` over time, all inside `jit`) followed by `update_epochs` passes of `num_minibatches`
minibatches. For recurrent agents minibatches split the worlds, not the time steps, so they are trained on
whole sequences: the update re-scans `agent.evaluate` over time from the carry saved at rollout start,
resetting it wherever a step is the first of an episode, exactly as the rollout did. A memoryless agent
(empty carry) has its (time, world) steps shuffled into minibatches and evaluated as one flat batch.

Rollouts come from the one rollout (`sima2.training.rollout`); the learner (`ppo_update`) also serves the
host loop over gymnasium vector envs (`sima2.training.host_rollout`). Several seeds train at once by
`jax.vmap`-ing the init and step functions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, Env, Transition
from sima2.training.config import PPOConfig, TrainConfig
from sima2.training.loop import TrainState, guard_step
from sima2.training.optim import global_norm, init_opt_state, make_optimizer, split_trainable, trainable_spec
from sima2.training.recurrent import evaluate_sequences, is_memoryless
from sima2.training.rollout import AgentActor, RolloutState, bootstrap_values, init_rollout, rollout


def collect_rollout(
    agent: AbstractAgent,
    env: Env,
    env_params: PyTree,
    state: RolloutState,
    key: PRNGKeyArray,
    rollout_length: int,
    *,
    expert: bool = False,
) -> tuple[RolloutState, Transition, PyTree, Float[Array, " E"]]:
    """`rollout_length` steps of the agent (sampling its actions) in every world, through the one rollout;
    returns the new rollout state, the transitions, the carries at rollout start (for re-scanning
    recurrent agents) and the bootstrap values of the final observations. With `expert`, the transitions
    also hold the env expert's action in every step's state (expert distillation). An agent whose
    instruction features are frozen keeps them in the transitions, so the update does not recompute them."""
    start_carry = state.carry
    actor = AgentActor(agent)
    # The ongoing episodes' instruction features by the current weights (a trained language model moves).
    state = dataclasses.replace(state, episode=jax.vmap(actor.episode_features)(state.obs))
    state, transitions = rollout(
        actor, env, env_params, state, key, rollout_length, expert_labels=expert,
        keep_instruction=agent.instruction_features_frozen(),
    )
    last_value = bootstrap_values(agent, state, jax.random.fold_in(key, rollout_length))
    return state, transitions, start_carry, last_value


def compute_gae(
    reward: Float[Array, "T E"],
    value: Float[Array, "T E"],
    done: Bool[Array, "T E"],
    last_value: Float[Array, " E"],
    gamma: float,
    gae_lambda: float,
) -> tuple[Float[Array, "T E"], Float[Array, "T E"]]:
    """Generalised advantage estimates and value targets; `done[t]` cuts bootstrapping after step t."""

    def backward(carry: tuple[Array, Array], x: tuple[Array, Array, Array]) -> tuple[tuple, Array]:
        advantage, next_value = carry
        r, v, d = x
        not_done = 1.0 - d.astype(jnp.float32)
        delta = r + gamma * next_value * not_done - v
        advantage = delta + gamma * gae_lambda * not_done * advantage
        return (advantage, v), advantage

    _, advantages = jax.lax.scan(
        backward, (jnp.zeros_like(last_value), last_value), (reward, value, done), reverse=True
    )
    return advantages, advantages + value


def random_permutation(key: PRNGKeyArray, n: int) -> Int[Array, " {n}"]:
    """A uniformly random permutation of `range(n)`, like `jax.random.permutation(key, n)` (a different one
    for the same key) at a fraction of its cost on CPU.

    `jax.random.permutation` sorts (random key, value) pairs, which XLA CPU runs through a compiled
    comparator: for PPO on CartPole (4 epochs of 4096 samples) those sorts took a fifth of each update's
    time on a 2-core CPU. Here each round sorts one uint32 array whose high bits are random and whose
    low bits hold the position, so the sorted keys carry the order themselves. The keys are distinct, and
    successive rounds refine the previous order like the passes of a radix sort, so the result is the order
    of the concatenated random bits; rounds are added until they total 3 log2(n) bits, as jax's own
    shuffle does, which makes ties (the only source of bias) negligible.
    """
    index_bits = max(1, (n - 1).bit_length())
    random_bits = 32 - index_bits
    if random_bits < 8:  # over 16 million items: too few random bits left per round
        return jax.random.permutation(key, n)
    rounds = math.ceil(3 * index_bits / random_bits)
    position_mask = jnp.uint32((1 << index_bits) - 1)
    positions = jnp.arange(n, dtype=jnp.uint32)
    order = jnp.arange(n, dtype=jnp.int32)
    for round_key in jax.random.split(key, rounds):
        sort_keys = (jax.random.bits(round_key, (n,), jnp.uint32) & ~position_mask) | positions
        order = order[(jax.lax.sort(sort_keys) & position_mask).astype(jnp.int32)]
    return order


def ppo_loss(
    model: AbstractAgent,
    trajectory: Transition,
    start_carry: PyTree,
    advantages: Float[Array, "T M"],
    returns: Float[Array, "T M"],
    config: PPOConfig,
    expert_coef: Float[Array, ""] | float = 0.0,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Clipped surrogate + (optionally clipped) value loss - entropy bonus, on a minibatch of worlds, plus
    `expert_coef` x the cross-entropy of the expert's actions when the trajectory has them."""
    with_expert = trajectory.expert_action is not None
    if with_expert:  # score the taken and the expert's action in one pass
        both = jnp.stack([trajectory.action, trajectory.expert_action], axis=2)
        log_probs, entropy, value = evaluate_sequences(
            model, trajectory.obs, both, trajectory.first, start_carry, instruction=trajectory.instruction
        )
        log_prob, expert_log_prob = log_probs[..., 0], log_probs[..., 1]
    else:
        log_prob, entropy, value = evaluate_sequences(
            model, trajectory.obs, trajectory.action, trajectory.first, start_carry, instruction=trajectory.instruction
        )
    if config.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = jnp.exp(log_prob - trajectory.agent.log_prob)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    acted = trajectory.info.agent_acted.astype(jnp.float32)
    surrogate = jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    policy_loss = -(surrogate * acted).sum() / jnp.maximum(acted.sum(), 1.0)
    value_error = jnp.square(value - returns)
    if config.clip_value:
        old_value = trajectory.agent.value
        clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
        value_error = jnp.maximum(value_error, jnp.square(clipped - returns))
    value_loss = 0.5 * value_error.mean()
    entropy_mean = entropy.mean()
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy_mean
    approx_kl = ((ratio - 1.0) - jnp.log(ratio)).mean()
    clip_fraction = (jnp.abs(ratio - 1.0) > config.clip_eps).mean()
    terms = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy_mean,
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }
    if with_expert:
        terms["expert_loss"] = -expert_log_prob.mean()
        terms["expert_coef"] = jnp.asarray(expert_coef, jnp.float32)
        loss = loss + expert_coef * terms["expert_loss"]
    return loss, terms


def ppo_update(
    state: TrainState,
    trajectory: Transition,
    start_carry: PyTree,
    last_value: Float[Array, " E"],
    *,
    optimizer: optax.GradientTransformation,
    spec: PyTree,
    config: PPOConfig,
) -> tuple[TrainState, dict[str, Array]]:
    """Epochs x minibatches of PPO on one trajectory. Pure; jit it.

    Minibatches split the worlds (whole sequences, so recurrent agents replay from their stored carries);
    for a memoryless agent they split the (time, world) pairs instead, as PureJaxRL and rejax do.
    """
    num_envs = trajectory.reward.shape[1]
    if num_envs % config.num_minibatches:
        raise ValueError(f"num_envs ({num_envs}) must be divisible by num_minibatches ({config.num_minibatches})")
    advantages, returns = compute_gae(
        trajectory.reward, trajectory.agent.value, trajectory.done, last_value, config.gamma, config.gae_lambda
    )
    key, update_key = jax.random.split(state.key)
    trainable, rest = split_trainable(state.model, spec)
    # The minibatches need what the loss reads, not the logged extras.
    steps = dataclasses.replace(trajectory, info=dataclasses.replace(trajectory.info, extras={}))
    samples = (steps, advantages, returns)
    memoryless = is_memoryless(state.model)
    if memoryless:
        # Every step stands alone: view the (T, E) steps as one time step of T * E worlds.
        samples = jax.tree.map(lambda x: x.reshape(1, -1, *x.shape[2:]), samples)
    num_units = samples[1].shape[1]
    expert_coef = jnp.float32(config.expert_coef)
    if config.expert_decay_updates > 0:
        expert_coef = expert_coef * jnp.clip(1.0 - state.step / config.expert_decay_updates, 0.0, 1.0)
    freeze = None
    if config.critic_warmup_updates > 0:
        critic_only, _ = split_trainable(state.model.critic_filter(), spec)
        warming_up = state.step < config.critic_warmup_updates

        def freeze(tree: PyTree) -> PyTree:
            """Zero everything but the critic's own arrays while the critic warms up."""
            return jax.tree.map(lambda x, critic: jnp.where(warming_up & ~critic, 0.0, x), tree, critic_only)

    def minibatch_step(carry: tuple, units: Int[Array, " M"]) -> tuple[tuple, dict]:
        trainable, opt_state = carry
        mb_trajectory, mb_advantages, mb_returns = jax.tree.map(lambda x: jnp.take(x, units, axis=1), samples)
        mb_carry = start_carry if memoryless else jax.tree.map(lambda x: jnp.take(x, units, axis=0), start_carry)

        def loss_fn(trainable: PyTree) -> tuple[Array, dict]:
            model = eqx.combine(trainable, rest)
            return ppo_loss(model, mb_trajectory, mb_carry, mb_advantages, mb_returns, config, expert_coef)

        (loss, terms), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(trainable)
        if freeze is not None:
            # Warm-up: neither the value loss nor the optimiser (its moments, clipping norm and weight decay)
            # may move the trunk and heads the policy reads.
            grads = freeze(grads)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        if freeze is not None:
            updates = freeze(updates)
        trainable = eqx.apply_updates(trainable, updates)
        return (trainable, opt_state), dict(terms, loss=loss, grad_norm=global_norm(grads))

    def epoch(carry: tuple, epoch_key: PRNGKeyArray) -> tuple[tuple, dict]:
        order = random_permutation(epoch_key, num_units).reshape(config.num_minibatches, -1)
        return jax.lax.scan(minibatch_step, carry, order)

    (trainable, opt_state), terms = jax.lax.scan(
        epoch, (trainable, state.opt_state), jax.random.split(update_key, config.update_epochs)
    )
    metrics = jax.tree.map(jnp.mean, terms)
    # A single non-finite minibatch must trip the guard even if later ones average it away.
    metrics["grad_norm"] = jnp.where(jnp.all(jnp.isfinite(terms["grad_norm"])), metrics["grad_norm"], jnp.nan)
    metrics.update(rollout_metrics(trajectory))
    state = TrainState(
        model=eqx.combine(trainable, rest),
        opt_state=opt_state,
        key=key,
        step=state.step + 1,
        guard=state.guard,
        rollout=state.rollout,
    )
    return state, metrics


def rollout_metrics(trajectory: Transition) -> dict[str, Array]:
    """Means over finished episodes (return, length, success) and over steps (reward per step, invalid
    moves, the wrappers' interventions and every logged extra, e.g. the reward terms)."""
    done = trajectory.done
    episodes = done.sum()
    per_episode = jnp.maximum(episodes, 1.0)
    info = trajectory.info
    metrics = {
        "episodes": episodes.astype(jnp.float32),
        "return": jnp.where(done, trajectory.episode_return, 0.0).sum() / per_episode,
        "episode_length": jnp.where(done, trajectory.episode_length, 0).sum() / per_episode,
        "success_rate": (done & info.success).sum() / per_episode,
        "reward_per_step": trajectory.reward.mean(),
        "invalid_move_rate": info.invalid_move.mean(),
        # The wrappers' activity, per step: worlds restored, steps a fallback controller acted, actions the
        # safety filter replaced.
        "world_rollback_rate": info.world_rollback.mean(),
        "fallback_step_rate": info.fallback_step.mean(),
        "action_blocked_rate": info.action_blocked.mean(),
    }
    metrics.update({name: value.mean() for name, value in info.extras.items()})
    return metrics


def make_ppo(
    agent: Any,
    env: Any,
    env_params: PyTree,
    config: TrainConfig,
    *,
    filter_spec: PyTree | None = None,
) -> tuple[Callable[[PRNGKeyArray], TrainState], Callable[[TrainState, Any], tuple[TrainState, dict]]]:
    """`(init_fn, step_fn)` for PPO on a functional env: `init_fn(key) -> TrainState` and a pure
    `step_fn(state, None) -> (state, metrics)` (rollout + update, guarded). Jit/vmap them as needed."""
    ppo = config.ppo
    if ppo.num_envs % ppo.num_minibatches:
        raise ValueError(
            f"ppo.num_envs ({ppo.num_envs}) must be divisible by ppo.num_minibatches ({ppo.num_minibatches})"
        )
    optimizer = make_optimizer(config.optim)
    spec = trainable_spec(agent, filter_spec)

    def init_fn(key: PRNGKeyArray) -> TrainState:
        env_key, key = jax.random.split(key)
        rollout = init_rollout(AgentActor(agent), env, env_params, env_key, ppo.num_envs)
        return TrainState.create(agent, init_opt_state(optimizer, agent, spec), key, rollout=rollout)

    def step_fn(state: TrainState, batch: Any = None) -> tuple[TrainState, dict]:
        del batch
        model = state.model
        key, rollout_key = jax.random.split(state.key)
        rollout, trajectory, start_carry, last_value = collect_rollout(
            model, env, env_params, state.rollout, rollout_key, ppo.rollout_length, expert=ppo.expert_coef > 0
        )
        state = TrainState(model, state.opt_state, key, state.step, state.guard, rollout)
        return ppo_update(state, trajectory, start_carry, last_value, optimizer=optimizer, spec=spec, config=ppo)

    return init_fn, guard_step(step_fn, config.guard)


def vmap_seeds(
    init_fn: Callable[[PRNGKeyArray], TrainState],
    step_fn: Callable[[TrainState, Any], tuple[TrainState, dict]],
    key: PRNGKeyArray,
    num_seeds: int,
) -> tuple[TrainState, Callable[[TrainState, Any], tuple[TrainState, dict]]]:
    """Initial states for `num_seeds` independent seeds and a step that advances them all at once."""
    states = eqx.filter_vmap(init_fn)(jax.random.split(key, num_seeds))
    return states, eqx.filter_vmap(step_fn, in_axes=(eqx.if_array(0), None))


def seed_keys(key: PRNGKeyArray, seeds: Sequence[int]) -> PRNGKeyArray:
    """One key per seed value, independent of how many seeds run together."""
    return jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seeds))
