"""A centralised critic for multi-agent PPO in the team worlds: during training the value of each agent may
read what every agent of its world observes; the policy, and so the deployed agent, reads its own
observation only.

    critic = CentralisedCritic.around(agent, num_agents=2, key=key)   # PPO trains `critic`
    agent = critic.agent                                               # what is deployed and saved

The team rollout adds the privileged observation `team` to every agent's observation during training (all
agents' proprio of that world, in agent order: where each is, what it holds, what it heard). The value is the
agent's own estimate plus a correction an MLP reads from `team`, so the critic starts as the agent's own value
(the correction's last layer starts at zero) and learns what the others' state adds.
"""

from __future__ import annotations

import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, ActOutput, Observation

TEAM_OBSERVATION = "team"  # the observation key of the privileged team view


class CentralisedCritic(AbstractAgent):
    """`agent`'s policy with a value that also reads the `team` observation."""

    agent: AbstractAgent
    correction: eqx.nn.MLP

    @classmethod
    def around(
        cls, agent: AbstractAgent, *, num_agents: int, proprio_size: int, key: PRNGKeyArray, width: int = 64
    ) -> CentralisedCritic:
        """A critic around `agent` for teams of `num_agents` with `proprio_size` proprio each."""
        mlp = eqx.nn.MLP(num_agents * proprio_size, "scalar", width, 2, activation=jax.nn.silu, key=key)
        last = mlp.layers[-1]
        mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                          (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))  # fmt: skip
        return cls(agent, mlp)

    def _team_value(self, obs: Observation) -> Float[Array, ""]:
        if TEAM_OBSERVATION not in obs:
            raise ValueError(
                f"a CentralisedCritic reads the observation {TEAM_OBSERVATION!r} (every agent's proprio), which "
                "the team rollout adds during training; deploy `critic.agent` instead"
            )
        return self.correction(obs[TEAM_OBSERVATION])

    def initial_carry(self) -> PyTree:
        return self.agent.initial_carry()

    def act(
        self,
        key: PRNGKeyArray,
        obs: Observation,
        carry: PyTree,
        *,
        deterministic: bool = False,
        instruction: PyTree | None = None,
    ) -> tuple[Int[Array, " F"], PyTree, ActOutput]:
        action, carry, out = self.agent.act(key, obs, carry, deterministic=deterministic, instruction=instruction)
        return action, carry, eqx.tree_at(lambda o: o.value, out, out.value + self._team_value(obs))

    def observation_features(self, obs: Observation, instruction: PyTree | None = None) -> PyTree:
        return self.agent.observation_features(obs, instruction), self._team_value(obs)

    def instruction_features(self, instruction: Int[Array, " L"]) -> PyTree | None:
        return self.agent.instruction_features(instruction)

    def instruction_features_frozen(self) -> bool:
        return self.agent.instruction_features_frozen()

    def evaluate_features(
        self, features: PyTree, carry: PyTree, action: Int[Array, "*K F"]
    ) -> tuple[Float[Array, "*K"], Float[Array, ""], Float[Array, ""], PyTree]:
        own, team_value = features
        log_prob, entropy, value, carry = self.agent.evaluate_features(own, carry, action)
        return log_prob, entropy, value + team_value, carry

    def critic_filter(self) -> PyTree[bool]:
        return CentralisedCritic(self.agent.critic_filter(), jax.tree.map(eqx.is_inexact_array, self.correction))

    def trainable_filter(self) -> PyTree[bool]:
        return CentralisedCritic(self.agent.trainable_filter(), jax.tree.map(eqx.is_inexact_array, self.correction))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes the agent alone: the critic serves training only."""
        return self.agent.save_pretrained(save_directory)


def team_observation(obs: Observation) -> Observation:
    """Every agent's observation of a batch of team worlds (`[W, A, ...]` leaves) with the `team` view added:
    the world's proprio of all agents, flattened in agent order, for each agent."""
    proprio = obs["proprio"]
    worlds, agents = proprio.shape[:2]
    team = jnp.broadcast_to(proprio.reshape(worlds, 1, -1), (worlds, agents, agents * proprio.shape[-1]))
    return {**obs, TEAM_OBSERVATION: team}


__all__ = ["TEAM_OBSERVATION", "CentralisedCritic", "team_observation"]
