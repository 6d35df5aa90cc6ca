"""Tests for the gymnasium adapter, end to end on MiniGrid (the `minigrid` test extra)."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sima2.contract import StepInfo
from sima2.envs.adapter import MINIGRID_ACTIONS, DiscreteActionMap, GymnasiumAdapter, QuietStdout

minigrid = pytest.importorskip("minigrid")
from minigrid.wrappers import RGBImgPartialObsWrapper  # noqa: E402

LEFT, RIGHT, FORWARD = (MINIGRID_ACTIONS.index(a) for a in ("left", "right", "forward"))


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "get to the green goal square".split()
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")


def make_empty_room() -> gym.Env:
    return RGBImgPartialObsWrapper(gym.make("MiniGrid-Empty-5x5-v0"), tile_size=4)


def test_minigrid_end_to_end_reaches_goal_with_same_step_reset():
    tokenizer = word_tokenizer()
    adapter = GymnasiumAdapter(
        make_empty_room, num_envs=2, image_size=(16, 16), instruction_length=8, tokenizer=tokenizer
    )
    try:
        assert adapter.action_nvec == (7, 1, 1)
        obs = adapter.reset(seed=0)
        assert obs["image"].shape == (2, 16, 16, 3) and obs["image"].dtype == jnp.uint8
        expected_ids = tokenizer("get to the green goal square", padding="max_length", max_length=8)[
            "input_ids"
        ]
        np.testing.assert_array_equal(obs["instruction"], [expected_ids, expected_ids])
        np.testing.assert_array_equal(obs["proprio"], [[1, 0, 0, 0]] * 2)  # facing east
        # Empty 5x5: start (1, 1) facing east, goal at (3, 3).
        for key in (FORWARD, FORWARD, RIGHT, FORWARD):
            obs, reward, done, info = adapter.step(np.array([[key, 0, 0]] * 2))
            assert not done.any()
        np.testing.assert_array_equal(obs["proprio"][:, 1], [1, 1])  # turned south
        obs, reward, done, info = adapter.step(np.array([[FORWARD, 0, 0], [LEFT, 0, 0]]))
        np.testing.assert_array_equal(done, [True, False])
        np.testing.assert_array_equal(info.success, [True, False])
        np.testing.assert_array_equal(info.terminated, [True, False])
        assert float(reward[0]) > 0 and float(reward[1]) == 0
        np.testing.assert_array_equal(obs["proprio"][0], [1, 0, 0, 0])  # env 0 already reset
    finally:
        adapter.close()


def test_adapter_drives_a_jitted_vmapped_policy():
    adapter = GymnasiumAdapter(make_empty_room, num_envs=3, image_size=(8, 8), tokenizer=word_tokenizer())

    @jax.jit
    def act(key, obs):
        keys = jax.random.split(key, obs["image"].shape[0])
        logits = jnp.zeros((7,)) + obs["proprio"].sum() * 0.0
        return jax.vmap(lambda k: jnp.stack([jax.random.categorical(k, logits), 0, 0]))(keys)

    try:
        obs = adapter.reset(seed=1)
        key = jax.random.key(0)
        returns = np.zeros(3)
        for _ in range(30):
            key, sub = jax.random.split(key)
            obs, reward, done, info = adapter.step(act(sub, obs))
            returns += np.asarray(reward)
            assert obs["image"].shape == (3, 8, 8, 3) and reward.shape == done.shape == (3,)
            assert isinstance(info, StepInfo) and info.success.shape == info.truncated.shape == (3,)
            assert not np.any(np.asarray(info.truncated & info.terminated))
        assert np.all(returns >= 0)
    finally:
        adapter.close()


def test_action_map_and_bad_input():
    table = np.array([[[FORWARD], [LEFT], [RIGHT]]])  # one key, three look directions
    action_map = DiscreteActionMap(table)
    assert action_map.nvec == (1, 3, 1)
    np.testing.assert_array_equal(action_map(np.array([[0, 1, 0], [0, 2, 0]])), [LEFT, RIGHT])
    with pytest.raises(ValueError, match="out of range"):
        action_map(np.array([[0, 3, 0]]))
    # The inverse turns an expert's native actions into sima2 factors that map back to them.
    native = np.array([RIGHT, FORWARD, LEFT, RIGHT])
    factors = action_map.inverse(native)
    assert factors.shape == (4, 3) and factors.dtype == np.int32
    np.testing.assert_array_equal(action_map(factors), native)
    np.testing.assert_array_equal(DiscreteActionMap.for_discrete(7).inverse([5, 0]), [[5, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="native action 6 is not in the action table"):
        action_map.inverse([6])
    with pytest.raises(ValueError, match="integer"):
        DiscreteActionMap(np.zeros((2, 2)))
    if not _world_tokenizer_available():
        with pytest.raises(ValueError, match="tokenizer"):
            GymnasiumAdapter(make_empty_room, tokenizer=None)
    with pytest.raises(ValueError, match="num_envs"):
        GymnasiumAdapter(make_empty_room, num_envs=0)


def _world_tokenizer_available() -> bool:
    try:
        from sima2.envs import get_tokenizer  # noqa: F401
    except ImportError:
        return False
    return True


class Chatty(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        print("Sampling rejected: unreachable object")
        return np.full((4, 4, 3), 7, np.uint8), {}

    def step(self, action):
        print("noise")
        return np.full((4, 4, 3), 7, np.uint8), 0.0, False, False, {}


def test_quiet_silences_env_stdout_and_array_observations_work(capsys):
    adapter = GymnasiumAdapter(Chatty, num_envs=2, image_size=(2, 2))
    obs = adapter.reset(seed=0)
    adapter.step(np.zeros((2, 3), np.int32))
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(obs["image"], np.full((2, 2, 2, 3), 7))
    np.testing.assert_array_equal(obs["instruction"], np.zeros((2, 16)))
    assert isinstance(adapter.envs.envs[0], QuietStdout)
    adapter.close()


def test_a_mission_longer_than_the_instruction_length_is_refused_with_the_numbers():
    adapter = GymnasiumAdapter(make_empty_room, num_envs=1, image_size=(8, 8), instruction_length=4,
                               tokenizer=word_tokenizer())
    try:
        with pytest.raises(ValueError, match=r"6 tokens long, more than the adapter's instruction_length=4"):
            adapter.reset(seed=0)  # "get to the green goal square"
    finally:
        adapter.close()
