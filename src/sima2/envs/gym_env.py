"""Gymnasium front ends of the built-in world: a single `gymnasium.Env` and a natively vectorised
`gymnasium.vector.VectorEnv` (all sub-environments advance in ONE jitted call), registered as
`sima2/<Level>-v0` when `sima2.envs` is imported.

    env = gymnasium.make("sima2/GoTo-v0")
    envs = gymnasium.make_vec("sima2/GoTo-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from sima2.contract import StepInfo, reset_where_done
from sima2.envs import vocabulary as voc
from sima2.envs.env import Sima2Env
from sima2.envs.levels import LEVELS, MIXTURES
from sima2.envs.make import ImageSize, make

RENDER_MODES = ("rgb_array", "rgb_array_topdown")


def observation_space(env: Sima2Env) -> spaces.Dict:
    """The gymnasium observation space of one world."""
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (env.image_height, env.image_width, 3), np.uint8),
            "instruction": spaces.Box(0, env.vocab_size - 1, (env.instruction_length,), np.int32),
            "proprio": spaces.Box(-np.inf, np.inf, (env.proprio_size,), np.float32),
            "touch": spaces.Box(-1.0, 1.0, (env.touch_size,), np.float32),
        }
    )


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def _seed_key(rng: np.random.Generator) -> jax.Array:
    return jax.random.key(int(rng.integers(0, 2**31 - 1)))


def _checked_seed(seed: Any, name: str = "seed") -> int:
    """A seed as a Python int: any non-negative int, as gymnasium's seeding accepts."""
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool | np.bool_):
        raise TypeError(f"{name} must be a non-negative int or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be non-negative, got {seed}")
    return int(seed)


def _entropy_key(entropy: int | list[int]) -> jax.Array:
    """A key from any non-negative int(s): `jax.random.key` takes only 63 bits, so hash them to 63 bits."""
    return jax.random.key(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1)))


def _checked_actions(actions: Any, nvec: tuple[int, ...], num_envs: int | None = None) -> np.ndarray:
    """`actions` as int32 factor indices, shape (3,) (one env) or (num_envs, 3); ValueError otherwise.

    Checked before the cast to int32, so that floats are not truncated and huge ints do not wrap.
    """
    what = "action" if num_envs is None else "actions"
    array = np.asarray(actions)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integer factor indices, got dtype {array.dtype}")
    shape = (len(nvec),) if num_envs is None else (num_envs, len(nvec))
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{what} must have shape {shape} (key, mouse-look, duration), got shape {array.shape}")
    array = array.reshape(shape)
    outside = (array < 0) | (array >= np.asarray(nvec))
    if outside.any():
        if num_envs is None:
            raise ValueError(f"action must be 3 factor indices within {nvec}, got {array.tolist()}")
        i = int(np.argmax(outside.any(axis=1)))
        raise ValueError(
            f"actions[{i}] = {array[i].tolist()} of sub-env {i} is outside the action space: "
            f"each factor must be in [0, n) for n in {nvec}"
        )
    return array.astype(np.int32)


class Sima2GymEnv(gymnasium.Env):
    """One world of a level behind the standard gymnasium API (no auto-reset: call `reset` when done)."""

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 10}

    def __init__(
        self,
        level: str = "GoTo",
        split: str = "train",
        image_size: ImageSize = 64,
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
        self._expert = jax.jit(self.env.expert_action)  # once: a bound method is a new object at each access
        self._step_key = jax.random.key(0)
        self._topdown = jax.jit(self.env.render_topdown)
        self._state = None
        self._last_image: np.ndarray | None = None

    def _info(self, state, step_info: StepInfo | None = None) -> dict[str, Any]:
        info = {"instruction_text": self.env.instruction_text(state)}
        if step_info is not None:
            info.update(step_info.to_dict())
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
        action = _checked_actions(action, self.env.action_nvec)
        # The world's step is deterministic: the key would only seed an auto-reset, which this API leaves
        # to the caller.
        obs, self._state, reward, _, info = self._step(self._step_key, self._state, action, self.params)
        obs = _to_numpy(obs)
        self._last_image = obs["image"]
        terminated, truncated = bool(info.terminated), bool(info.truncated)
        return obs, float(reward), terminated, truncated, self._info(self._state, info)

    def render(self):
        if self.render_mode == "rgb_array_topdown" and self._state is not None:
            return np.asarray(self._topdown(self._state))
        return self._last_image

    def expert_action(self) -> np.ndarray:
        """The shortest-path expert's action in the current state."""
        if self._state is None:
            raise RuntimeError("call reset() before expert_action(): there is no current state yet")
        return np.asarray(self._expert(self._state, self.params))


def world_expert(env: gymnasium.Env | None) -> Callable[[Any, Any], np.ndarray]:
    """The built-in world's shortest-path expert as an expert of the gymnasium path
    (`record_demonstrations(..., expert=world_expert, expert_actions="factors")`, `dagger`): its action factors
    in the current state of `env` (a `Sima2GymEnv`, possibly wrapped)."""
    world = None if env is None else env.unwrapped
    if not isinstance(world, Sima2GymEnv):
        raise TypeError(
            f"world_expert needs a sima2 world (gymnasium.make('sima2/GoTo-v0')), got {type(world).__name__}"
        )
    return lambda observation, executed: world.expert_action()  # reads the state, whatever was executed


class Sima2VectorEnv(VectorEnv):
    """`num_envs` worlds stepped by one jitted, vmapped call. Auto-reset on the next step (NEXT_STEP)."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        level: str = "GoTo",
        split: str = "train",
        image_size: ImageSize = 64,
        render_mode: str | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
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
            # The same worlds as reset_all(key) would give, generated only for the sub-envs that reset.
            keys = jax.random.split(key, num_envs)
            stepped, reward, info = jax.vmap(env.transition, in_axes=(0, 0, 0, None))(keys, state, actions, params)
            reset = jax.vmap(reset_where_done, in_axes=(None, 0, 0, None, 0))
            state = reset(env, needs_reset, keys, params, stepped)
            obs = jax.vmap(env.observe)(state)
            reward = jnp.where(needs_reset, 0.0, reward)
            terminated = info.terminated & ~needs_reset
            truncated = info.truncated & ~needs_reset
            return obs, state, reward, terminated, truncated, info

        self._reset_all = jax.jit(reset_all)
        self._reset_each = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
        self._step_all = jax.jit(step_all)
        self._state = None
        self._needs_reset = np.zeros((num_envs,), bool)
        self._key = jax.random.key(0)
        self._last_images: np.ndarray | None = None

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Reset all sub-envs. An int seed seeds them all; a list (gymnasium's convention) seeds sub-env i
        with seed[i], giving the world `Sima2GymEnv.reset(seed=seed[i])` gives (None: unseeded)."""
        if isinstance(seed, list | tuple):
            if len(seed) != self.num_envs:
                raise ValueError(f"seed must be an int or a list of {self.num_envs} seeds, got {len(seed)} seeds")
            seeds = [None if s is None else _checked_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]
            self._key, key = jax.random.split(self._key)
            unseeded = jax.random.split(key, self.num_envs)
            keys = [unseeded[i] if s is None else _seed_key(seeding.np_random(s)[0]) for i, s in enumerate(seeds)]
            if any(s is not None for s in seeds):  # later auto-resets follow from the seeds too
                self._key = _entropy_key([s for s in seeds if s is not None])
            obs, self._state = self._reset_each(jnp.stack(keys), self.params)
        else:
            if seed is not None:
                seed = _checked_seed(seed)
                # jax.random.key takes seeds below 2**63 (kept as they were); larger ones are hashed.
                self._key = jax.random.key(seed) if seed < 2**63 else _entropy_key(seed)
            self._key, key = jax.random.split(self._key)
            obs, self._state = self._reset_all(key)
        self._needs_reset = np.zeros((self.num_envs,), bool)
        obs = _to_numpy(obs)
        self._last_images = obs["image"]
        return obs, {}

    def step(self, actions):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        actions = _checked_actions(actions, self.env.action_nvec, self.num_envs)
        self._key, key = jax.random.split(self._key)
        obs, self._state, reward, terminated, truncated, info = self._step_all(
            key, self._state, jnp.asarray(self._needs_reset), actions
        )
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        self._needs_reset = terminated | truncated
        obs = _to_numpy(obs)
        self._last_images = obs["image"]
        return obs, np.asarray(reward), terminated, truncated, info.to_dict()

    def render(self):
        return None if self._last_images is None else tuple(self._last_images)

    def instruction_texts(self) -> list[str]:
        """Instruction text of every sub-environment."""
        ids = np.asarray(self._state.instruction)
        return [voc.decode_ids(row) for row in ids]


def register_envs() -> None:
    """Register every level as `sima2/<Level>-v0` and every mixture of levels as `sima2/<Mixture>-v0`
    (idempotent)."""
    for name in (*LEVELS, *MIXTURES):
        gym_id = f"sima2/{name}-v0"
        if gym_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=gym_id,
            entry_point="sima2.envs.gym_env:Sima2GymEnv",
            vector_entry_point="sima2.envs.gym_env:Sima2VectorEnv",
            max_episode_steps=None,
            kwargs={"level": name},
        )
