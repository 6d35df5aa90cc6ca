"""Tests of worlds that mix several levels in one env: padding keeps each level's world intact, the mixture
draws every level, `params.level` picks one, and bad level choices are refused by name."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sima2.envs as envs
from sima2.envs.world import generate, pad_world

SIZE = 16
STEPS = 24


def _expert_episode(env, params, state):
    """Images, rewards and success of `STEPS` expert steps from `state` (no reset)."""

    def one(state, _):
        action = env.expert_action(state, params)
        obs, state, reward, done, info = env.step_no_reset(jax.random.key(0), state, action, params)
        return state, (obs["image"], reward, info.success, info.agent_pos)

    return jax.lax.scan(one, state, None, length=STEPS)[1]


@pytest.mark.parametrize("name", ["Open", "Unlock", "GoToLoc"])
def test_a_padded_world_looks_and_plays_like_the_original(name):
    """Padding a level's world to the mixture's shape (more grid, objects and doors) changes no pixel, no
    expert action and no reward: the added cells are walls behind its outer walls, the added entities are
    invalid and off the grid."""
    mixture, _ = envs.make("sima2/AllFamilies-v0", image_size=SIZE)
    single, params = envs.make(f"sima2/{name}-v0", image_size=SIZE)
    grid = tuple(max(level.grid_shape[i] for level in mixture.levels) for i in range(2))
    key = jax.random.key(3)
    original = generate(key, single.level, params.split)
    padded = pad_world(original, grid, 6, 4)
    assert padded.wall.shape == grid and padded.obj_pos.shape == (6, 2) and padded.door_pos.shape == (4, 2)
    assert not bool(padded.obj_valid[single.level.num_objects:].any())
    np.testing.assert_array_equal(single.render(original), single.render(padded))
    assert single.instruction_text(original) == single.instruction_text(padded)
    assert single.plan_text(original) == single.plan_text(padded)
    run = jax.jit(lambda s: _expert_episode(single, params, s))
    for got, want in zip(run(padded), run(original), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert bool(run(original)[2].any()), "the expert finishes the task within the episode"


def test_the_mixture_draws_every_level_and_params_pick_one():
    env, params = envs.make("sima2/AllFamilies-v0", image_size=SIZE)
    assert env.level_names == tuple(envs.LEVELS) and int(params.level) == -1
    keys = jax.random.split(jax.random.key(0), 400)
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    _, state = reset(keys, params)
    counts = np.bincount(np.asarray(state.level), minlength=len(env.levels))
    assert counts.min() >= 20, counts  # uniform: 40 expected per level
    unlock = env.default_params("heldout_pairs", level="sima2/Unlock-v0")
    _, state = reset(keys, unlock)  # the program compiled above (un-jitted, reset and step run op by op: slow)
    assert np.all(np.asarray(state.level) == env.level_index("Unlock"))
    assert int(unlock.split) == envs.SPLITS.index("heldout_pairs")
    # Each level keeps its own step limit: an Unlock world times out at Unlock's max_steps.
    one = jax.tree.map(lambda x: x[0], state)  # env.reset(keys[0], unlock)
    one = eqx.tree_at(lambda s: s.time, one, jnp.int32(env.levels[env.level_index("Unlock")].max_steps - 1))
    _, _, _, done, info = eqx.filter_jit(env.step_no_reset)(keys[1], one, jnp.zeros(3, jnp.int32), unlock)
    assert bool(info.truncated) and bool(done)


def test_comma_joined_ids_and_bad_levels():
    env, params = envs.make("sima2/GoTo-v0, sima2/Pickup-v0", image_size=SIZE)
    assert env.level_names == ("GoTo", "Pickup") and env.max_steps == 32
    with pytest.raises(ValueError, match="mixes 2 levels"):
        _ = env.level
    with pytest.raises(ValueError, match="not one of this env's levels"):
        env.default_params(level="Unlock")
    with pytest.raises(ValueError, match="out of range"):
        env.default_params(level=5)
    with pytest.raises(ValueError, match="more than once"):
        envs.make("sima2/GoTo-v0,GoTo")
    with pytest.raises(ValueError, match="mixture of 10 levels"):
        envs.level_from_id("sima2/AllFamilies-v0")
    with pytest.raises(ValueError, match="non-empty"):
        envs.Sima2Env(levels=())
    single, _ = envs.make("sima2/GoTo-v0", image_size=SIZE)
    assert single.level.name == "GoTo" and int(single.default_params().level) == 0


def test_the_mixture_is_a_gymnasium_env():
    import gymnasium

    env = gymnasium.make("sima2/AllFamilies-v0", image_size=SIZE)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (SIZE, SIZE, 3) and isinstance(info["instruction_text"], str)
    obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
    assert env.observation_space.contains(obs)


def test_heldout_compositions_combine_clause_kinds_no_training_instruction_combines():
    """Two-step instructions: training worlds never pair the held-out clause kinds (open -> pick up, go to ->
    open), the heldout_compositions split only does, and each kind still occurs in training in its position."""
    from sima2.envs import vocabulary as voc
    from sima2.envs.world import HELDOUT_COMPOSITION_KINDS

    env, _ = envs.make("sima2/AllFamilies-v0", image_size=SIZE)
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(5), 256)

    def kinds(params):
        _, state = reset(keys, params)
        kind = np.asarray(state.stage_kind)
        two_step = np.asarray(state.num_stages) == 2
        return {(int(a), int(b)) for a, b in kind[two_step]}, np.asarray(state.level), two_step

    held = set(HELDOUT_COMPOSITION_KINDS)
    assert held == {(voc.OPEN, voc.PICKUP), (voc.GOTO, voc.OPEN)}
    for level in ("Sequence", "SequenceMultiRoom"):
        seen, _, _ = kinds(env.default_params("train", level=level))
        assert seen == {(voc.GOTO, voc.GOTO), (voc.GOTO, voc.PICKUP), (voc.OPEN, voc.GOTO), (voc.OPEN, voc.OPEN)}
        assert not seen & held
        seen, _, _ = kinds(env.default_params("heldout_compositions", level=level))
        assert seen == held
    # The mixture's heldout_compositions worlds are all two-step levels; the expert finishes them.
    params = env.default_params("heldout_compositions")
    seen, levels, two_step = kinds(params)
    assert two_step.all() and seen == held
    assert {env.level_names[i] for i in levels} == {"Sequence", "SequenceMultiRoom"}
    sequence, seq_params = envs.make("sima2/Sequence-v0", image_size=SIZE)
    seq_params = sequence.default_params("heldout_compositions")
    _, state = jax.jit(sequence.reset)(keys[0], seq_params)
    assert bool(_expert_episode(sequence, seq_params, state)[2].any())
    # A level without two-step instructions has no such split, and says which levels do.
    single, _ = envs.make("sima2/GoTo-v0", image_size=SIZE)
    assert "heldout_compositions" not in single.splits and "heldout_compositions" in env.splits
    with pytest.raises(ValueError, match="two-step instructions.*Sequence, SequenceMultiRoom"):
        single.default_params("heldout_compositions")
    with pytest.raises(ValueError, match="two-step instructions"):
        env.default_params("heldout_compositions", level="Pickup")
