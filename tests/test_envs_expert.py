"""The shortest-path expert solves generated tasks of every level within the step limit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sima2.envs as envs
from sima2.envs.expert import UNREACHABLE, distance_field, distances_at, passable_grid, subgoal_goal_cells

DEFAULT_LEVELS = ("GoTo", "Pickup", "Open", "PutNext", "Sequence")
HARD_LEVELS = tuple(name for name in envs.LEVELS if name not in DEFAULT_LEVELS)


def expert_episodes(level: str, num_worlds: int, seed: int = 0, split: str = "train") -> dict[str, np.ndarray]:
    """The expert's first episode in each of `num_worlds` fresh worlds: success, path length travelled and
    the world's optimal path length, as the finishing step's info reports them."""
    env, params = envs.make(f"sima2/{level}-v0", split=split, image_size=8)
    keys = ("success", "path_length", "optimal_path_length")

    @jax.jit
    def run(key):
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_worlds), params)

        def body(carry, _):
            state, finished, kept = carry
            action = jax.vmap(env.expert_action, in_axes=(0, None))(state, params)
            stepped, _, info = jax.vmap(env.transition, in_axes=(None, 0, 0, None))(key, state, action, params)
            ends = ~finished & info.done
            kept = {k: jnp.where(ends, getattr(info, k), kept[k]) for k in keys}
            return (stepped, finished | ends, kept), None

        kept = {k: jnp.zeros(num_worlds, jnp.bool_ if k == "success" else jnp.float32) for k in keys}
        (_, _, kept), _ = jax.lax.scan(body, (state, jnp.zeros(num_worlds, bool), kept), None,
                                       length=env.level.max_steps)
        return kept

    return {k: np.asarray(v) for k, v in run(jax.random.key(seed)).items()}


def expert_success_rate(level: str, num_worlds: int, seed: int = 0, split: str = "train") -> float:
    """Fraction of freshly generated episodes the expert finishes successfully (first episode per world)."""
    return float(np.mean(expert_episodes(level, num_worlds, seed, split)["success"]))


@pytest.mark.parametrize("level", DEFAULT_LEVELS)
def test_expert_solves_default_levels(level):
    assert expert_success_rate(level, num_worlds=200) >= 0.99


@pytest.mark.parametrize("level", ["GoTo", "Sequence"])
def test_expert_navigates_efficiently(level):
    """The world's optimal path is a lower bound the shortest-path expert nearly meets: its navigation
    efficiency (optimal / travelled) is high but, since it moves cell centre to cell centre, not above 1."""
    episodes = expert_episodes(level, num_worlds=128)
    won = episodes["success"]
    optimal, travelled = episodes["optimal_path_length"][won], episodes["path_length"][won]
    assert (optimal >= 0).all() and (travelled >= 0).all() and optimal.max() >= 3
    efficiency = np.minimum(optimal / np.maximum(travelled, 1e-6), 1.0)
    assert 0.8 <= efficiency.mean() <= 1.0
    assert np.mean(optimal <= travelled + 1.0) >= 0.95  # the agent never beats the optimum by more than a cell


@pytest.mark.slow
@pytest.mark.parametrize("level", HARD_LEVELS)
@pytest.mark.parametrize("split", ["train", "heldout_layouts"])
def test_expert_solves_hard_levels(level, split):
    assert expert_success_rate(level, num_worlds=512, seed=1, split=split) >= 0.99


@pytest.mark.parametrize("level", ["sima2/PutNext-v0", "sima2/Unlock-v0", "sima2/SequenceMultiRoom-v0"])
def test_bitmask_bfs_equals_the_distance_field_at_every_cell(level):
    env, params = envs.make(level, image_size=8)
    states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.key(3), 24), params)[1]
    goal, passable = jax.jit(jax.vmap(lambda s: (subgoal_goal_cells(s), passable_grid(s))))(states)
    rows, cols = env.level.grid_shape
    # Every cell plus a ring outside the grid (UNREACHABLE there).
    r, c = np.meshgrid(np.arange(-1, rows + 1), np.arange(-1, cols + 1), indexing="ij")
    cells = jnp.asarray(np.stack([r.ravel(), c.ravel()], 1), jnp.int32)
    got = np.asarray(jax.jit(jax.vmap(distances_at, in_axes=(0, 0, None)))(goal, passable, cells))
    field = np.asarray(jax.jit(jax.vmap(distance_field))(goal, passable))
    expected = np.pad(field, ((0, 0), (1, 1), (1, 1)), constant_values=UNREACHABLE).reshape(len(field), -1)
    np.testing.assert_array_equal(got, expected)
    assert (expected < UNREACHABLE).any() and (expected == UNREACHABLE).any()
