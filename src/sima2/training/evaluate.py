"""Evaluation of an agent in a functional env: success rate, navigation efficiency, episode length and
return, episodes/s and decision latency; `evaluate_splits` runs held-out splits, and `evaluate_world` the
main job's table of every split and level of the built-in world, with the planner ablation (its own plan
vs the instruction alone, and `plan_accuracy`) for an agent that writes plans.

Episodes come from the one rollout (`sima2.training.rollout`); success and path lengths from the typed
`StepInfo` of each step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, Env, Transition
from sima2.training.config import EvalConfig
from sima2.training.rollout import AgentActor, PlanningActor, init_rollout, reset_worlds, rollout


@eqx.filter_jit
def _rollout(
    agent: AbstractAgent, env: Env, env_params: PyTree, key: PRNGKeyArray, num_envs: int, max_steps: int,
    deterministic: bool, use_plan: bool,
) -> tuple[Array, ...]:  # fmt: skip
    """`max_steps` steps of `num_envs` worlds through the one rollout: per step whether an episode ended,
    its return, length, success and path lengths.

    The agent's and the params' arrays are arguments, not constants, and only the settings the rollout reads
    are static (not how many episodes are scored, nor which splits), so every split (and every checkpoint
    of the same agent) reuses one compiled program.
    """
    reset_key, run_key = jax.random.split(key)
    if use_plan:
        actor = PlanningActor.of(agent, deterministic=deterministic)
    else:
        actor = AgentActor(agent, deterministic=deterministic)
    state = init_rollout(actor, env, env_params, reset_key, num_envs)

    def keep(step: Transition, _: PyTree) -> tuple[Array, ...]:
        info = step.info
        return step.done, step.episode_return, step.episode_length, info.success, info.path_length, \
            info.optimal_path_length

    _, kept = rollout(actor, env, env_params, state, run_key, max_steps, keep=keep)
    return kept


def evaluate(
    agent: AbstractAgent, env: Env, env_params: PyTree, key: PRNGKeyArray, config: EvalConfig | None = None
) -> dict[str, float]:
    """Run `config.num_envs` worlds for `config.max_steps` steps and score the episodes that finished,
    up to `config.num_episodes` of them (the earliest per world first). The agent acts greedily unless
    `config.deterministic` is False. `eval_seconds` and `episodes_per_s` time the rollout alone, after
    compilation. Navigation efficiency (optimal / travelled path over successful episodes) is reported
    when the env reports path lengths."""
    config = EvalConfig() if config is None else config
    args = (agent, env, env_params, key, config.num_envs, config.max_steps, config.deterministic, config.use_plan)
    compiled = _rollout.lower(*args).compile()  # cached: compiles once per agent / env structure
    start = time.perf_counter()
    outs = jax.device_get(jax.block_until_ready(compiled(*args)))
    elapsed = time.perf_counter() - start
    done, returns, lengths, success, actual, optimal = (np.asarray(x) for x in outs)
    done = done.astype(bool)
    if done.sum() == 0:
        return {"episodes": 0.0, "success_rate": 0.0, "episodes_per_s": 0.0, "eval_seconds": elapsed}
    order = np.argsort(np.cumsum(done, axis=0)[done], kind="stable")[: config.num_episodes]
    pick = lambda x: np.asarray(x)[done][order]  # noqa: E731
    success = pick(success).astype(bool)
    result = {
        "episodes": float(len(order)),
        "success_rate": float(success.mean()),
        "episode_length": float(pick(lengths).mean()),
        "return": float(pick(returns).mean()),
        "episodes_per_s": float(done.sum() / elapsed),
        "eval_seconds": elapsed,
    }
    optimal, actual = pick(optimal)[success], pick(actual)[success]
    known = np.isfinite(optimal) & np.isfinite(actual)
    if known.any():
        ratio = optimal[known] / np.maximum(actual[known], 1e-6)
        result["navigation_efficiency"] = float(np.mean(np.minimum(ratio, 1.0)))
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


def check_eval_config(config: EvalConfig, env: Any) -> None:
    """Refuse, naming the override, splits the world does not have and an evaluation shorter than the
    longest episode (it would never see a failing episode end, only successes finish early, and so would
    overstate success)."""
    unknown = [split for split in config.splits if split not in env.splits]
    if unknown:
        raise ValueError(f"eval.splits names {unknown}, which {','.join(env.level_names)} does not have; "
                         f"its splits: {', '.join(env.splits)}")
    if config.max_steps < env.max_steps:
        names = ",".join(env.level_names)
        raise ValueError(
            f"eval.max_steps ({config.max_steps}) is shorter than the longest episode of {names} "
            f"({env.max_steps} steps): failing episodes would never finish and success would be overstated; "
            f"set eval.max_steps={env.max_steps} or more"
        )


@eqx.filter_jit
def _write_plans(agent: Any, instructions: Array, tokens: Any) -> Any:
    """The plans `agent` writes for a batch of instructions (compiled once per agent structure)."""
    from sima2.policy.plans import write_plan

    return jax.vmap(lambda ids: write_plan(agent, ids, tokens))(instructions)


def plan_accuracy(
    agent: Any, env: Any, env_params: PyTree, key: PRNGKeyArray, num_worlds: int = 64
) -> float:
    """Share of `num_worlds` fresh worlds of a `Sima2Env` for which the plan `agent` writes from the first
    observation's instruction is exactly the expert's subgoal sequence (`env.plan_text`), compared token for
    token in the ids the agent reads."""
    from sima2.planning.tokenizer import subgoal_ids
    from sima2.policy.plans import instruction_tokenizer, plan_tokens

    tokens, tokenizer = plan_tokens(agent), instruction_tokenizer(agent)
    obs, states = reset_worlds(env, env_params, jax.random.split(key, num_worlds))
    written = _write_plans(agent, obs["instruction"], tokens)
    subgoals, counts = jax.device_get((written.subgoals, written.count))
    states = jax.device_get(states)
    correct = 0
    for world in range(num_worlds):
        state = jax.tree.map(lambda x, w=world: x[w], states)
        expert = [subgoal_ids(tokenizer, text, subgoals.shape[-1], tokens.pad) for text in env.plan_text(state)]
        mine = subgoals[world, : int(counts[world])]
        correct += len(mine) == len(expert) and all(np.array_equal(m, e) for m, e in zip(mine, expert, strict=True))
    return correct / num_worlds


def _merge_levels(per_level: dict[str, dict[str, float]]) -> dict[str, float]:
    """One split's figures from its levels': episodes summed, rates the mean over levels (each task family
    weighs the same), and the per-level success as `<metric>/<level>`."""
    merged: dict[str, float] = {"episodes": float(sum(r["episodes"] for r in per_level.values()))}
    for metric in ("success_rate", "episode_length", "return", "navigation_efficiency",
                   "instruction_only_success_rate", "plan_accuracy"):
        values = [r[metric] for r in per_level.values() if metric in r]
        if values:
            merged[metric] = float(np.mean(values))
    merged["eval_seconds"] = float(sum(r["eval_seconds"] for r in per_level.values()))
    for level, r in per_level.items():
        for metric in ("success_rate", "instruction_only_success_rate"):
            if metric in r:
                merged[f"{metric}/{level}"] = r[metric]
        merged[f"episodes/{level}"] = r["episodes"]
    return merged


def evaluate_world(
    agent: Any, env: Any, key: Any, config: EvalConfig, *, plans: bool = False, progress: bool = False
) -> dict[str, dict[str, float]]:
    """The main job's evaluation of `agent` in a `Sima2Env`: every split of its levels (`env.splits`); in an env
    of several levels, every level of every split it applies to (its own `config.num_episodes` episodes), with
    each split's overall figures the mean over its levels (each task family weighs the same) and the per-level
    ones as `<metric>/<level>`.

    `plans`: the agent writes and follows its own plan (`success_rate`), and the same agent is also scored
    acting from the instruction alone (`instruction_only_success_rate`), with the planner's `plan_accuracy`
    (exact subgoal sequence) on each split: the planner ablation."""
    from sima2.envs import level_has_split

    check_eval_config(config, env)
    splits = config.splits or env.splits
    if len(env.levels) == 1:
        levels = {s: [None] for s in splits}
    else:
        levels = {s: [lv.name for lv in env.levels if level_has_split(lv, s)] for s in splits}
    cells = {(s, level): env.default_params(s, level=level) for s in splits for level in levels[s]}
    named = {s if level is None else f"{s}/{level}": params for (s, level), params in cells.items()}
    by_cell = evaluate_splits(
        agent, env, named, key, dataclasses.replace(config, use_plan=plans), progress=progress
    )
    if plans:
        alone = evaluate_splits(agent, env, named, key, dataclasses.replace(config, use_plan=False), progress=progress)
        for i, name in enumerate(named):
            by_cell[name]["instruction_only_success_rate"] = alone[name]["success_rate"]
            by_cell[name]["plan_accuracy"] = plan_accuracy(
                agent, env, named[name], jax.random.fold_in(key, 10_000 + i), min(config.num_episodes, 256)
            )
    if len(env.levels) == 1:
        return by_cell
    return {
        split: _merge_levels({level: by_cell[f"{split}/{level}"] for level in levels[split]}) for split in splits
    }
