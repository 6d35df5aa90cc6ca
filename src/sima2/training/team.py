"""Agents in team worlds: one jitted team rollout (a shared policy, the team expert or a still partner in each
agent slot), demonstrations of the team expert as ordinary demonstration rows (one episode per agent and
world: the shared policy is cloned on every agent's view; or the agent's own self-play labelled by the
expert, for DAgger), and the team metrics.

    from sima2.training.team import evaluate_team, record_team_demonstrations
    rows = record_team_demonstrations(env, params, key, num_worlds=128, num_steps=64)
    metrics = evaluate_team(agent, env, key, num_worlds=128)

A cooperation figure means something only against partners the agent never trained with and when one agent
alone cannot succeed, so `evaluate_team` scores, per family and split, the first episode of each world:
self-play (the agent in every slot), cross-play with the scripted team expert as the partner (the agent in
one slot, both roles), and solo (the partner stands still and stays silent: 0 by construction, except
that split knowledge's listener alone may guess right, at most once in 20 episodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from sima2.contract import StepInfo, Transition
from sima2.envs.team import FAMILIES, SPLITS, TeamEnv, TeamParams, team_expert_actions
from sima2.envs.vocabulary import decode_ids
from sima2.envs.world import LOOK_CENTRE, NOOP
from sima2.training.recurrent import initial_carries, reset_where
from sima2.training.team_critic import team_observation

# What a slot the policy does not control does: the team expert acts in it, or it stands still, silent.
PARTNER_EXPERT, PARTNER_STILL = 0, 1
_STILL = jnp.array([NOOP, LOOK_CENTRE, 0, 0], jnp.int32)


class TeamSteps(eqx.Module):
    """A team rollout, time-major (`(T, E, A, ...)`): what each agent saw and did, the expert's action in the
    same state, and each world's done / success (`(T, E)`)."""

    obs: dict[str, Array]
    action: Int[Array, "*time E A F"]  # built per step inside the scan, stacked along time by it
    expert_action: Int[Array, "*time E A F"]
    done: Bool[Array, "*time E"]
    success: Bool[Array, "*time E"]


def team_rollout(
    env: TeamEnv,
    params: TeamParams,
    key: PRNGKeyArray,
    *,
    num_worlds: int,
    num_steps: int,
    agent: Any = None,
    policy_slots: Bool[ArrayLike, " A"] | None = None,
    partner: int | Int[Array, ""] = PARTNER_EXPERT,
    deterministic: bool = True,
    keep_obs: bool = True,
    expert_share: float | Float[Array, ""] = 0.0,
) -> TeamSteps:
    """`num_steps` steps of `num_worlds` team worlds: `agent` (a sima2 agent, one policy for every slot it
    controls, its memory reset where an episode starts) acts in the `policy_slots`, the `partner` (the team
    expert or a still agent; an int or an int array, so one compiled program serves both) in the others;
    without an agent every slot is the partner's. `keep_obs=False` drops the observations (an evaluation needs
    only the outcomes). `expert_share`: the probability that an agent's step in a policy slot is the team
    expert's instead (DAgger's mixing)."""
    num_agents = env.num_agents
    slots = jnp.zeros((num_agents,), bool) if agent is None or policy_slots is None else jnp.asarray(policy_slots)
    k_reset, k_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_worlds), params)
    flat = lambda x: x.reshape(num_worlds * num_agents, *x.shape[2:])  # noqa: E731
    if agent is not None:
        initial = agent.initial_carry()
        carry = jnp.broadcast_to(initial, (num_worlds * num_agents, *initial.shape))
    else:
        carry = jnp.zeros((num_worlds * num_agents, 0))

    def step(loop, key):
        state, obs, carry = loop
        k_act, k_env = jax.random.split(key)
        expert = jax.vmap(team_expert_actions)(state)
        still = jnp.broadcast_to(_STILL, expert.shape)
        partner_action = jnp.where(jnp.asarray(partner) == PARTNER_EXPERT, expert, still)
        if agent is None:
            actions, new_carry = partner_action, carry
        else:
            keys = jax.random.split(k_act, num_worlds * num_agents)
            acted, new_carry, _ = jax.vmap(lambda k, o, c: agent.act(k, o, c, deterministic=deterministic))(
                keys, jax.tree.map(flat, obs), carry
            )
            acted = acted.reshape(num_worlds, num_agents, -1)
            helped = jax.random.bernoulli(jax.random.fold_in(k_act, 1), expert_share, (num_worlds, num_agents, 1))
            actions = jnp.where(slots[None, :, None] & ~helped, acted, partner_action)
        next_obs, state, _, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, num_worlds), state, actions, params
        )
        if agent is not None:  # memory starts afresh with each episode
            reset = jnp.repeat(done, num_agents)
            new_carry = jnp.where(reset.reshape(-1, *([1] * (carry.ndim - 1))), agent.initial_carry(), new_carry)
        out = TeamSteps(obs=obs if keep_obs else {}, action=actions, expert_action=expert, done=done,
                        success=info.success)  # fmt: skip
        return (state, next_obs, new_carry), out

    _, steps = jax.lax.scan(step, (state, obs, carry), jax.random.split(k_steps, num_steps))
    return steps


class _Streams(eqx.Module):
    """Where a team PPO rollout stands between updates: the worlds, and per (world, agent) stream its last
    observation, memory, whether it starts an episode, and the running episode's return and length."""

    state: Any
    obs: dict[str, Array]
    carry: PyTree
    first: Bool[Array, " S"]
    episode_return: Float[Array, " S"]
    episode_length: Int[Array, " S"]


def _step_info(info: Any, state: Any, done: Bool[Array, " E"], num_agents: int) -> StepInfo:
    """The contract's `StepInfo` per (world, agent) stream, every field at the streams' batch shape."""
    per_agent = lambda x: jnp.repeat(x, num_agents)  # noqa: E731  (a world's value for each of its agents)
    streams = done.shape[0] * num_agents
    nan, false = jnp.full((streams,), jnp.nan, jnp.float32), jnp.zeros((streams,), bool)
    return StepInfo(
        terminated=per_agent(info.success | info.failure),
        truncated=per_agent(done & ~info.success & ~info.failure),
        success=per_agent(info.success),
        invalid_move=info.invalid_move.reshape(-1),
        contact=state.bodies.contact.reshape(-1),
        elapsed_ticks=jnp.ones((streams,), jnp.int32),
        agent_pos=state.bodies.pos.reshape(streams, 2),
        distance_to_goal=nan,
        path_length=nan,
        optimal_path_length=nan,
        subgoal_index=jnp.zeros((streams,), jnp.int32),
        agent_acted=~false,
        world_rollback=false,
        fallback_step=false,
        action_blocked=false,
    )


def _collect(
    model: Any, env: TeamEnv, params: TeamParams, streams: _Streams, key: PRNGKeyArray, num_steps: int
) -> tuple[_Streams, Transition, PyTree, Float[Array, " S"]]:
    num_worlds = streams.first.shape[0] // env.num_agents
    flat = lambda x: x.reshape(num_worlds * env.num_agents, *x.shape[2:])  # noqa: E731
    start_carry = reset_where(streams.first, initial_carries(model, streams.first.shape[0]), streams.carry)

    def step(streams: _Streams, key: PRNGKeyArray) -> tuple[_Streams, Transition]:
        k_act, k_env = jax.random.split(key)
        carry = reset_where(streams.first, initial_carries(model, streams.first.shape[0]), streams.carry)
        keys = jax.random.split(k_act, streams.first.shape[0])
        seen = jax.tree.map(flat, team_observation(streams.obs))  # with the privileged team view
        action, carry, out = jax.vmap(model.act)(keys, seen, carry)
        expert = jax.vmap(team_expert_actions)(streams.state)
        obs, state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(k_env, num_worlds), streams.state, action.reshape(num_worlds, env.num_agents, -1), params
        )
        per_agent = lambda x: jnp.repeat(x, env.num_agents)  # noqa: E731  (a world's flag for each of its agents)
        done_s, reward_s = per_agent(done), reward.reshape(-1)
        episode_return, episode_length = streams.episode_return + reward_s, streams.episode_length + 1
        transition = Transition(
            obs=seen,
            action=action,
            reward=reward_s,
            done=done_s,
            first=streams.first,
            info=_step_info(info, state, done, env.num_agents),
            agent=out,
            episode_return=episode_return,
            episode_length=episode_length,
            expert_action=flat(expert),
        )
        streams = _Streams(
            state=state, obs=obs, carry=carry, first=done_s, episode_return=jnp.where(done_s, 0.0, episode_return),
            episode_length=jnp.where(done_s, 0, episode_length),
        )  # fmt: skip
        return streams, transition

    streams, transitions = jax.lax.scan(step, streams, jax.random.split(key, num_steps + 1)[:-1])
    carry = reset_where(streams.first, initial_carries(model, streams.first.shape[0]), streams.carry)
    keys = jax.random.split(jax.random.fold_in(key, num_steps), streams.first.shape[0])
    _, _, out = jax.vmap(model.act)(keys, jax.tree.map(flat, team_observation(streams.obs)), carry)
    return streams, transitions, start_carry, out.value


class TeamRollout:
    """PPO rollouts in `num_worlds` team worlds (one jitted scan per update), feeding the same `ppo_update`
    through `make_host_ppo`: each (world, agent) slot is one stream of the learner's batch with the team's
    reward and its own value, so advantages are per agent; the team expert's action in each state rides
    along for expert distillation (`ppo.expert_coef`). Observations carry the privileged `team` view (every
    agent's proprio) that a `sima2.training.team_critic.CentralisedCritic` reads; an agent ignores it."""

    def __init__(self, agent: Any, env: TeamEnv, params: TeamParams, num_worlds: int, num_steps: int, seed: int = 0):
        self.env, self.params, self.num_steps = env, params, num_steps
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(seed), num_worlds), params)
        streams = num_worlds * env.num_agents
        self.streams = _Streams(
            state=state, obs=obs, carry=initial_carries(agent, streams), first=jnp.ones((streams,), bool),
            episode_return=jnp.zeros((streams,), jnp.float32), episode_length=jnp.zeros((streams,), jnp.int32),
        )  # fmt: skip
        self._collect = eqx.filter_jit(_collect)

    def collect(self, model: Any, key: PRNGKeyArray) -> tuple[Transition, PyTree, Array]:
        """`num_steps` steps of every world with `model`: (transitions `(T, E * A)`, start carries, bootstrap
        values)."""
        self.streams, transitions, start_carry, last_value = self._collect(
            model, self.env, self.params, self.streams, key, self.num_steps
        )
        return transitions, start_carry, last_value


def record_team_demonstrations(
    env: TeamEnv, params: TeamParams, key: PRNGKeyArray, *, num_worlds: int, num_steps: int, agent: Any = None,
    expert_share: float = 0.0, first_episode_id: int = 0,
) -> datasets.Dataset:  # fmt: skip
    """Team episodes as demonstration rows (`sima2.training.FEATURES`), one episode per agent and world
    episode, so the shared policy learns every role from its own view; every row's action is the team
    expert's in that state.

    Without `agent` the expert drives and its successful episodes are kept. With `agent`, the agent drives
    every slot (self-play, sampled actions; each agent's step is the expert's with probability `expert_share`)
    and every episode is kept, success or not, finished or not: the states its own mistakes lead to, each
    labelled with what the expert would do there (DAgger's relabelling, for a team). Episode ids count
    from `first_episode_id`, so the rows can join an existing dataset."""
    from sima2.training.data import FEATURES

    slots = None if agent is None else np.ones(env.num_agents, bool)
    share = jnp.float32(expert_share)  # an array argument: one compiled program for every share
    steps = compiled_team_rollout(env, params, key, num_worlds=num_worlds, num_steps=num_steps, agent=agent,
                                  policy_slots=slots, deterministic=False, expert_share=share)  # fmt: skip
    steps = jax.tree.map(np.asarray, steps)
    columns: dict[str, list] = {name: [] for name in FEATURES}
    episode = first_episode_id
    for world in range(num_worlds):
        ends = list(np.flatnonzero(steps.done[:, world]))
        if agent is not None and (not ends or ends[-1] != num_steps - 1):
            ends.append(num_steps - 1)  # the episode still running: its states are labelled too
        start = 0
        for end in ends:
            succeeded = bool(steps.done[end, world] and steps.success[end, world])
            if succeeded or agent is not None:
                for slot in range(env.num_agents):
                    for t in range(start, end + 1):
                        ids = steps.obs["instruction"][t, world, slot]
                        row = {
                            "image": steps.obs["image"][t, world, slot],
                            "instruction": decode_ids(ids),
                            "instruction_ids": ids.tolist(),
                            "proprio": steps.obs["proprio"][t, world, slot].tolist(),
                            "touch": steps.obs["touch"][t, world, slot].tolist(),
                            "action": steps.expert_action[t, world, slot].tolist(),
                            "episode_id": episode,
                            "step_id": t - start,
                            "plan": [],
                            "subgoal_index": 0,
                            "subgoal_done": bool(t == end and succeeded),  # one subgoal: the team's task
                        }
                        for name in FEATURES:
                            columns[name].append(row[name])
                    episode += 1
            start = end + 1
    if not columns["action"]:
        raise ValueError(f"the team expert finished no episode in {num_steps} steps: record more steps")
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def _first_episode_success(steps: TeamSteps) -> Array:
    """Per world: whether its first episode succeeded (False where none ended)."""
    ended = jnp.cumsum(steps.done, axis=0) == 1
    first_end = steps.done & ended
    return jnp.any(first_end & steps.success, axis=0)


# Compiled once per agent structure and sizes: the agent's arrays are arguments, so an agent before and after
# training (and every family and split) share one program per partner.
compiled_team_rollout = eqx.filter_jit(team_rollout)


@eqx.filter_jit
def _success_rate(
    agent: Any, env: TeamEnv, params: TeamParams, slots: Array, partner: Array, key: PRNGKeyArray, num_worlds: int,
    num_steps: int, deterministic: bool,
) -> Array:  # fmt: skip
    steps = team_rollout(
        env, params, key, num_worlds=num_worlds, num_steps=num_steps, agent=agent, policy_slots=slots,
        partner=partner, deterministic=deterministic, keep_obs=False,
    )  # fmt: skip
    return _first_episode_success(steps).mean()


def evaluate_team(
    agent: Any,
    env: TeamEnv,
    key: PRNGKeyArray,
    *,
    num_worlds: int = 128,
    deterministic: bool = True,
    splits: Sequence[str] = SPLITS,
    families: Sequence[str] = FAMILIES,
) -> dict[str, Any]:
    """Success of the first episode of `num_worlds` worlds per family and split: `self_play`, `cross_play`
    (the team expert as partner, the agent in slot 0 / slot 1, and their mean) and `solo` (the partner still,
    both slots, and their mean). Each world runs until its family's step limit."""
    unknown = [name for name in (*families, *splits) if name not in (*FAMILIES, *SPLITS)]
    if unknown:
        raise ValueError(f"unknown families or splits {unknown}; families: {FAMILIES}, splits: {SPLITS}")
    from sima2.envs.team.state import FAMILY_MAX_STEPS

    num_steps = max(FAMILY_MAX_STEPS)

    def rollout(params: TeamParams, slots: Array, partner: int, key: PRNGKeyArray) -> Array:
        # The partner is an array argument: one compiled program for the expert partner and the still one.
        return _success_rate(agent, env, params, slots, jnp.int32(partner), key, num_worlds, num_steps, deterministic)

    alone = [np.eye(env.num_agents, dtype=bool)[i] for i in range(2)]
    results: dict[str, Any] = {}
    for family in families:
        for split in splits:
            params = env.default_params(family, split)
            k = jax.random.fold_in(key, FAMILIES.index(family) * len(SPLITS) + SPLITS.index(split))
            cross = [float(rollout(params, jnp.asarray(s), PARTNER_EXPERT, k)) for s in alone]
            solo = [float(rollout(params, jnp.asarray(s), PARTNER_STILL, k)) for s in alone]
            results[f"{family}/{split}"] = {
                "self_play": float(rollout(params, jnp.ones(env.num_agents, bool), PARTNER_EXPERT, k)),
                "cross_play": float(np.mean(cross)),
                "cross_play_slot_0": cross[0],
                "cross_play_slot_1": cross[1],
                "solo": float(np.mean(solo)),
                "solo_slot_0": solo[0],
                "solo_slot_1": solo[1],
                "episodes": num_worlds,
            }
    return results


__all__ = [
    "PARTNER_EXPERT",
    "PARTNER_STILL",
    "TeamRollout",
    "TeamSteps",
    "compiled_team_rollout",
    "evaluate_team",
    "record_team_demonstrations",
    "team_rollout",
]
