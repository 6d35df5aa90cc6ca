"""The reward-shaping formula and its one set of defaults, shared by the functional `RewardShaper`
(`sima2.envs.wrappers`) and the gymnasium one (`sima2.envs.gymnasium_wrappers`).

    reward = success * [task succeeded] + invalid_move * [move refused]
             + new_region * [first visit of the agent's region this episode]
             + (gamma * phi(s') - phi(s))          with phi(s) = -potential * distance_to_goal(s)
             + env_reward * (wrapped env's reward)

`phi` is 0 at terminal states (so potential shaping keeps optimal policies, Ng et al. 1999) and where the
distance is unknown or infinite. The defaults are the seed's: completion +1, invalid move -0.1, new region
+0.5, no potential term, the wrapped env's own reward not added.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

REWARD_TERMS = ("reward_success", "reward_invalid_move", "reward_exploration", "reward_potential", "reward_env")


@dataclasses.dataclass(frozen=True)
class ShapingCoefficients:
    """Coefficients of the shaping terms; regions are square blocks of `region_size` grid cells."""

    success: float = 1.0
    invalid_move: float = -0.1
    new_region: float = 0.5
    potential: float = 0.0
    gamma: float = 0.99
    env_reward: float = 0.0
    region_size: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.region_size, int | float) and self.region_size > 0):
            raise ValueError(f"region_size must be a positive number of grid cells, got {self.region_size!r}")


DEFAULT_SHAPING = ShapingCoefficients()


def potential_of(coefficient: Any, distance: Any) -> Float[Array, ""]:
    """phi = -coefficient * distance; an unknown (NaN) or unreachable (inf) goal contributes 0."""
    distance = jnp.asarray(distance, jnp.float32)
    return -coefficient * jnp.where(jnp.isfinite(distance), distance, 0.0)


def shaping_terms(
    c: Any,
    *,
    success: Any,
    invalid_move: Any,
    new_region_visit: Any,
    potential_before: Any,
    potential_after: Any,
    terminated: Any,
    env_reward: Any,
) -> dict[str, Float[Array, ""]]:
    """Each term of one step's shaped reward (their sum is the reward). `c` has the coefficient attributes
    of `ShapingCoefficients` (floats or arrays); the signals are scalars or arrays of one shape."""
    kept = 1.0 - jnp.asarray(terminated, jnp.float32)
    terms = {
        "reward_success": c.success * jnp.asarray(success, jnp.float32),
        "reward_invalid_move": c.invalid_move * jnp.asarray(invalid_move, jnp.float32),
        "reward_exploration": c.new_region * jnp.asarray(new_region_visit, jnp.float32),
        "reward_potential": c.gamma * kept * potential_after - potential_before,
        "reward_env": c.env_reward * jnp.asarray(env_reward, jnp.float32),
    }
    return {name: jnp.asarray(value, jnp.float32) for name, value in terms.items()}
