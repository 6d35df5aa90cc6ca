"""Adapter from gymnasium environments with image (and optional text mission) observations to sima2's format.

`GymnasiumAdapter` runs N copies of a gymnasium env in a gymnasium vector env (sync or async) and speaks
sima2's observation/action format, so the agent, behaviour cloning and PPO can drive it from a host loop:

    adapter = GymnasiumAdapter(lambda: RGBImgPartialObsWrapper(gym.make("MiniGrid-Empty-5x5-v0")),
                               num_envs=8, tokenizer=tokenizer)
    obs = adapter.reset(seed=0)                     # {"image": u8[N,H,W,3], "instruction": i32[N,L],
                                                    #  "proprio": f32[N,P]}
    obs, reward, done, info = adapter.step(actions) # actions: i32[N, 3] over adapter.action_nvec

- Episodes reset in the step they end (same-step auto-reset, like sima2's worlds). The adapter resets them
  itself (the vector env runs with auto-reset disabled), so each episode can have its own seed:
  ``adapter.reset(episode_seeds=range(1000, 1100))`` gives the N first episodes and every later one the next
  seed of the list (`episode_seed` says which seed each env's current episode has; -1 once the list is spent
  or without one). Evaluation seeds then stay disjoint from demonstration seeds.
- `env_instances` are the N envs as `env_fn` made them (sync vectorisation), for scripted experts that read
  the env they act in; `raw_observation(i)` is env i's last observation in its own format.

- Images are taken from ``obs[image_key]`` (or the observation itself when it is an array) and resized
  to `image_size` (bilinear, antialiased, `jax.image.resize`). MiniGrid's "image" is a symbolic grid:
  wrap it in `minigrid.wrappers.RGBImgPartialObsWrapper` (or `RGBImgObsWrapper`) for pixels.
- Missions (``obs[mission_key]``) are tokenised with a Hugging Face tokenizer, padded/truncated to
  `instruction_length`; the default is the built-in world's tokenizer when sima2 provides one.
- Actions: `DiscreteActionMap` maps each (key, look, duration) index triple to the wrapped env's
  Discrete action via a table of shape `action_nvec`; a `MultiDiscrete` env already speaks factors
  (`FactorActionMap`, the identity). An env that emits instruction ids and proprio (the built-in world
  through gymnasium) has them passed through. The default for a Discrete(n) env uses the key
  factor only (table shape (n, 1, 1)); for MiniGrid that is left/right/forward/pickup/drop/toggle/done.
- Vector envs: BabyAI/MiniGrid missions are text, so `AsyncVectorEnv` needs ``shared_memory=False``;
  MiniWorld needs ``context="spawn"``. BabyAI prints "Sampling rejected" lines on reset: ``quiet=True``
  (default) silences the envs' stdout.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, UInt8

from sima2.contract import ActionSpec, ArraySpec, EnvSpec, ObservationSpec, StepInfo
from sima2.envs.action_maps import MINIGRID_ACTIONS, DiscreteActionMap, FactorActionMap

__all__ = [
    "MINIGRID_ACTIONS",
    "DiscreteActionMap",
    "FactorActionMap",
    "GymnasiumAdapter",
    "QuietStdout",
    "step_info_from_gym",
]

class QuietStdout(gym.Wrapper):
    """Silences what the wrapped env prints on stdout during reset and step (e.g. BabyAI's rejections)."""

    def reset(self, **kwargs: Any):
        with contextlib.redirect_stdout(io.StringIO()):
            return self.env.reset(**kwargs)

    def step(self, action: Any):
        with contextlib.redirect_stdout(io.StringIO()):
            return self.env.step(action)


def _quiet_factory(env_fn: Callable[[], gym.Env]) -> gym.Env:
    return QuietStdout(env_fn())


def _default_tokenizer() -> Any:
    try:
        from sima2.envs import get_tokenizer  # provided by the built-in world
    except ImportError:
        return None
    return get_tokenizer()


@partial(jax.jit, static_argnames="size")
def _resize_images(images: UInt8[Array, "N h w 3"], size: tuple[int, int]) -> UInt8[Array, "N H W 3"]:
    shape = (images.shape[0], *size, images.shape[-1])
    resized = jax.image.resize(images.astype(jnp.float32), shape, method="linear", antialias=True)
    return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)


def step_info_from_gym(
    terminated: np.ndarray, truncated: np.ndarray, reward: np.ndarray, info: Mapping[str, Any]
) -> StepInfo:
    """The typed record of one gymnasium vector-env step (the one place a gymnasium `info` dict becomes a
    `StepInfo`): success is ``info["success"]`` where the env reports it, else termination with a positive
    reward (MiniGrid's convention); the gymnasium wrappers' "rollback", "fallback_active" and
    "safety_blocked" flags become the intervention fields. Entries masked out by gymnasium's ``"_<name>"``
    arrays take the default."""
    terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
    num_envs = terminated.shape[0]

    def flag(name: str, default: np.ndarray) -> np.ndarray:
        if name not in info:
            return default
        value = np.asarray(info[name], bool).reshape(num_envs)
        mask = info.get(f"_{name}")
        return value if mask is None else np.where(np.asarray(mask, bool), value, default)

    no = np.zeros(num_envs, bool)
    fallback, blocked = flag("fallback_active", no), flag("safety_blocked", no)
    unknown = np.full(num_envs, np.nan, np.float32)
    fields = dict(
        terminated=terminated,
        truncated=truncated & ~terminated,
        success=flag("success", terminated & (np.asarray(reward) > 0)),
        invalid_move=flag("invalid_move", no),
        world_rollback=flag("rollback", no),
        fallback_step=fallback,
        action_blocked=blocked,
        agent_acted=~(fallback | blocked),
        elapsed_ticks=np.ones(num_envs, np.int32),
        agent_pos=np.full((num_envs, 2), np.nan, np.float32),
        distance_to_goal=unknown,
        path_length=unknown,
        optimal_path_length=unknown,
        contact=np.zeros(num_envs, np.float32),
        subgoal_index=np.zeros(num_envs, np.int32),
    )
    return StepInfo(**{name: jnp.asarray(value) for name, value in fields.items()})


class GymnasiumAdapter:
    """N gymnasium envs, vectorised, in sima2's observation and action format (see module docstring)."""

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        num_envs: int = 1,
        *,
        image_size: tuple[int, int] = (64, 64),
        instruction_length: int = 16,
        tokenizer: Any = None,
        action_map: DiscreteActionMap | FactorActionMap | None = None,
        proprio_fn: Callable[[Any], np.ndarray] | None = None,
        proprio_dim: int = 4,
        image_key: str = "image",
        mission_key: str = "mission",
        vectorization: str = "sync",
        quiet: bool = True,
        **vector_kwargs: Any,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
        env_fns = [partial(_quiet_factory, env_fn) if quiet else env_fn for _ in range(num_envs)]
        vector_cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
        # Auto-reset disabled: `step` resets finished episodes itself, each with its episode seed.
        self.envs = vector_cls(env_fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED, **vector_kwargs)
        self.num_envs = num_envs
        self.episode_seed = np.full(num_envs, -1, np.int64)
        self._seeds: Iterator[int] | None = None
        self._raw: Any = None
        self.image_size = tuple(int(s) for s in image_size)
        self.instruction_length = int(instruction_length)
        self.image_key, self.mission_key = image_key, mission_key
        self.proprio_fn, self.proprio_dim = proprio_fn, int(proprio_dim)

        space = self.envs.single_action_space
        if action_map is None:
            if isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
                action_map = FactorActionMap(space.nvec.tolist())
            elif isinstance(space, gym.spaces.Discrete):
                action_map = DiscreteActionMap.for_discrete(int(space.n))
            else:
                raise ValueError(f"no default action map for {space}; pass action_map=DiscreteActionMap(table)")
        self.action_map = action_map

        obs_space = self.envs.single_observation_space
        entries = obs_space.spaces if isinstance(obs_space, gym.spaces.Dict) else {}
        self._has_mission = mission_key in entries
        # An env that already emits instruction ids and proprioception (the built-in world through gymnasium).
        self._has_ids = not self._has_mission and isinstance(entries.get("instruction"), gym.spaces.Box) and \
            np.issubdtype(entries["instruction"].dtype, np.integer)
        self._has_proprio = proprio_fn is None and isinstance(entries.get("proprio"), gym.spaces.Box)
        if self._has_proprio:
            self.proprio_dim = int(np.prod(entries["proprio"].shape))
        if isinstance(obs_space, gym.spaces.Dict) and image_key not in obs_space.spaces:
            raise ValueError(f"observations have no {image_key!r} entry; keys: {list(obs_space.spaces)}")
        self.tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
        if self._has_mission and self.tokenizer is None:
            raise ValueError("the env has text missions: pass tokenizer= (any Hugging Face tokenizer)")
        self._token_cache: dict[str, np.ndarray] = {}

    @classmethod
    def of(cls, source: Any, **options: Any) -> GymnasiumAdapter:
        """An adapter over `source`: an adapter (returned as it is), a gymnasium env id, an env factory, one
        gymnasium env instance (one env), or a `SyncVectorEnv` (its envs); `options` as for the constructor."""
        if isinstance(source, GymnasiumAdapter):
            if options:
                raise ValueError(f"{sorted(options)} cannot change an existing adapter; build a new one instead")
            return source
        if isinstance(source, str):
            return cls(partial(gym.make, source), **options)
        reuses = isinstance(source, gym.vector.SyncVectorEnv) or (isinstance(source, gym.Env))
        if reuses and options.get("vectorization", "sync") != "sync":
            raise ValueError("existing env instances are stepped in this process: vectorization must be 'sync' "
                             "(pass an env factory or id for async envs)")
        if isinstance(source, gym.vector.SyncVectorEnv):
            if options.get("num_envs", source.num_envs) != source.num_envs:
                raise ValueError(f"the vector env has {source.num_envs} envs, not num_envs={options['num_envs']}")
            envs = iter(source.envs)  # the vector env's own instances, stepped by the adapter from now on
            return cls(lambda: next(envs), **{**options, "num_envs": source.num_envs})
        if isinstance(source, gym.vector.VectorEnv):
            raise ValueError(
                f"a {type(source).__name__} runs its envs elsewhere: pass its env factory (or id) and "
                "vectorization='async' instead"
            )
        if isinstance(source, gym.Env):
            if options.get("num_envs", 1) != 1:
                raise ValueError("one env instance makes one env: pass an env factory for num_envs > 1")
            return cls(lambda: source, **options)
        if callable(source):
            return cls(source, **options)
        raise TypeError(f"cannot adapt a {type(source).__name__}: pass a gymnasium env, id, factory or vector env")

    @property
    def spec(self) -> EnvSpec:
        """What an agent is sized from: the adapter's images, mission ids (the tokenizer's vocabulary),
        proprio and action factors (`Agent.from_preset(name, adapter.spec, key=...)`)."""
        vocab = len(self.tokenizer) if self.tokenizer is not None else 1
        observation = ObservationSpec(
            image=ArraySpec((*self.image_size, 3), "uint8"),
            instruction=ArraySpec((self.instruction_length,), "int32"),
            proprio=ArraySpec((self.proprio_dim,), "float32"),
            vocab_size=vocab,
        )
        return EnvSpec(observation, ActionSpec(tuple(self.action_nvec)), self.instruction_length)

    @property
    def action_nvec(self) -> tuple[int, ...]:
        return self.action_map.nvec

    def _tokenize(self, missions: Sequence[str]) -> np.ndarray:
        new = sorted({m for m in missions if m not in self._token_cache})
        if new:  # missions change only on reset: tokenise each distinct one once
            lengths = [len(ids) for ids in self.tokenizer(new, truncation=False)["input_ids"]]
            longest = int(np.argmax(lengths))
            if lengths[longest] > self.instruction_length:
                raise ValueError(
                    f"mission {new[longest]!r} is {lengths[longest]} tokens long, more than the adapter's "
                    f"instruction_length={self.instruction_length}: pass a larger instruction_length (the tail "
                    "would be cut off)"
                )
            ids = self.tokenizer(
                new,
                padding="max_length",
                truncation=True,
                max_length=self.instruction_length,
                return_tensors="np",
            )["input_ids"]
            self._token_cache.update(zip(new, np.asarray(ids, np.int32), strict=True))
        return np.stack([self._token_cache[m] for m in missions])

    def _proprio(self, raw: Any) -> np.ndarray:
        if self.proprio_fn is not None:
            return np.asarray(self.proprio_fn(raw), np.float32).reshape(self.num_envs, -1)
        if self._has_proprio:
            return np.asarray(raw["proprio"], np.float32).reshape(self.num_envs, -1)
        proprio = np.zeros((self.num_envs, self.proprio_dim), np.float32)
        if isinstance(raw, dict) and "direction" in raw:  # MiniGrid heading, one-hot
            proprio[np.arange(self.num_envs), np.asarray(raw["direction"]) % self.proprio_dim] = 1.0
        return proprio

    def observe(self, raw: Any) -> dict[str, Array]:
        """Batched raw observations of the vector env -> sima2 observation dict (leading axis N)."""
        images = raw[self.image_key] if isinstance(raw, dict) else raw
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected RGB images of shape (N, H, W, 3), got {images.shape}")
        if self._has_mission:
            instruction = self._tokenize([str(m) for m in raw[self.mission_key]])
        elif self._has_ids:
            instruction = self._fit_ids(np.asarray(raw["instruction"]))
        else:
            instruction = np.zeros((self.num_envs, self.instruction_length), np.int32)
        return {
            "image": _resize_images(jnp.asarray(images, jnp.uint8), self.image_size),
            "instruction": jnp.asarray(instruction, jnp.int32),
            "proprio": jnp.asarray(self._proprio(raw)),
        }

    @property
    def env_instances(self) -> list[gym.Env]:
        """The N envs as `env_fn` made them (for experts that read the env they act in); sync vectorisation
        only, since async envs live in other processes."""
        if not isinstance(self.envs, gym.vector.SyncVectorEnv):
            raise ValueError("env_instances needs vectorization='sync': async envs live in worker processes")
        return [env.env if isinstance(env, QuietStdout) else env for env in self.envs.envs]

    def raw_observation(self, index: int) -> Any:
        """Env `index`'s last observation as the env returned it (before resizing and tokenising)."""
        if self._raw is None:
            raise ValueError("no observation yet: call reset first")
        if isinstance(self._raw, Mapping):
            return {name: value[index] for name, value in self._raw.items()}
        return self._raw[index]

    def missions(self) -> list[str]:
        """The current episodes' mission texts (decoded from the ids of an env that emits ids; "" for an env
        without missions)."""
        if self._raw is not None and self._has_ids and self.tokenizer is not None:
            return self.tokenizer.batch_decode(self._fit_ids(np.asarray(self._raw["instruction"])),
                                               skip_special_tokens=True)
        if self._raw is None or not self._has_mission:
            return [""] * self.num_envs
        return [str(m) for m in self._raw[self.mission_key]]

    def _fit_ids(self, ids: np.ndarray) -> np.ndarray:
        """Instruction ids the env emits, padded with zeros or cut to `instruction_length` (refused when the
        cut would drop a word)."""
        ids = ids.astype(np.int32).reshape(self.num_envs, -1)
        if ids.shape[1] > self.instruction_length and ids[:, self.instruction_length:].any():
            raise ValueError(
                f"the env's instructions are up to {ids.shape[1]} ids long, more than the adapter's "
                f"instruction_length={self.instruction_length}: pass a larger instruction_length"
            )
        out = np.zeros((self.num_envs, self.instruction_length), np.int32)
        width = min(ids.shape[1], self.instruction_length)
        out[:, :width] = ids[:, :width]
        return out

    def _next_seeds(self, mask: np.ndarray) -> list[int | None]:
        """The next episode seed for each env in `mask` (None past the end of the list or without one)."""
        seeds: list[int | None] = [None] * self.num_envs
        for i in np.flatnonzero(mask).tolist():
            seeds[i] = next(self._seeds, None) if self._seeds is not None else None
            self.episode_seed[i] = -1 if seeds[i] is None else seeds[i]
        return seeds

    def reset(self, seed: int | None = None, *, episode_seeds: Iterable[int] | None = None) -> dict[str, Array]:
        """Start an episode in every env. `seed`: env i starts from `seed + i` and later episodes continue
        each env's own random stream; `episode_seeds`: every episode, these N and each later one, takes the
        next seed of the iterable (envs whose episodes start after it is spent are unseeded)."""
        if seed is not None and episode_seeds is not None:
            raise ValueError("pass seed= or episode_seeds=, not both")
        if episode_seeds is not None:
            self._seeds = iter(int(s) for s in episode_seeds)
            raw, _ = self.envs.reset(seed=self._next_seeds(np.ones(self.num_envs, bool)))
        else:
            self._seeds = None
            self.episode_seed[:] = -1
            raw, _ = self.envs.reset(seed=None if seed is None else int(seed))
        self._raw = raw
        return self.observe(raw)

    def restart(self, mask: np.ndarray) -> dict[str, Array]:
        """End the episodes of the envs in `mask` early and start their next ones (next episode seeds);
        returns every env's observation."""
        mask = np.asarray(mask, bool).reshape(self.num_envs)
        if mask.any():
            self._raw, _ = self.envs.reset(seed=self._next_seeds(mask), options={"reset_mask": mask})
        return self.observe(self._raw)

    def step(
        self, actions: Int[Array, "N factors"] | np.ndarray
    ) -> tuple[dict[str, Array], Float[Array, " N"], Bool[Array, " N"], StepInfo]:
        """One step of every env; done envs reset in the same step (their next observation is returned)."""
        if self._raw is None:
            raise ValueError("step before reset: call adapter.reset first")
        env_actions = self.action_map(np.asarray(actions))
        raw, reward, terminated, truncated, info = self.envs.step(env_actions)
        reward, terminated, truncated = (np.asarray(x) for x in (reward, terminated, truncated))
        self._raw = raw
        done = terminated | truncated
        if done.any():  # same-step reset: the next episode's first observation replaces the last one
            self._raw, _ = self.envs.reset(seed=self._next_seeds(done), options={"reset_mask": done})
        return (
            self.observe(self._raw),
            jnp.asarray(reward, jnp.float32),
            jnp.asarray(terminated | truncated),
            step_info_from_gym(terminated, truncated, reward, info),
        )

    def close(self) -> None:
        self.envs.close()
