"""Policy: the multimodal actor-critic (image + language + proprio fusion, GRU memory, factorised actions)
and the composed `Agent` (perception + planner + policy) that implements the agent protocol."""

from sima2.policy.actor_critic import ActorCritic, ActorCriticConfig, FusionBlock
from sima2.policy.agent import AGENT_CONFIG_NAME, AGENT_WEIGHTS_NAME, PRESETS, Agent, AgentConfig
from sima2.policy.distributions import MASKED_LOGIT, FactorisedCategorical, check_action_mask

__all__ = [
    "AGENT_CONFIG_NAME",
    "AGENT_WEIGHTS_NAME",
    "MASKED_LOGIT",
    "PRESETS",
    "ActorCritic",
    "ActorCriticConfig",
    "Agent",
    "AgentConfig",
    "FactorisedCategorical",
    "FusionBlock",
    "check_action_mask",
]
