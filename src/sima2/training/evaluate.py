"""Evaluation of an agent in a functional env: success rate (overall and per level), navigation efficiency,
episode length and return, episodes/s and decision latency; `evaluate_splits` runs held-out splits.

Navigation efficiency is optimal path / actual path over successful episodes, read from the `info` keys
named in `EvalConfig` when the env reports them. Levels are grouped by `info[level_key]` when present.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Shaped

from sima2.training.config import EvalConfig
from sima2.training.recurrent import initial_carries, reset_where


@eqx.filter_jit
def _rollout(
    agent: Any, env: Any, env_params: PyTree, key: PRNGKeyArray, config: EvalConfig
) -> tuple[Shaped[Array, "T E"], Float[Array, "T E"], dict[str, Array]]:
    """`config.max_steps` steps of `config.num_envs` worlds: per-step done, running return and kept info.

    The agent's and the params' arrays are arguments, not constants, so every split (and every checkpoint
    of the same agent) reuses one compiled program.
    """
    num_envs = config.num_envs
    reset_key, run_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_envs), env_params)
    initial = initial_carries(agent, num_envs)
    info_keys = ("success", config.optimal_path_key, config.actual_path_key, config.level_key, "episode_length")

    greedy = {"deterministic": True} if config.deterministic else {}
    act = lambda k, o, c: agent.act(k, o, c, **greedy)  # noqa: E731

    def one_step(carry: tuple, step_key: PRNGKeyArray) -> tuple:
        obs, state, agent_carry, first, ep_return = carry
        act_key, env_key = jax.random.split(step_key)
        agent_carry = reset_where(first, initial, agent_carry)
        action, agent_carry, _ = jax.vmap(act)(jax.random.split(act_key, num_envs), obs, agent_carry)
        obs, state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(env_key, num_envs), state, action, env_params
        )
        ep_return = ep_return + reward
        kept = {k: info[k] for k in info_keys if k in info}
        out = (done, ep_return, kept)
        return (obs, state, agent_carry, done, jnp.where(done, 0.0, ep_return)), out

    carry = (obs, state, initial, jnp.ones(num_envs, bool), jnp.zeros(num_envs))
    _, outs = jax.lax.scan(one_step, carry, jax.random.split(run_key, config.max_steps))
    return outs


def evaluate(
    agent: Any, env: Any, env_params: PyTree, key: PRNGKeyArray, config: EvalConfig | None = None
) -> dict[str, float]:
    """Run `config.num_envs` worlds for `config.max_steps` steps and score the episodes that finished,
    up to `config.num_episodes` of them (the earliest per world first). The agent acts greedily unless
    `config.deterministic` is False. `eval_seconds` and `episodes_per_s` time the rollout alone, after
    compilation."""

    config = EvalConfig() if config is None else config
    if config.deterministic and "deterministic" not in inspect.signature(agent.act).parameters:
        raise ValueError(
            f"eval.deterministic=True needs an agent whose act() takes deterministic=; "
            f"{type(agent).__name__}.act does not (set eval.deterministic=False to sample its actions)"
        )
    args = (agent, env, env_params, key, config)
    compiled = _rollout.lower(*args).compile()  # cached: compiles once per agent / env structure
    start = time.perf_counter()
    done, returns, info = jax.device_get(jax.block_until_ready(compiled(*args)))
    elapsed = time.perf_counter() - start
    done = np.asarray(done, bool)
    # Episode lengths: steps since the previous done in the same world.
    steps = np.arange(1, done.shape[0] + 1)[:, None].repeat(done.shape[1], 1)
    last_done = np.zeros(done.shape[1], int)
    lengths = np.zeros(done.shape, np.float64)
    for t in range(done.shape[0]):
        lengths[t] = steps[t] - last_done
        last_done = np.where(done[t], steps[t], last_done)
    order = np.argsort(np.cumsum(done, axis=0)[done], kind="stable")[: config.num_episodes]
    if done.sum() == 0:
        return {"episodes": 0.0, "success_rate": 0.0, "episodes_per_s": 0.0, "eval_seconds": elapsed}
    pick = lambda x: np.asarray(x)[done][order]  # noqa: E731
    success = pick(info["success"]).astype(bool) if "success" in info else np.zeros(len(order), bool)
    result = {
        "episodes": float(len(order)),
        "success_rate": float(success.mean()),
        "episode_length": float(pick(lengths).mean()),
        "return": float(pick(returns).mean()),
        "episodes_per_s": float(done.sum() / elapsed),
        "eval_seconds": elapsed,
    }
    if config.optimal_path_key in info and config.actual_path_key in info and success.any():
        optimal = pick(info[config.optimal_path_key])[success]
        actual = np.maximum(pick(info[config.actual_path_key])[success], 1e-6)
        result["navigation_efficiency"] = float(np.mean(np.minimum(optimal / actual, 1.0)))
    if config.level_key in info:
        levels = pick(info[config.level_key])
        for level in np.unique(levels):
            result[f"success_rate/level_{int(level)}"] = float(success[levels == level].mean())
    return result


def evaluate_splits(
    agent: Any,
    env: Any,
    splits: dict[str, PyTree],
    key: PRNGKeyArray,
    config: EvalConfig | None = None,
    *,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """`evaluate` on each named split (e.g. {"train": params, "heldout": heldout_params}); `progress` shows
    a bar over the splits."""
    from tqdm.auto import tqdm

    config = EvalConfig() if config is None else config
    results = {}
    with tqdm(total=len(splits), desc="eval", disable=not progress, dynamic_ncols=True) as bar:
        for i, (name, params) in enumerate(splits.items()):
            bar.set_postfix_str(name)
            results[name] = evaluate(agent, env, params, jax.random.fold_in(key, i), config)
            bar.update()
    return results


def decision_latency(agent: Any, obs: PyTree, key: PRNGKeyArray, repeats: int = 20) -> float:
    """Median seconds for one jitted `agent.act` on a single observation (after compilation)."""
    act = jax.jit(agent.act)
    carry = agent.initial_carry()
    jax.block_until_ready(act(key, obs, carry))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(act(key, obs, carry))
        times.append(time.perf_counter() - start)
    return float(np.median(times))
