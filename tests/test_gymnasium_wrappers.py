"""Tests for the gymnasium wrappers: RewardShaper, SafetyFilter and the hang-proof RollbackWrapper.

Kept free of JAX imports: the RollbackWrapper's worker processes import this module to rebuild the envs.
"""

import time

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sima2.envs.gymnasium_wrappers import RewardShaper, RollbackWrapper, SafetyFilter

LEFT, RIGHT, HANG, NOOP = range(4)
LENGTH = 10


class LineEnv(gym.Env):
    """Walk along a line of LENGTH cells to the goal at the right end; action HANG never returns."""

    def __init__(self, max_steps: int = 50):
        self.observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(0, LENGTH, (1,), np.float32)})
        self.action_space = gym.spaces.Discrete(4)
        self.max_steps = max_steps

    def _info(self, bumped: bool = False, success: bool = False) -> dict:
        return {
            "agent_pos": np.array([self.pos + 0.5, 0.5]),
            "distance_to_goal": float(LENGTH - 1 - self.pos),
            "success": success,
            "invalid_move": bumped,
        }

    def _obs(self) -> dict:
        return {"pos": np.array([self.pos], np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = int(self.np_random.integers(0, LENGTH - 1)), 0
        return self._obs(), self._info()

    def step(self, action):
        if action == HANG:
            time.sleep(10**6)
        target = self.pos + {LEFT: -1, RIGHT: 1, NOOP: 0}[int(action)]
        bumped = not 0 <= target < LENGTH
        self.pos = min(max(target, 0), LENGTH - 1)
        self.t += 1
        success = self.pos == LENGTH - 1
        return self._obs(), float(success), success, self.t >= self.max_steps, self._info(bumped, success)


def make_line_env() -> gym.Env:
    return LineEnv()


# ---------------------------------------------------------------------------------------------- RewardShaper


@settings(max_examples=25, deadline=None)
@given(
    actions=st.lists(st.sampled_from([LEFT, RIGHT, NOOP]), min_size=1, max_size=40),
    seed=st.integers(0, 1000),
    potential=st.floats(0.0, 1.0),
)
def test_gym_reward_terms_add_up_and_regions_pay_once_per_episode(actions, seed, potential):
    env = RewardShaper(LineEnv(), potential=potential, gamma=0.9, region_size=2.0)
    _, info = env.reset(seed=seed)
    seen = {int(info["agent_pos"][0] // 2)}
    previous_distance = info["distance_to_goal"]
    for action in actions:
        _, reward, terminated, truncated, info = env.step(action)
        terms = [info[k] for k in ("reward_success", "reward_invalid_move", "reward_exploration")]
        # The shared shaping formula (sima2.envs.shaping) computes in float32: the default coefficients
        # +1 / -0.1 / +0.5 are their float32 values, exactly.
        assert terms == [
            float(np.float32(1.0) * info["success"]),
            float(np.float32(-0.1) * info["invalid_move"]),
            float(np.float32(0.5) * (info["agent_pos"][0] // 2 not in seen)),
        ]
        phi_next = 0.0 if terminated else -potential * info["distance_to_goal"]
        expected_potential = 0.9 * phi_next + potential * previous_distance
        assert info["reward_potential"] == pytest.approx(expected_potential, rel=1e-5, abs=1e-5)
        assert reward == pytest.approx(sum(terms) + info["reward_potential"] + info["reward_env"], rel=1e-6)
        seen.add(int(info["agent_pos"][0] // 2))
        previous_distance = info["distance_to_goal"]
        if terminated or truncated:
            _, info = env.reset()
            seen, previous_distance = {int(info["agent_pos"][0] // 2)}, info["distance_to_goal"]


def test_gym_reward_shaper_rejects_bad_region_size():
    with pytest.raises(ValueError, match="region_size"):
        RewardShaper(LineEnv(), region_size=-1.0)


# ---------------------------------------------------------------------------------------------- SafetyFilter


def left_at_wall_or_hang(env: gym.Env, action) -> bool:
    return int(action) == HANG or (int(action) == LEFT and env.unwrapped.pos <= 1)


@settings(max_examples=25, deadline=None)
@given(actions=st.lists(st.integers(0, 3), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_gym_filter_never_lets_a_blocked_action_through(actions, seed):
    env = SafetyFilter(LineEnv(), is_destructive=left_at_wall_or_hang, safe_action=NOOP)
    obs, info = env.reset(seed=seed)
    for action in actions:
        before = LineEnv()
        before.pos = env.unwrapped.pos
        expected_mask = np.array([not left_at_wall_or_hang(before, a) for a in range(4)])
        np.testing.assert_array_equal(obs["action_mask"], expected_mask)
        obs, _, terminated, truncated, info = env.step(action)  # HANG would block forever if let through
        assert info["safety_blocked"] == left_at_wall_or_hang(before, action)
        assert not left_at_wall_or_hang(before, info["executed_action"])
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            obs, info = env.reset()


def test_gym_filter_multidiscrete_mask_and_errors():
    class Factored(gym.Env):
        observation_space = gym.spaces.Box(0, 1, (1,), np.float32)
        action_space = gym.spaces.MultiDiscrete([3, 2])

        def reset(self, *, seed=None, options=None):
            return np.zeros(1, np.float32), {}

        def step(self, action):
            return np.zeros(1, np.float32), 0.0, False, False, {}

    env = SafetyFilter(Factored(), is_destructive=lambda env, a: a[0] == 2 or (a[0] == 1 and a[1] == 1))
    _, info = env.reset()
    np.testing.assert_array_equal(info["action_mask"], [True, True, False, True, True])
    _, _, _, _, info = env.step(np.array([1, 1]))
    assert info["safety_blocked"]
    np.testing.assert_array_equal(info["executed_action"], [0, 0])
    with pytest.raises(TypeError, match="is_destructive"):
        SafetyFilter(LineEnv(), is_destructive=None)


# ------------------------------------------------------------------------------------------- RollbackWrapper


def test_hanging_step_is_cut_off_restored_and_stepping_goes_on():
    env = RollbackWrapper(
        make_line_env, timeout_s=1.0, penalty=0.5, fallback=lambda obs: RIGHT, fallback_steps=1
    )
    try:
        obs, _ = env.reset(seed=4)
        start = float(obs["pos"][0])
        obs, *_ = env.step(NOOP)
        good_obs, *_ = env.step(LEFT if start > 0 else NOOP)
        started = time.monotonic()
        obs, reward, terminated, truncated, info = env.step(HANG)
        assert time.monotonic() - started < env.timeout_s + 2.0
        assert info["rollback"] and info["rollback_count"] == 1
        assert reward == -0.5 and not terminated and not truncated
        np.testing.assert_array_equal(obs["pos"], good_obs["pos"])
        # The fallback controller acts next (RIGHT whatever we ask), from the restored state.
        obs, _, _, _, info = env.step(HANG)
        assert info["fallback_active"] and not info["rollback"]
        np.testing.assert_array_equal(obs["pos"], good_obs["pos"] + 1)
        obs, _, _, _, info = env.step(LEFT)
        assert not info["fallback_active"] and info["fallback_step_count"] == 1
        np.testing.assert_array_equal(obs["pos"], good_obs["pos"])
    finally:
        env.close()


def test_rollback_to_reset_truncates_and_next_reset_works():
    env = RollbackWrapper(make_line_env, timeout_s=1.0, rollback_to="reset")
    try:
        env.reset(seed=1)
        _, reward, terminated, truncated, info = env.step(HANG)
        assert truncated and not terminated and info["rollback"] and reward == -1.0
        with pytest.raises(RuntimeError, match="reset"):
            env.step(NOOP)
        obs, _ = env.reset(seed=1)
        obs2, *_ = env.step(RIGHT)
        assert obs2["pos"][0] == obs["pos"][0] + 1
    finally:
        env.close()


def test_rollback_wrapper_rejects_bad_input():
    with pytest.raises(ValueError, match="timeout_s"):
        RollbackWrapper(make_line_env, timeout_s=0.0)
    with pytest.raises(ValueError, match="rollback_to"):
        RollbackWrapper(make_line_env, rollback_to="undo")
    with pytest.raises(ValueError, match="fallback"):
        RollbackWrapper(make_line_env, fallback_steps=3)
    with pytest.raises(TypeError, match="env"):
        RollbackWrapper(42)


# ----------------------------------------------------------------------------------------------- composition


def no_hang(env: gym.Env, action) -> bool:
    return int(action) == HANG


def composed_env() -> gym.Env:
    inner = lambda: SafetyFilter(RewardShaper(LineEnv()), is_destructive=no_hang, safe_action=NOOP)
    return RewardShaper(RollbackWrapper(inner, timeout_s=5.0), new_region=0.25)


def test_gym_wrappers_compose_in_a_vector_env():
    envs = gym.vector.SyncVectorEnv(
        [
            composed_env,
            lambda: SafetyFilter(RewardShaper(LineEnv()), is_destructive=no_hang, safe_action=NOOP),
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    try:
        obs, _ = envs.reset(seed=0)
        assert obs["action_mask"].shape == (2, 4)
        for _ in range(12):
            obs, reward, terminated, truncated, info = envs.step(np.array([HANG, HANG]))
            assert info["safety_blocked"].all() and not info["rollback"][0]
            assert set(np.unique(info["reward_exploration"][0])) <= {0.0, 0.25}
    finally:
        envs.close()
