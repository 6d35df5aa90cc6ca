"""The one rollout: an actor in vmapped functional worlds for a number of steps, one `lax.scan` inside `jit`.

    state = init_rollout(actor, env, params, key, num_envs)
    state, steps, kept = rollout(actor, env, params, state, key, num_steps)   # steps: Transition (T, E)

PPO's collection, evaluation, the report's episodes and demonstration recording all run through it, so
the key splitting, the memory reset at episode starts and the episode bookkeeping are written once:

- every per-world key of the rollout comes from one split before the scan (no splits inside a step);
- one `jax.vmap` per step for the actor and one for the env;
- the actor's arrays are arguments of the compiled program, so evaluation splits and checkpoints of one
  agent share a program;
- `PlanningActor` writes each episode's plan with the agent's planner inside the same compiled step;
- with `auto_reset` (the default) finished worlds start a new episode (`Env.step`); without it each world
  stops at the end of its first episode: its state stays the one the episode ended in and later steps
  report `done` False (the report records whole episodes this way, last frame included).

`expert_labels` also records the env expert's action in every step's state (`Transition.expert_action`),
for imitation losses and demonstrations; `keep_instruction` the episode features the actor acted with
(`Transition.instruction`). `keep(transition, state)` chooses what is stacked over time
(default: the transition); `state` is the world state the action was taken in. Both have the leading
world axis (`keep` runs on the whole batch of one step).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Key, PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, ActOutput, Env, Observation, Transition
from sima2.policy.plans import Plan, PlanCursor, PlanTokens, plan_tokens, write_plan
from sima2.training.recurrent import initial_carries, reset_where


class Actor(eqx.Module):
    """Chooses actions in a rollout; may read the world state (a scripted expert does, an agent does not)."""

    @abc.abstractmethod
    def initial_carry(self) -> PyTree:
        """The actor's memory at an episode start."""

    @abc.abstractmethod
    def episode_features(self, obs: Observation) -> PyTree:
        """What the actor computes once per episode from its first observation (None: nothing)."""

    @abc.abstractmethod
    def __call__(
        self, key: PRNGKeyArray, obs: Observation, state: PyTree, params: PyTree, carry: PyTree, episode: PyTree
    ) -> tuple[Int[Array, " F"], PyTree, ActOutput]:
        """(action, new carry, ActOutput) for one world; `episode`: `episode_features` of its episode."""


class AgentActor(Actor):
    """An agent acting from its observation alone: sampled actions, or its most likely ones. The agent's
    instruction features are computed once per episode."""

    agent: AbstractAgent
    deterministic: bool = eqx.field(static=True, default=False)

    def initial_carry(self) -> PyTree:
        return self.agent.initial_carry()

    def episode_features(self, obs: Observation) -> PyTree:
        return self.agent.instruction_features(obs["instruction"])

    def __call__(
        self, key: PRNGKeyArray, obs: Observation, state: PyTree, params: PyTree, carry: PyTree, episode: PyTree
    ) -> tuple[Int[Array, " F"], PyTree, ActOutput]:
        del state, params  # no privileged world state
        return self.agent.act(key, obs, carry, deterministic=self.deterministic, instruction=episode)


class PlanEpisode(eqx.Module):
    """What a `PlanningActor` computes at an episode's start: the instruction's features, the plan it wrote
    and each subgoal's features."""

    instruction: PyTree
    plan: Plan
    subgoals: PyTree  # `subgoal_features` of each subgoal, leading axis K


class PlanningActor(Actor):
    """An agent that writes its plan at each episode's start (`sima2.policy.plans.write_plan`) and acts on
    the current subgoal, moving to the next one when its subgoal-done head fires. Its carry is the agent's
    memory and the `PlanCursor`."""

    agent: AbstractAgent
    tokens: PlanTokens = eqx.field(static=True)
    deterministic: bool = eqx.field(static=True, default=False)

    @classmethod
    def of(cls, agent: AbstractAgent, *, deterministic: bool = False) -> PlanningActor:
        """A planning actor for `agent`; a ValueError naming the reason when it cannot write plans."""
        from sima2.policy.agent import Agent

        if not isinstance(agent, Agent):
            raise TypeError(f"plans at run time need a sima2 Agent (planner and subgoal-done head), got {type(agent)}")
        return cls(agent, plan_tokens(agent), deterministic)

    def initial_carry(self) -> PyTree:
        return self.agent.initial_carry(), PlanCursor(jnp.zeros((), jnp.int32))

    def episode_features(self, obs: Observation) -> PlanEpisode:
        plan = write_plan(self.agent, obs["instruction"], self.tokens)
        return PlanEpisode(
            instruction=self.agent.instruction_features(obs["instruction"]),
            plan=plan,
            subgoals=jax.vmap(self.agent.subgoal_features)(plan.subgoals),
        )

    def __call__(
        self, key: PRNGKeyArray, obs: Observation, state: PyTree, params: PyTree, carry: PyTree, episode: PyTree
    ) -> tuple[Int[Array, " F"], PyTree, ActOutput]:
        del state, params  # no privileged world state: pixels, instruction and the agent's own plan
        memory, cursor = carry
        subgoal = jax.tree.map(lambda x: x[cursor.index], episode.subgoals)
        action, memory, out = self.agent.act(
            key, obs, memory, deterministic=self.deterministic, instruction=episode.instruction, subgoal=subgoal
        )
        done = self.agent.policy.subgoal_done_logit(memory) > 0
        out = dataclasses.replace(out, subgoal=cursor.index)  # the subgoal this action was chosen for
        return action, (memory, cursor.advance(done, episode.plan)), out


class ExpertActor(Actor):
    """The env's scripted expert; with `noise`, each step executes a uniformly random action instead with
    that probability (DART, Laskey et al. 2017: demonstrations then show recoveries from slips)."""

    env: Env
    noise: float = eqx.field(static=True, default=0.0)

    def __check_init__(self) -> None:
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be a probability in [0, 1), got {self.noise}")

    def initial_carry(self) -> PyTree:
        return jnp.zeros((0,), jnp.float32)

    def episode_features(self, obs: Observation) -> PyTree:
        return None

    def __call__(
        self, key: PRNGKeyArray, obs: Observation, state: PyTree, params: PyTree, carry: PyTree, episode: PyTree
    ) -> tuple[Int[Array, " F"], PyTree, ActOutput]:
        del obs, episode
        action = jnp.asarray(self.env.expert_action(state, params), jnp.int32)
        if self.noise > 0:
            slip_key, random_key = jax.random.split(key)
            nvec = jnp.asarray(self.env.spec.action.nvec, jnp.int32)
            random_action = jax.random.randint(random_key, action.shape, 0, nvec)
            action = jnp.where(jax.random.bernoulli(slip_key, self.noise), random_action, action)
        zero = jnp.zeros((), jnp.float32)
        return action, carry, ActOutput(log_prob=zero, value=zero, entropy=zero)


class RolloutState(eqx.Module):
    """Per-world state carried between rollouts (every leaf has a leading world axis)."""

    env_state: PyTree
    obs: Observation
    carry: PyTree
    first: Bool[Array, " E"]
    episode_return: Float[Array, " E"]
    episode_length: Int[Array, " E"]
    # False once a world's episode has ended in a rollout without auto-reset.
    active: Bool[Array, " E"]
    # The actor's `episode_features` of each world's current episode.
    episode: PyTree = None


@eqx.filter_jit
def reset_worlds(env: Env, env_params: PyTree, keys: Key[Array, " N"]) -> tuple[Observation, PyTree]:
    """`env.reset` of one world per key (leading world axis), compiled once per env and batch size: run op by
    op, a batched reset of the built-in world costs seconds."""
    return jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)


@eqx.filter_jit
def init_rollout(actor: Actor, env: Env, env_params: PyTree, key: PRNGKeyArray, num_envs: int) -> RolloutState:
    """Reset `num_envs` worlds and their actor memories (compiled: the episode features of every world's
    instruction are computed here too)."""
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), env_params)
    return state_from_reset(actor, obs, env_state)


def state_from_reset(actor: Actor, obs: Observation, env_state: PyTree) -> RolloutState:
    """A rollout state for worlds already reset (leading world axis), e.g. chosen tasks."""
    num_envs = jax.tree.leaves(obs)[0].shape[0]
    return RolloutState(
        env_state=env_state,
        obs=obs,
        carry=initial_carries(actor, num_envs),
        first=jnp.ones((num_envs,), bool),
        episode_return=jnp.zeros((num_envs,), jnp.float32),
        episode_length=jnp.zeros((num_envs,), jnp.int32),
        active=jnp.ones((num_envs,), bool),
        episode=jax.vmap(actor.episode_features)(obs),
    )


def compute_where(fn: Callable[[PyTree], PyTree], mask: Bool[Array, " E"], inputs: PyTree, current: PyTree) -> PyTree:
    """`fn` (per world) of `inputs` where `mask`, else `current` (leading world axis), computing only the
    masked worlds: in chunks of a sixteenth of the batch, as many chunks as needed (the episode features of
    the few worlds that start an episode at a step, rather than of every world)."""
    if not jax.tree.leaves(current):
        return current
    num = mask.shape[0]
    chunk = max(1, -(-num // 16))
    order = jnp.nonzero(mask, size=-(-num // chunk) * chunk, fill_value=num)[0]

    def one_chunk(i: Int[Array, ""], current: PyTree) -> PyTree:
        index = jax.lax.dynamic_slice(order, (i * chunk,), (chunk,))
        fresh = jax.vmap(fn)(jax.tree.map(lambda x: x[jnp.minimum(index, num - 1)], inputs))
        return jax.tree.map(lambda c, f: c.at[index].set(f, mode="drop"), current, fresh)

    chunks = (jnp.sum(mask, dtype=jnp.int32) + chunk - 1) // chunk
    return jax.lax.fori_loop(0, chunks, one_chunk, current)


def _freeze(active: Bool[Array, " E"], new: PyTree, old: PyTree) -> PyTree:
    def pick(n: Array, o: Array) -> Array:
        return jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


def rollout(
    actor: Actor,
    env: Env,
    env_params: PyTree,
    state: RolloutState,
    key: PRNGKeyArray,
    num_steps: int,
    *,
    auto_reset: bool = True,
    expert_labels: bool = False,
    keep_instruction: bool = False,
    keep: Callable[[Transition, PyTree], PyTree] | None = None,
    params_per_world: bool = False,
) -> tuple[RolloutState, PyTree]:
    """`num_steps` steps in every world of `state`; returns the new rollout state and `keep(transition,
    world state)` of every step stacked time-major `(T, E, ...)` (default: the `Transition`s).
    `params_per_world`: `env_params` has a leading world axis (e.g. one split per world)."""
    params_axis = 0 if params_per_world else None
    num_envs = state.first.shape[0]
    initial = initial_carries(actor, num_envs)
    act = jax.vmap(actor, in_axes=(0, 0, 0, params_axis, 0, 0))
    step_env = jax.vmap(env.step if auto_reset else env.step_no_reset, in_axes=(0, 0, 0, params_axis))
    expert_action = jax.vmap(env.expert_action, in_axes=(0, params_axis))
    keep = (lambda transition, _: transition) if keep is None else keep

    def one_step(carry: RolloutState, keys: tuple[Array, Array]) -> tuple[RolloutState, PyTree]:
        act_keys, env_keys = keys
        memory = reset_where(carry.first, initial, carry.carry)
        action, memory, out = act(act_keys, carry.obs, carry.env_state, env_params, memory, carry.episode)
        obs, env_state, reward, done, info = step_env(env_keys, carry.env_state, action, env_params)
        # A new episode's features, from its first observation (a stopped world keeps its last episode's).
        episode = compute_where(actor.episode_features, done & carry.active, obs, carry.episode) if auto_reset \
            else carry.episode
        reward = jnp.where(carry.active, reward.astype(jnp.float32), 0.0)
        done = done.astype(bool) & carry.active
        episode_return = carry.episode_return + reward
        episode_length = carry.episode_length + carry.active.astype(jnp.int32)
        transition = Transition(
            obs=carry.obs,
            action=action.astype(jnp.int32),
            reward=reward,
            done=done,
            first=carry.first,
            info=info,
            agent=out,
            episode_return=episode_return,
            episode_length=episode_length,
            expert_action=expert_action(carry.env_state, env_params) if expert_labels else None,
            instruction=carry.episode if keep_instruction else None,
        )
        active = carry.active if auto_reset else carry.active & ~done
        if not auto_reset:  # a finished world keeps the state its episode ended in
            obs, env_state = _freeze(carry.active, (obs, env_state), (carry.obs, carry.env_state))
        new = RolloutState(
            env_state=env_state,
            obs=obs,
            carry=memory,
            first=done,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length).astype(jnp.int32),
            active=active,
            episode=episode,
        )
        return new, keep(transition, carry.env_state)

    # Every per-world key of the rollout from one split, rather than splits inside each step.
    act_keys, env_keys = jax.random.split(key, (2, num_steps, num_envs))
    return jax.lax.scan(one_step, state, (act_keys, env_keys))


def bootstrap_values(agent: AbstractAgent, state: RolloutState, key: PRNGKeyArray) -> Float[Array, " E"]:
    """The agent's value estimates of the rollout state's observations (PPO's bootstrap)."""
    num_envs = state.first.shape[0]
    carry = reset_where(state.first, initial_carries(agent, num_envs), state.carry)
    act = lambda k, o, c, e: agent.act(k, o, c, instruction=e)  # noqa: E731
    _, _, out = jax.vmap(act)(jax.random.split(key, num_envs), state.obs, carry, state.episode)
    return out.value


__all__ = [
    "Actor",
    "AgentActor",
    "ExpertActor",
    "RolloutState",
    "bootstrap_values",
    "init_rollout",
    "reset_worlds",
    "rollout",
    "state_from_reset",
]
