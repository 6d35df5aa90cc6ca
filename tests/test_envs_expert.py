"""The shortest-path expert solves generated tasks of every level within the step limit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sima2.envs as envs

DEFAULT_LEVELS = ("GoTo", "Pickup", "Open", "PutNext", "Sequence")
HARD_LEVELS = tuple(name for name in envs.LEVELS if name not in DEFAULT_LEVELS)


def expert_success_rate(level: str, num_worlds: int, seed: int = 0, split: str = "train") -> float:
    """Fraction of freshly generated episodes the expert finishes successfully (first episode per world)."""
    env, params = envs.make(f"sima2/{level}-v0", split=split, image_size=8)

    @jax.jit
    def run(key):
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_worlds), params)

        def body(carry, _):
            state, finished, success = carry
            action = jax.vmap(env.expert_action, in_axes=(0, None))(state, params)
            stepped, _, info = jax.vmap(env.transition, in_axes=(0, 0, None))(state, action, params)
            success = success | (~finished & info["success"])
            finished = finished | info["success"] | info["timeout"]
            return (stepped, finished, success), None

        init = (state, jnp.zeros(num_worlds, bool), jnp.zeros(num_worlds, bool))
        (_, _, success), _ = jax.lax.scan(body, init, None, length=env.level.max_steps)
        return success

    return float(np.mean(np.asarray(run(jax.random.key(seed)))))


@pytest.mark.parametrize("level", DEFAULT_LEVELS)
def test_expert_solves_default_levels(level):
    assert expert_success_rate(level, num_worlds=200) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("level", HARD_LEVELS)
@pytest.mark.parametrize("split", ["train", "heldout_layouts"])
def test_expert_solves_hard_levels(level, split):
    assert expert_success_rate(level, num_worlds=512, seed=1, split=split) >= 0.99
