"""Rollouts of a gymnasium vector env from a host loop, yielding the same `Transition` record as the
in-`jit` rollout, and PPO on them (`make_host_ppo`, the same jitted `ppo_update`).

World states live outside JAX here, so each step is a jitted `agent.act` on the batch (memory reset at
episode starts, as in `sima2.training.rollout`), then `vector_env.step` on the host. What the gymnasium
env reports in its `info` dict is turned into the typed `StepInfo` by `sima2.envs.adapter.step_info_from_gym`,
the one place that conversion is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, Transition
from sima2.envs.adapter import GymnasiumAdapter, step_info_from_gym
from sima2.training.config import TrainConfig
from sima2.training.loop import TrainState, guard_step
from sima2.training.optim import init_opt_state, make_optimizer, trainable_spec
from sima2.training.ppo import ppo_update
from sima2.training.recurrent import initial_carries, reset_where


class HostRollout:
    """PPO rollouts on a gymnasium vector env with a host loop, feeding the same `ppo_update`.

    `vector_env` is a `GymnasiumAdapter` (sima2 observations, its own episode resets), or a gymnasium vector
    env with same-step or next-step auto-reset: then `to_env_action` maps the agent's factored actions (E, A)
    to what the env expects and `to_obs` maps env observations to the agent's observation dict. A resume
    restarts the env (parameters, optimiser and keys still resume exactly).
    """

    def __init__(
        self,
        agent: AbstractAgent,
        vector_env: Any,
        num_steps: int,
        *,
        to_env_action: Callable[[np.ndarray], Any] = lambda a: a,
        to_obs: Callable[[Any], PyTree] = lambda o: o,
        seed: int = 0,
    ):
        self.env = vector_env
        self.num_steps = num_steps
        self.to_env_action = to_env_action
        self.to_obs = to_obs
        self.num_envs = vector_env.num_envs
        if isinstance(vector_env, GymnasiumAdapter):
            self.obs = vector_env.reset(seed=seed)
        else:
            obs, _ = vector_env.reset(seed=seed)
            self.obs = to_obs(obs)
        self.carry = initial_carries(agent, self.num_envs)
        self.first = np.ones(self.num_envs, bool)
        self.episode_return = np.zeros(self.num_envs, np.float32)
        self.episode_length = np.zeros(self.num_envs, np.int32)

        @eqx.filter_jit
        def act(model: AbstractAgent, key: PRNGKeyArray, obs: PyTree, carry: PyTree, first: Array) -> tuple:
            carry = reset_where(first, initial_carries(model, first.shape[0]), carry)
            return jax.vmap(model.act)(jax.random.split(key, first.shape[0]), obs, carry)

        self._act = act

    def _env_step(self, action: np.ndarray) -> tuple[PyTree, np.ndarray, np.ndarray, Any]:
        """One step of every env: (agent observations, rewards, done flags, `StepInfo`)."""
        if isinstance(self.env, GymnasiumAdapter):
            obs, reward, done, info = self.env.step(action)
            return obs, np.asarray(reward, np.float32), np.asarray(done), info
        next_obs, reward, terminated, truncated, info = self.env.step(self.to_env_action(action))
        reward = np.asarray(reward, np.float32)
        step_info = step_info_from_gym(terminated, truncated, reward, info)
        return self.to_obs(next_obs), reward, np.logical_or(terminated, truncated), step_info

    def collect(self, model: AbstractAgent, key: PRNGKeyArray) -> tuple[Transition, PyTree, Array]:
        """Run `num_steps` env steps with `model`; returns (transitions, start carries, bootstrap values).

        What the env returns stays on the host (NumPy, and the typed `StepInfo` built on the CPU) until the
        rollout ends, then goes to the accelerator in one transfer: no copy per step, only the agent's
        actions come back each step."""
        start_carry = self.carry
        host_steps: list[dict[str, Any]] = []
        outs = []
        keys = jax.random.split(key, self.num_steps + 1)
        cpu = jax.devices("cpu")[0]
        for step_key in keys[:-1]:
            action, carry, out = self._act(model, step_key, self.obs, self.carry, jnp.asarray(self.first))
            host_action = np.asarray(action)
            with jax.default_device(cpu):
                next_obs, reward, done, step_info = self._env_step(host_action)
            self.episode_return += reward
            self.episode_length += 1
            host_steps.append({
                "obs": jax.tree.map(np.asarray, self.obs),
                "action": host_action.astype(np.int32),
                "reward": reward,
                "done": done,
                "first": self.first,
                "info": step_info,
                "episode_return": self.episode_return.copy(),
                "episode_length": self.episode_length.copy(),
            })
            outs.append(out)
            self.episode_return[done] = 0.0
            self.episode_length[done] = 0
            self.obs, self.carry, self.first = next_obs, carry, done
        stacked = jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *host_steps))
        transitions = Transition(agent=jax.tree.map(lambda *xs: jnp.stack(xs), *outs), **stacked)
        _, _, out = self._act(model, keys[-1], self.obs, self.carry, jnp.asarray(self.first))
        return transitions, start_carry, out.value


@runtime_checkable
class RolloutSource(Protocol):
    """What `make_host_ppo` collects from: `HostRollout`, or the team worlds' `sima2.training.team.TeamRollout`."""

    def collect(self, model: AbstractAgent, key: PRNGKeyArray) -> tuple[Transition, PyTree, Array]: ...


def make_host_ppo(
    agent: AbstractAgent,
    rollout: RolloutSource,
    config: TrainConfig,
    *,
    filter_spec: PyTree | None = None,
) -> tuple[Callable[[PRNGKeyArray], TrainState], Callable[[TrainState, Any], tuple[TrainState, dict]]]:
    """`(init_fn, step_fn)` for PPO on a host-stepped env; the update is the jitted `ppo_update`."""
    optimizer = make_optimizer(config.optim)
    spec = trainable_spec(agent, filter_spec)

    def init_fn(key: PRNGKeyArray) -> TrainState:
        return TrainState.create(agent, init_opt_state(optimizer, agent, spec), key)

    def update(state: TrainState, trajectory: Transition, start_carry: PyTree, last_value: Array) -> tuple:
        return ppo_update(state, trajectory, start_carry, last_value, optimizer=optimizer, spec=spec, config=config.ppo)

    guarded_update = eqx.filter_jit(guard_step(lambda state, batch: update(state, *batch), config.guard))

    def step_fn(state: TrainState, batch: Any = None) -> tuple[TrainState, dict]:
        del batch
        key, rollout_key = jax.random.split(state.key)
        trajectory, start_carry, last_value = rollout.collect(state.model, rollout_key)
        return guarded_update(eqx.tree_at(lambda s: s.key, state, key), (trajectory, start_carry, last_value))

    return init_fn, step_fn


__all__ = ["HostRollout", "RolloutSource", "make_host_ppo"]
