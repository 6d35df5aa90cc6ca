"""gymnasium versions of sima2's wrappers: RewardShaper, RollbackWrapper (hang-proof) and SafetyFilter.

Same names and meaning as the functional wrappers in `sima2.envs.wrappers`, for any `gymnasium.Env`:

- `RewardShaper` reports each shaping term in ``info`` ("reward_success", "reward_invalid_move",
  "reward_exploration", "reward_potential", "reward_env"). The signals come from `signals(env, reward,
  terminated, info)`; the default reads the sima2 info keys and falls back to what most gymnasium envs
  offer (success = terminated with positive reward, ``env.unwrapped.agent_pos`` as in MiniGrid).
- `RollbackWrapper` runs the env in a worker process. A `reset`/`step` that does not return within
  `timeout_s` (a hang, or a crashed worker) is cut off: the worker is killed and replaced by an
  already-started spare, the last good state is restored by replaying the episode (re-reset with the
  recorded seed, then the recorded actions; this needs an env that is deterministic given its seed), and
  the step returns the last good observation with ``-penalty`` as reward and ``info["rollback"]``.
  With ``rollback_to="reset"`` nothing is replayed and the step is reported truncated instead.
- `SafetyFilter` replaces actions that `is_destructive(env, action)` flags by a safe action, flags them in
  ``info["safety_blocked"]`` and exposes the action mask in ``info["action_mask"]`` (and in the observation
  for Dict observation spaces).

In vector envs: `SyncVectorEnv` works as is; `AsyncVectorEnv` needs ``daemon=False`` around a
`RollbackWrapper`, because daemonic processes may not start its worker.

Over 400 lines on purpose: the three gymnasium wrappers mirror `sima2.envs.wrappers` one to one and are
read side by side with it (the rollback worker process is most of the length).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np

from sima2.envs.shaping import DEFAULT_SHAPING, ShapingCoefficients, potential_of, shaping_terms

__all__ = ["RewardShaper", "RollbackWrapper", "SafetyFilter", "default_signals"]


# --------------------------------------------------------------------------------------------------------
# RewardShaper
# --------------------------------------------------------------------------------------------------------


def default_signals(env: gym.Env, reward: float, terminated: bool, info: dict) -> dict[str, Any]:
    """Shaping signals of one step (or of a reset, with reward 0 and terminated False).

    Reads sima2's info keys when present; otherwise success = terminated with a positive reward,
    no invalid moves, ``env.unwrapped.agent_pos`` (MiniGrid and friends) and no distance (no potential).
    """
    agent_pos = info.get("agent_pos", getattr(env.unwrapped, "agent_pos", None))
    return {
        "success": bool(info.get("success", terminated and reward > 0)),
        "invalid_move": bool(info.get("invalid_move", False)),
        "agent_pos": None if agent_pos is None else np.asarray(agent_pos, dtype=np.float64),
        "distance_to_goal": info.get("distance_to_goal"),
    }


class RewardShaper(gym.Wrapper):
    """Reward = the shaping terms of `sima2.envs.shaping` (the same formula and defaults as the functional
    `sima2.envs.wrappers.RewardShaper`); here the visited regions are a set (no fixed grid), and the start
    region and potential are known from the reset's info."""

    def __init__(
        self,
        env: gym.Env,
        success: float = DEFAULT_SHAPING.success,
        invalid_move: float = DEFAULT_SHAPING.invalid_move,
        new_region: float = DEFAULT_SHAPING.new_region,
        potential: float = DEFAULT_SHAPING.potential,
        gamma: float = DEFAULT_SHAPING.gamma,
        env_reward: float = DEFAULT_SHAPING.env_reward,
        region_size: float = DEFAULT_SHAPING.region_size,
        signals: Callable[[gym.Env, float, bool, dict], dict] = default_signals,
    ):
        super().__init__(env)
        self.coefficients = ShapingCoefficients(
            success=float(success),
            invalid_move=float(invalid_move),
            new_region=float(new_region),
            potential=float(potential),
            gamma=float(gamma),
            env_reward=float(env_reward),
            region_size=float(region_size),
        )
        self.signals = signals
        self._visited: set[tuple[int, ...]] = set()
        self._phi = 0.0

    def _region(self, agent_pos: np.ndarray | None) -> tuple[int, ...] | None:
        if agent_pos is None or not np.all(np.isfinite(agent_pos)):
            return None
        return tuple(np.floor(agent_pos / self.coefficients.region_size).astype(int).tolist())

    def _potential(self, distance: Any) -> float:
        return float(potential_of(self.coefficients.potential, np.nan if distance is None else distance))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        signals = self.signals(self.env, 0.0, False, info)
        region = self._region(signals["agent_pos"])
        self._visited = set() if region is None else {region}
        self._phi = self._potential(signals["distance_to_goal"])
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        signals = self.signals(self.env, float(reward), bool(terminated), info)
        region = self._region(signals["agent_pos"])
        first_visit = region is not None and region not in self._visited
        if region is not None:
            self._visited.add(region)
        phi_next = self._potential(signals["distance_to_goal"])
        terms = shaping_terms(
            self.coefficients,
            success=signals["success"],
            invalid_move=signals["invalid_move"],
            new_region_visit=first_visit,
            potential_before=self._phi,
            potential_after=phi_next,
            terminated=bool(terminated),
            env_reward=float(reward),
        )
        terms = {name: float(value) for name, value in terms.items()}
        self._phi = phi_next
        return obs, float(sum(terms.values())), terminated, truncated, {**info, **terms}


# --------------------------------------------------------------------------------------------------------
# SafetyFilter
# --------------------------------------------------------------------------------------------------------


class SafetyFilter(gym.Wrapper):
    """Replaces actions flagged by `is_destructive(env, action)` with a safe action and exposes a mask.

    Discrete and MultiDiscrete action spaces are enumerated (up to `max_joint_actions`) to build the mask:
    bool per action (Discrete) or per factor value, concatenated over factors (MultiDiscrete; a value is
    allowed iff some safe joint action uses it). The replacement is `safe_action` if it is safe, otherwise
    the first safe action. Other action spaces need `safe_action` and get no mask.
    """

    def __init__(
        self,
        env: gym.Env,
        is_destructive: Callable[[gym.Env, Any], bool],
        safe_action: Any = None,
        max_joint_actions: int = 4096,
    ):
        super().__init__(env)
        if not callable(is_destructive):
            raise TypeError(f"is_destructive must be callable, got {type(is_destructive).__name__}")
        self.is_destructive = is_destructive
        self.safe_action = safe_action
        space = env.action_space
        if isinstance(space, gym.spaces.Discrete):
            self._factors = None
            self._joint = [int(space.start) + i for i in range(int(space.n))]
        elif isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self._factors = [int(n) for n in space.nvec]
            self._joint = [np.asarray(a, space.dtype) for a in itertools.product(*map(range, self._factors))]
        else:
            self._factors, self._joint = None, None
            if safe_action is None:
                raise ValueError(f"SafetyFilter needs safe_action for a {type(space).__name__} action space")
        if self._joint is not None and len(self._joint) > max_joint_actions:
            raise ValueError(f"{len(self._joint)} joint actions exceed max_joint_actions={max_joint_actions}")
        self._mask_size = (
            None
            if self._joint is None
            else (len(self._joint) if self._factors is None else sum(self._factors))
        )
        if self._mask_size is not None and isinstance(env.observation_space, gym.spaces.Dict):
            self.observation_space = gym.spaces.Dict(
                {
                    **env.observation_space.spaces,
                    "action_mask": gym.spaces.Box(0, 1, (self._mask_size,), bool),
                }
            )

    def action_mask(self) -> np.ndarray | None:
        """The mask for the env's current state (None for non-enumerable action spaces)."""
        if self._joint is None:
            return None
        safe = np.array([not self.is_destructive(self.env, a) for a in self._joint])
        if self._factors is None:
            return safe
        grid = safe.reshape(self._factors)
        axes = range(len(self._factors))
        return np.concatenate([grid.any(axis=tuple(a for a in axes if a != f)) for f in axes])

    def _with_mask(self, obs: Any, info: dict) -> tuple[Any, dict]:
        mask = self.action_mask()
        if mask is None:
            return obs, info
        if isinstance(self.observation_space, gym.spaces.Dict):
            obs = {**obs, "action_mask": mask}
        return obs, {**info, "action_mask": mask}

    def _replacement(self) -> Any:
        if self.safe_action is not None and not self.is_destructive(self.env, self.safe_action):
            return self.safe_action
        for candidate in self._joint or ():
            if not self.is_destructive(self.env, candidate):
                return candidate
        return self.safe_action if self.safe_action is not None else self._joint[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._with_mask(obs, info)

    def step(self, action: Any):
        blocked = bool(self.is_destructive(self.env, action))
        executed = self._replacement() if blocked else action
        obs, reward, terminated, truncated, info = self.env.step(executed)
        obs, info = self._with_mask(obs, info)
        return (
            obs,
            reward,
            terminated,
            truncated,
            {**info, "safety_blocked": blocked, "executed_action": executed},
        )


# --------------------------------------------------------------------------------------------------------
# RollbackWrapper (hang-proof)
# --------------------------------------------------------------------------------------------------------


def _build_env(factory: Any) -> gym.Env:
    if isinstance(factory, str | gym.envs.registration.EnvSpec):
        return gym.make(factory)
    return factory()


def _worker(conn: Any, factory_bytes: bytes) -> None:
    """Worker process: builds the env, then serves reset/step/replay/close commands over `conn`."""
    try:
        env = _build_env(cloudpickle.loads(factory_bytes))
        conn.send(("ok", (env.observation_space, env.action_space, env.metadata, env.render_mode)))
    except Exception:  # report the failure to the parent instead of dying silently
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        command, payload = conn.recv()
        try:
            if command == "reset":
                result = env.reset(seed=payload[0], options=payload[1])
            elif command == "step":
                result = env.step(payload)
            elif command == "replay":
                seed, options, actions = payload
                result = env.reset(seed=seed, options=options)
                for action in actions:
                    result = env.step(action)
            elif command == "render":
                result = env.render()
            elif command == "close":
                env.close()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class _WorkerTimeout(Exception):
    """The worker did not answer in time, or died."""


class _Worker:
    """One env process and its pipe end."""

    def __init__(self, context: Any, factory_bytes: bytes):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker, args=(child_conn, factory_bytes), daemon=True)
        self.process.start()
        child_conn.close()
        self.info: tuple | None = None  # (observation_space, action_space, metadata, render_mode) once booted

    def wait_ready(self, timeout_s: float) -> tuple:
        if self.info is None:
            self.info = self.receive(timeout_s)
        return self.info

    def request(self, command: str, payload: Any, timeout_s: float) -> Any:
        try:
            self.conn.send((command, payload))
        except (BrokenPipeError, OSError) as error:
            raise _WorkerTimeout("worker died") from error
        return self.receive(timeout_s)

    def receive(self, timeout_s: float) -> Any:
        try:
            if not self.conn.poll(timeout_s):
                raise _WorkerTimeout(f"no answer within {timeout_s} s")
            status, result = self.conn.recv()
        except (EOFError, OSError) as error:
            raise _WorkerTimeout("worker died") from error
        if status == "error":
            raise RuntimeError(f"the wrapped env raised in its worker process:\n{result}")
        return result

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5.0)
        self.conn.close()


class RollbackWrapper(gym.Env):
    """Runs `env` in a worker process so that a hanging `step` is cut off after `timeout_s`.

    `env` is a registered id, an `EnvSpec`, a zero-argument factory (pickled with cloudpickle, so lambdas
    work), or an env instance with a `spec` (rebuilt from it in the worker). On a cut-off the worker is
    killed and a spare one (started in advance, so the switch does not wait for a process start) takes
    over; the last good state is restored by replaying the episode from its seed, which assumes the env is
    deterministic given the seed. Every reset is seeded: a reset without a seed draws one from this
    wrapper's RNG. After a rollback, `fallback(obs)` (if given) chooses the next `fallback_steps` actions.

    info gains "rollback", "fallback_active", "rollback_count" and "fallback_step_count" (this episode).
    """

    def __init__(
        self,
        env: str | Callable[[], gym.Env] | gym.Env,
        timeout_s: float = 10.0,
        penalty: float = 1.0,
        rollback_to: str = "snapshot",
        fallback: Callable[[Any], Any] | None = None,
        fallback_steps: int = 0,
        context: str = "spawn",
        boot_timeout_s: float = 120.0,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if rollback_to not in ("snapshot", "reset"):
            raise ValueError(f"rollback_to must be 'snapshot' or 'reset', got {rollback_to!r}")
        if fallback_steps < 0 or (fallback_steps > 0 and fallback is None):
            raise ValueError("fallback_steps must be >= 0, and > 0 only with a fallback controller")
        if context not in ("spawn", "forkserver"):
            raise ValueError(
                f"context must be 'spawn' or 'forkserver' (fork is unsafe with JAX), got {context!r}"
            )
        if isinstance(env, gym.Env):
            if env.spec is None:
                raise TypeError(
                    "an env instance needs a spec to be rebuilt in the worker; pass a factory instead"
                )
            factory: Any = env.spec
            env.close()
        elif isinstance(env, str | gym.envs.registration.EnvSpec) or callable(env):
            factory = env
        else:
            raise TypeError(f"env must be an id, an EnvSpec, a factory or an env, got {type(env).__name__}")
        self.timeout_s, self.penalty, self.rollback_to = float(timeout_s), float(penalty), rollback_to
        self.fallback, self.fallback_steps = fallback, int(fallback_steps)
        self.boot_timeout_s = float(boot_timeout_s)
        self._context = mp.get_context(context)
        self._factory_bytes = cloudpickle.dumps(factory)
        self._worker = _Worker(self._context, self._factory_bytes)
        self._spare = _Worker(self._context, self._factory_bytes)
        (self.observation_space, self.action_space, self.metadata, self.render_mode) = (
            self._worker.wait_ready(self.boot_timeout_s)
        )
        self._spare.wait_ready(self.boot_timeout_s)
        self._episode: tuple[int, dict | None] | None = None
        self._actions: list[Any] = []
        self._last_obs: Any = None
        self._fallback_left = 0
        self._counts = {"rollback_count": 0, "fallback_step_count": 0}
        self.restarts = 0

    def _replace_worker(self) -> None:
        """Kill the current worker and promote the spare; start a new spare (booting in the background)."""
        self._worker.kill()
        self._worker = self._spare
        self._worker.wait_ready(self.boot_timeout_s)
        self._spare = _Worker(self._context, self._factory_bytes)
        self.restarts += 1

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode_seed = int(self.np_random.integers(2**31 - 1)) if seed is None else int(seed)
        try:
            obs, info = self._worker.request("reset", (episode_seed, options), self.timeout_s)
        except _WorkerTimeout:
            self._replace_worker()  # one retry on a fresh worker; a second hang is an error
            try:
                obs, info = self._worker.request("reset", (episode_seed, options), self.timeout_s)
            except _WorkerTimeout as error:
                raise TimeoutError(f"env reset did not return within {self.timeout_s} s twice") from error
        self._episode, self._actions, self._last_obs = (episode_seed, options), [], obs
        self._fallback_left = 0
        self._counts = {"rollback_count": 0, "fallback_step_count": 0}
        return obs, info

    def step(self, action: Any):
        if self._episode is None:
            raise RuntimeError("call reset() before step()")
        fallback_active = self._fallback_left > 0
        if fallback_active:
            action = self.fallback(self._last_obs)
            self._fallback_left -= 1
            self._counts["fallback_step_count"] += 1
        try:
            obs, reward, terminated, truncated, info = self._worker.request("step", action, self.timeout_s)
        except _WorkerTimeout:
            return self._rollback(fallback_active)
        self._actions.append(action)
        self._last_obs = obs
        info = {**info, "rollback": False, "fallback_active": fallback_active, **self._counts}
        return obs, reward, terminated, truncated, info

    def _rollback(self, fallback_active: bool):
        self._replace_worker()
        self._counts["rollback_count"] += 1
        self._fallback_left = self.fallback_steps
        info = {"rollback": True, "fallback_active": fallback_active, **self._counts}
        truncated = self.rollback_to == "reset"
        if not truncated:
            seed, options = self._episode
            budget = self.timeout_s * (1 + len(self._actions))
            try:
                self._worker.request("replay", (seed, options, self._actions), budget)
            except _WorkerTimeout:
                self._replace_worker()  # the replay hung too: end the episode instead
                truncated = True
        if truncated:
            self._episode = None  # the caller must reset
        return self._last_obs, -self.penalty, False, truncated, info

    def render(self) -> Any:
        return self._worker.request("render", None, self.timeout_s)

    def close(self) -> None:
        for worker in (getattr(self, "_worker", None), getattr(self, "_spare", None)):
            if worker is None or not worker.process.is_alive():
                continue
            try:
                worker.request("close", None, min(self.timeout_s, 5.0))
            except (_WorkerTimeout, RuntimeError):
                pass
            worker.kill()
        super().close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: best effort only
            pass
