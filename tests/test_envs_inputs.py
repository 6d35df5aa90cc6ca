"""Tests of how the built-in world handles bad inputs: action shapes and values, seeds, ids, sizes, videos."""

from __future__ import annotations

import re

import gymnasium
import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import sima2.envs as envs

SIZE = 16  # tiny images keep the tests fast


@pytest.fixture(scope="module")
def goto():
    return envs.make("sima2/GoTo-v0", image_size=SIZE)


@pytest.fixture
def no_runtime_checks():
    """Run as users do, without the test suite's jaxtyping/beartype hook: the library's own checks must fire."""
    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", previous)


@pytest.mark.parametrize("shape", [(2,), (4,), (1, 3)])
def test_step_refuses_actions_of_the_wrong_shape(goto, no_runtime_checks, shape):
    env, params = goto
    _, state = jax.jit(env.reset)(jax.random.key(0), params)  # one program, not one per operation
    action = jnp.ones(shape, jnp.int32)
    expected = re.escape("shape (3,)") + ".*" + re.escape(f"got shape {shape}")
    for step in (env.step, jax.jit(env.step)):
        with pytest.raises(ValueError, match=expected):
            step(jax.random.key(1), state, action, params)
    # Under vmap each world's action is (3,): a batch of (3,) actions works, a batch of shape-(4,) ones does not.
    keys = jax.random.split(jax.random.key(2), 2)
    _, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    batched_step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    assert batched_step(keys, states, jnp.ones((2, 3), jnp.int32), params)[2].shape == (2,)
    with pytest.raises(ValueError, match="got shape"):
        batched_step(keys, states, jnp.ones((2, 4), jnp.int32), params)


def test_out_of_range_action_values_are_clipped_for_everything(goto):
    env, params = goto
    _, state = jax.jit(env.reset)(jax.random.key(0), params)  # one program, not one per operation
    step = jax.jit(env.step)
    key = jax.random.key(1)
    for bad, clipped in [([-1, -1, -1], [0, 0, 0]), ([100, 100, 100], [6, 6, 2])]:
        out = step(key, state, jnp.array(bad, jnp.int32), params)
        want = step(key, state, jnp.array(clipped, jnp.int32), params)
        assert int(out[4].elapsed_ticks) == envs.DURATION_TICKS[clipped[2]]
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_vector_env_checks_actions_seeds_and_render_mode():
    vec = envs.Sima2VectorEnv(2, image_size=SIZE)
    vec.reset(seed=0)
    for bad in ([[0, 0, 0], [9, 0, 0]], [[0, 0, 0], [0, -1, 0]]):
        with pytest.raises(ValueError, match="sub-env 1"):
            vec.step(np.array(bad))
    with pytest.raises(ValueError, match="integer"):
        vec.step(np.full((2, 3), 0.5))
    # Any non-negative int seeds, deterministically, as the single env does; negative ones are refused.
    first = vec.reset(seed=2**64)[0]["image"]
    np.testing.assert_array_equal(vec.reset(seed=2**64)[0]["image"], first)
    with pytest.raises(ValueError, match="seed"):
        vec.reset(seed=-1)
    # A list seeds each sub-env with its own seed: the world the single env makes from that seed.
    single = envs.Sima2GymEnv(image_size=SIZE)
    images = vec.reset(seed=[3, 2**70])[0]["image"]
    for i, seed in enumerate([3, 2**70]):
        np.testing.assert_array_equal(images[i], single.reset(seed=seed)[0]["image"])
    with pytest.raises(ValueError, match="list of 2 seeds"):
        vec.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="render_mode"):
        envs.Sima2VectorEnv(2, image_size=SIZE, render_mode="human")


def test_gym_env_refuses_non_integer_and_out_of_range_actions():
    env = envs.Sima2GymEnv(image_size=SIZE)
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.expert_action()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="integer"):
        env.step(np.array([1.9, 3.2, 1.5]))
    with pytest.raises(ValueError, match="within"):
        env.step(np.array([2**32 + 1, 3, 1]))
    env.step(np.array([1, 3, 1], np.uint8))


def test_make_checks_the_id_and_image_size_types(no_runtime_checks):
    for bad in (None, 3):
        with pytest.raises(TypeError, match="env_id"):
            envs.make(bad)
    with pytest.raises(TypeError, match="image_size"):
        envs.make("GoTo", image_size="64")


def test_make_takes_numpy_ints_as_image_size():
    env, _ = envs.make("GoTo", image_size=np.int64(32))
    assert (env.image_height, env.image_width) == (32, 32)
    env = gymnasium.make("sima2/GoTo-v0", image_size=(np.int32(16), np.int32(24))).unwrapped.env
    assert (env.image_height, env.image_width) == (16, 24)


def test_write_episode_checks_frames_fps_and_captions(tmp_path):
    frames = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(3)]
    with pytest.raises(TypeError, match="uint8"):
        envs.write_episode([f / 255.0 for f in frames], tmp_path / "float.gif")
    for fps in (0, -1):
        with pytest.raises(ValueError, match="fps"):
            envs.write_episode(frames, tmp_path / "fps.gif", fps=fps)
    assert envs.write_episode(frames, tmp_path / "none.gif", None).exists()
    assert envs.write_episode(frames, tmp_path / "gen.gif", (c for c in "abc")).exists()
