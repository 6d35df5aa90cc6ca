"""Gymnasium front ends of the built-in world: a single `gymnasium.Env` and a natively vectorised
`gymnasium.vector.VectorEnv` (all sub-environments advance in ONE jitted call), registered as
`sima2/<Level>-v0` when `sima2.envs` is imported.

    env = gymnasium.make("sima2/GoTo-v0")
    envs = gymnasium.make_vec("sima2/GoTo-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from sima2.envs import vocabulary as voc
from sima2.envs.env import Sima2Env, make, reset_where_done
from sima2.envs.levels import LEVELS

RENDER_MODES = ("rgb_array", "rgb_array_topdown")


def observation_space(env: Sima2Env) -> spaces.Dict:
    """The gymnasium observation space of one world."""
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (env.image_height, env.image_width, 3), np.uint8),
            "instruction": spaces.Box(0, env.vocab_size - 1, (env.instruction_length,), np.int32),
            "proprio": spaces.Box(-np.inf, np.inf, (env.proprio_size,), np.float32),
        }
    )


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _seed_key(rng: np.random.Generator) -> jax.Array:
    return jax.random.key(int(rng.integers(0, 2**31 - 1)))


class Sima2GymEnv(gymnasium.Env):
    """One world of a level behind the standard gymnasium API (no auto-reset: call `reset` when done)."""

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 10}

    def __init__(
        self,
        level: str = "GoTo",
        split: str = "train",
        image_size: int = 64,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES} or None, got {render_mode!r}")
        self.env, self.params = make(level, split=split, image_size=image_size)
        self.render_mode = render_mode
        self.observation_space = observation_space(self.env)
        self.action_space = spaces.MultiDiscrete(np.array(self.env.action_nvec, np.int64))
        self._reset = jax.jit(self.env.reset)
        self._step = jax.jit(self.env.step_no_reset)
        self._topdown = jax.jit(self.env.render_topdown)
        self._state = None
        self._last_image: np.ndarray | None = None

    def _info(self, state, extra: dict | None = None) -> dict[str, Any]:
        info = {"instruction_text": self.env.instruction_text(state)}
        if extra is not None:
            info.update({k: np.asarray(v) for k, v in extra.items()})
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, self._state = self._reset(_seed_key(self.np_random), self.params)
        obs = _to_numpy(obs)
        self._last_image = obs["image"]
        return obs, self._info(self._state)

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, np.int32).reshape(-1)
        if action.shape != (3,) or not self.action_space.contains(action.astype(np.int64)):
            raise ValueError(f"action must be 3 factor indices within {self.env.action_nvec}, got {action}")
        obs, self._state, reward, terminated, truncated, info = self._step(self._state, action, self.params)
        obs = _to_numpy(obs)
        self._last_image = obs["image"]
        return obs, float(reward), bool(terminated), bool(truncated), self._info(self._state, info)

    def render(self):
        if self.render_mode == "rgb_array_topdown" and self._state is not None:
            return np.asarray(self._topdown(self._state))
        return self._last_image

    def expert_action(self) -> np.ndarray:
        """The shortest-path expert's action in the current state."""
        return np.asarray(jax.jit(self.env.expert_action)(self._state, self.params))


class Sima2VectorEnv(VectorEnv):
    """`num_envs` worlds stepped by one jitted, vmapped call. Auto-reset on the next step (NEXT_STEP)."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        level: str = "GoTo",
        split: str = "train",
        image_size: int = 64,
        render_mode: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env, self.params = make(level, split=split, image_size=image_size)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = observation_space(self.env)
        self.single_action_space = spaces.MultiDiscrete(np.array(self.env.action_nvec, np.int64))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        env, params = self.env, self.params

        def reset_all(key):
            return jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), params)

        def step_all(key, state, needs_reset, actions):
            stepped, reward, info = jax.vmap(env.transition, in_axes=(0, 0, None))(state, actions, params)
            # The same worlds as reset_all(key) would give, generated only for the sub-envs that reset.
            keys = jax.random.split(key, num_envs)
            reset = jax.vmap(reset_where_done, in_axes=(None, 0, 0, None, 0))
            state = reset(env.level, needs_reset, keys, params.split, stepped)
            obs = jax.vmap(env.observe)(state)
            reward = jnp.where(needs_reset, 0.0, reward)
            terminated = info["success"] & ~needs_reset
            truncated = info["timeout"] & ~needs_reset
            return obs, state, reward, terminated, truncated, info

        self._reset_all = jax.jit(reset_all)
        self._step_all = jax.jit(step_all)
        self._state = None
        self._needs_reset = np.zeros((num_envs,), bool)
        self._key = jax.random.key(0)
        self._last_images: np.ndarray | None = None

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if isinstance(seed, list):
            seed = seed[0]
        if seed is not None:
            self._key = jax.random.key(int(seed))
        self._key, key = jax.random.split(self._key)
        obs, self._state = self._reset_all(key)
        self._needs_reset = np.zeros((self.num_envs,), bool)
        obs = _to_numpy(obs)
        self._last_images = obs["image"]
        return obs, {}

    def step(self, actions):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, np.int32).reshape(self.num_envs, 3)
        self._key, key = jax.random.split(self._key)
        obs, self._state, reward, terminated, truncated, info = self._step_all(
            key, self._state, jnp.asarray(self._needs_reset), actions
        )
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        self._needs_reset = terminated | truncated
        obs = _to_numpy(obs)
        self._last_images = obs["image"]
        return obs, np.asarray(reward), terminated, truncated, _to_numpy(info)

    def render(self):
        return None if self._last_images is None else tuple(self._last_images)

    def instruction_texts(self) -> list[str]:
        """Instruction text of every sub-environment."""
        ids = np.asarray(self._state.instruction)
        return [voc.decode_ids(row) for row in ids]


def register_envs() -> None:
    """Register every level as `sima2/<Level>-v0` (idempotent)."""
    for name, level in LEVELS.items():
        if level.gym_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=level.gym_id,
            entry_point="sima2.envs.gym_env:Sima2GymEnv",
            vector_entry_point="sima2.envs.gym_env:Sima2VectorEnv",
            max_episode_steps=None,
            kwargs={"level": name},
        )
