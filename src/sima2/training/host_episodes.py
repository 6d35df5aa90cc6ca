"""Whole episodes of a gymnasium env, one per seed, from a host loop: who acts (an agent, a scripted expert, or
both mixed) and who labels (the expert, in every state the episode visits).

    episodes = run_episodes(adapter, seeds=range(100), agent=agent)                  # evaluation
    episodes = run_episodes(adapter, seeds=range(1000, 1200), expert=make_expert)    # demonstrations
    episodes = run_episodes(adapter, seeds=..., agent=agent, expert=make_expert)     # the agent drives,
                                                                                     # the expert labels (DAgger)

An expert is a factory `make_expert(env) -> policy`, called at each episode's start with the env instance that
episode runs in (`GymnasiumAdapter.env_instances`; scripted bots such as BabyAI's read it; None with async
vectorisation, whose envs live in other processes), and `policy(observation, executed) -> action` is called at
every step with the env's own observation and the native action executed at the step before (None at the
episode's first step): when the agent drives, that is not the expert's own suggestion, and a planning bot must
know what really happened. Its actions are the env's native actions, turned into sima2's factors by the
adapter's `DiscreteActionMap.inverse`, or sima2 factors (`expert_actions="factors"`); anything else is refused
with the seed and step.

The agent acts as in the one rollout (`sima2.training.rollout`): its memory is reset and its instruction
features computed at each episode's start, greedy or sampled, a jitted step over the batch of envs. Each
episode is run on its own seed (`GymnasiumAdapter.reset(episode_seeds=...)`), so evaluation seeds stay apart
from demonstration seeds, and a greedy agent's or a deterministic expert's episode is the same whatever the
number of envs (sampled actions, noise and mixing draw from keys shared by the batch).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import equinox as eqx
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, UInt8

from sima2.contract import AbstractAgent
from sima2.envs.action_maps import DiscreteActionMap
from sima2.envs.adapter import GymnasiumAdapter
from sima2.training.recurrent import initial_carries, reset_where
from sima2.training.rollout import Actor, AgentActor

# make_expert(env) -> policy(observation, executed) -> action, called once per episode (see module docstring).
Expert = Callable[[gym.Env | None], Callable[[Any, Any], Any]]
ExpertActions = Literal["native", "factors"]


@dataclasses.dataclass(frozen=True)
class HostEpisode:
    """One episode of a gymnasium env: its seed, mission, what the agent saw (resized frames, proprio), the
    actions executed, the expert's label in each visited state (None without an expert), rewards and outcome.
    `frames[t]` is the observation `actions[t]` was taken in."""

    seed: int
    mission: str
    instruction_ids: Int[np.ndarray, " L"]
    frames: UInt8[np.ndarray, "T H W 3"]
    proprio: Float[np.ndarray, "T P"]
    actions: Int[np.ndarray, "T F"]  # sima2 factors
    labels: Int[np.ndarray, "T F"] | None
    rewards: Float[np.ndarray, " T"]
    success: bool
    truncated: bool  # ended by a time limit (the env's or `max_episode_steps`) rather than the task

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())


class _Step(eqx.Module):
    """The agent's batched decision: memory reset where episodes start. Instruction features are computed by
    `features`, called only in steps where some episode starts (for a frozen pretrained encoder they cost more
    than the decision itself)."""

    actor: Actor

    def features(self, obs: PyTree, episode: PyTree, first: Bool[Array, " E"]) -> PyTree:
        fresh = jax.vmap(self.actor.episode_features)(obs)
        return fresh if episode is None else reset_where(first, fresh, episode)

    def __call__(
        self, key: PRNGKeyArray, obs: PyTree, carry: PyTree, episode: PyTree, first: Bool[Array, " E"]
    ) -> tuple[Array, PyTree]:
        num = first.shape[0]
        carry = reset_where(first, initial_carries(self.actor, num), carry)
        action, carry, _ = jax.vmap(self.actor, in_axes=(0, 0, None, None, 0, 0))(
            jax.random.split(key, num), obs, None, None, carry, episode
        )
        return action, carry


def random_actions(action_nvec: Sequence[int], seed: int = 0) -> Expert:
    """A uniformly random policy over sima2's action factors, as an expert (`expert_actions="factors"`): the
    chance level an agent's success is compared with."""
    nvec = np.asarray(action_nvec)
    episodes = itertools.count()

    def make(env: gym.Env | None) -> Callable[[Any, Any], np.ndarray]:
        del env
        rng = np.random.default_rng([seed, next(episodes)])  # a stream per episode started
        return lambda observation, executed: rng.integers(0, nvec)

    return make


def _empty_buffer() -> dict[str, list]:
    return dict(frames=[], proprio=[], actions=[], labels=[], rewards=[])


def _check(env: Any, seeds: Sequence[int], agent: Any, expert: Any, expert_share: float, noise: float) -> None:
    if not isinstance(env, GymnasiumAdapter):
        raise TypeError(f"run_episodes needs a GymnasiumAdapter, got {type(env).__name__} (see GymnasiumAdapter.of)")
    if not len(seeds):
        raise ValueError("seeds is empty: give one seed per episode to run")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds repeat: each episode needs its own seed")
    if min(seeds) < 0:
        raise ValueError(f"seeds must be >= 0, got {min(seeds)}")
    if agent is None and expert is None:
        raise ValueError("nobody acts: pass agent=, expert= or both")
    if not 0.0 <= expert_share <= 1.0 or not 0.0 <= noise < 1.0:
        raise ValueError(f"expert_share must be in [0, 1] and noise in [0, 1), got {expert_share} and {noise}")
    if (agent is None or expert is None) and expert_share not in (0.0, 1.0):
        raise ValueError("expert_share mixes the agent's and the expert's actions: it needs both agent= and expert=")


def _label(env: GymnasiumAdapter, action: Any, expert_actions: str, seed: int, step: int) -> np.ndarray:
    """The expert's action as sima2 factors, or a ValueError naming the seed and step of a bad one."""
    nvec = np.asarray(env.action_nvec)
    try:
        if action is None:
            raise ValueError("the expert returned None")
        if expert_actions == "factors":
            factors = np.asarray(action)
            if factors.shape != nvec.shape or not np.issubdtype(factors.dtype, np.integer):
                raise ValueError(f"expected {len(nvec)} integer factors, got {factors!r}")
            if np.any(factors < 0) or np.any(factors >= nvec):
                raise ValueError(f"factors {factors.tolist()} out of range for action_nvec={tuple(nvec.tolist())}")
            return factors.astype(np.int32)
        native = np.asarray(action)
        per_action = 1 if isinstance(env.action_map, DiscreteActionMap) else len(nvec)  # a MultiDiscrete env's
        if native.size != per_action:
            raise ValueError(f"expected one native action, got {native!r}")
        return env.action_map.inverse(native.reshape(1, per_action))[0]
    except ValueError as err:
        raise ValueError(f"bad expert action in the episode of seed {seed}, step {step}: {err}") from err


def run_episodes(
    env: GymnasiumAdapter,
    *,
    seeds: Sequence[int],
    agent: AbstractAgent | None = None,
    expert: Expert | None = None,
    expert_actions: ExpertActions = "native",
    expert_share: float | None = None,
    noise: float = 0.0,
    deterministic: bool = True,
    key: PRNGKeyArray | None = None,
    max_episode_steps: int | None = None,
    progress: bool = False,
) -> list[HostEpisode]:
    """One episode per seed of `seeds` (returned in that order), `env.num_envs` at a time.

    `agent` acts (greedy unless `deterministic=False`), `expert` labels every visited state; with both, each
    step executes the expert's action with probability `expert_share` (default 0: the agent drives; DAgger's
    beta), with the expert alone it always does. `noise`: probability that a step executes a uniformly random
    action instead (DART); rows still record the expert's label. `max_episode_steps` cuts longer episodes
    (recorded as truncated) for envs without a time limit of their own.
    """
    seeds = [int(s) for s in seeds]
    share = (0.0 if agent is not None else 1.0) if expert_share is None else float(expert_share)
    _check(env, seeds, agent, expert, share, noise)
    if expert_actions not in ("native", "factors"):
        raise ValueError(f"expert_actions must be 'native' or 'factors', got {expert_actions!r}")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
    key = jax.random.key(0) if key is None else key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 1))).ravel())
    nvec = np.asarray(env.action_nvec)
    num = env.num_envs
    synced = isinstance(env.envs, gym.vector.SyncVectorEnv)
    instances = env.env_instances if expert is not None and synced else [None] * env.num_envs
    decide = _Step(AgentActor(agent, deterministic=deterministic)) if agent is not None else None
    step, features = (eqx.filter_jit(decide), eqx.filter_jit(decide.features)) if decide is not None else (None, None)
    carry = initial_carries(agent, num) if agent is not None else None
    episode_features = None

    obs = env.reset(episode_seeds=seeds)
    first = np.ones(num, bool)
    buffers = [_empty_buffer() for _ in range(num)]
    starts: list[tuple[str, np.ndarray]] = [("", np.zeros(0, np.int32))] * num
    policies: list[Callable[[Any, Any], Any] | None] = [None] * num
    executed_native: list[Any] = [None] * num  # the native action each env executed last (None: a new episode)
    finished: dict[int, HostEpisode] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(seeds), desc="episodes", dynamic_ncols=True)
    while len(finished) < len(seeds):
        live = env.episode_seed >= 0  # envs running an episode of the seed list
        host_obs = jax.device_get(obs)
        if first.any():
            missions = env.missions()
            for i in np.flatnonzero(first & live).tolist():
                starts[i] = (missions[i], np.asarray(host_obs["instruction"][i], np.int32))
                policies[i] = expert(instances[i]) if expert is not None else None
                executed_native[i] = None
        labels = np.zeros((num, len(nvec)), np.int32)
        if expert is not None:
            for i in np.flatnonzero(live).tolist():
                action = policies[i](env.raw_observation(i), executed_native[i])
                labels[i] = _label(env, action, expert_actions, int(env.episode_seed[i]), len(buffers[i]["actions"]))
        if agent is not None:
            key, act_key = jax.random.split(key)
            if first.any():
                episode_features = features(obs, episode_features, jnp.asarray(first))
            action, carry = step(act_key, obs, carry, episode_features, jnp.asarray(first))
            executed = np.asarray(action, np.int32)
            if expert is not None and share > 0:
                use_expert = rng.random(num) < share
                executed = np.where(use_expert[:, None], labels, executed)
        else:
            executed = labels.copy()
        if noise > 0:
            slip = rng.random(num) < noise
            executed = np.where(slip[:, None], rng.integers(0, nvec, size=(num, len(nvec))), executed).astype(np.int32)
        running_seed = env.episode_seed.copy()  # `step` moves finished envs on to their next seed
        native = env.action_map(executed)
        executed_native = [a.item() if np.ndim(a) == 0 else a for a in native]
        next_obs, reward, done, info = env.step(executed)
        reward, done = np.asarray(reward, np.float32), np.asarray(done, bool)
        success, truncated = np.asarray(info.success, bool), np.asarray(info.truncated, bool)
        cut = np.zeros(num, bool)
        for i in np.flatnonzero(live).tolist():
            buffer = buffers[i]
            buffer["frames"].append(np.asarray(host_obs["image"][i], np.uint8))
            buffer["proprio"].append(np.asarray(host_obs["proprio"][i], np.float32))
            buffer["actions"].append(executed[i])
            buffer["labels"].append(labels[i])
            buffer["rewards"].append(reward[i])
            cut[i] = not done[i] and max_episode_steps is not None and len(buffer["actions"]) >= max_episode_steps
        for i in np.flatnonzero((done | cut) & live).tolist():
            buffer, seed = buffers[i], int(running_seed[i])
            finished[seed] = HostEpisode(
                seed=seed,
                mission=starts[i][0],
                instruction_ids=starts[i][1],
                frames=np.stack(buffer["frames"]),
                proprio=np.stack(buffer["proprio"]),
                actions=np.stack(buffer["actions"]).astype(np.int32),
                labels=np.stack(buffer["labels"]).astype(np.int32) if expert is not None else None,
                rewards=np.asarray(buffer["rewards"], np.float32),
                success=bool(done[i] and success[i]),
                truncated=bool(cut[i] or (done[i] and truncated[i])),
            )
            buffers[i] = _empty_buffer()
            if bar is not None:
                bar.update()
        if cut.any():
            next_obs = env.restart(cut)
        obs, first = next_obs, done | cut
    if bar is not None:
        bar.close()
    return [finished[s] for s in seeds]


def episode_rows(episodes: Sequence[HostEpisode], *, labels: str = "expert") -> datasets.Dataset:
    """The demonstration rows (`sima2.training.FEATURES`) of `episodes`, in order: each step's frame and the
    action it records, the expert's label (`"expert"`) or the executed action (`"executed"`)."""
    from sima2.training.data import FEATURES

    if labels not in ("expert", "executed"):
        raise ValueError(f"labels must be 'expert' or 'executed', got {labels!r}")
    columns: dict[str, list] = {name: [] for name in FEATURES}
    for number, episode in enumerate(episodes):
        if labels == "expert" and episode.labels is None:
            raise ValueError(f"episode {number} (seed {episode.seed}) has no expert labels: run it with an expert")
        actions = episode.labels if labels == "expert" else episode.actions
        for t in range(episode.length):
            last = t == episode.length - 1
            row = {
                "image": episode.frames[t],
                "instruction": episode.mission,
                "instruction_ids": episode.instruction_ids.tolist(),
                "proprio": episode.proprio[t].tolist(),
                "touch": [],
                "action": actions[t].tolist(),
                "episode_id": number,
                "step_id": t,
                "plan": [],
                "subgoal_index": 0,
                "subgoal_done": bool(last and episode.success),  # one subgoal: the task itself
            }
            for name in FEATURES:
                columns[name].append(row[name])
    return datasets.Dataset.from_dict(columns, features=FEATURES)


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    """One evaluated episode, as `episodes.jsonl` lists it."""

    seed: int
    mission: str
    success: bool
    length: int
    episode_return: float
    truncated: bool


@dataclasses.dataclass(frozen=True)
class GymEvaluation:
    """`evaluate_gym`'s result: the figures over all episodes (`score_episodes`, `eval_seconds`) and one record
    per episode, in seed order."""

    summary: dict[str, float]
    episodes: list[EpisodeRecord]

    def write(self, folder: str | Path) -> Path:
        """`folder/eval.json` (the summary) and `folder/episodes.jsonl` (one line per episode)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        lines = (json.dumps(dataclasses.asdict(e)) + "\n" for e in self.episodes)
        (folder / "episodes.jsonl").write_text("".join(lines))
        return folder / "eval.json"


def evaluate_gym(
    agent: AbstractAgent,
    env: GymnasiumAdapter,
    seeds: Sequence[int],
    *,
    deterministic: bool = True,
    key: PRNGKeyArray | None = None,
    max_episode_steps: int | None = None,
    gif_dir: str | Path | None = None,
    num_gifs: int = 4,
    progress: bool = False,
) -> GymEvaluation:
    """The agent's episodes in a gymnasium env, one per seed: success rate, mean length and return (the
    figures `evaluate` reports for sima2 worlds), one record per episode, and GIFs of the first `num_gifs`
    episodes in `gif_dir` (what the agent saw, its mission and outcome). Greedy unless `deterministic=False`."""
    start = time.perf_counter()
    episodes = run_episodes(env, seeds=seeds, agent=agent, deterministic=deterministic, key=key,
                            max_episode_steps=max_episode_steps, progress=progress)
    summary = {**score_episodes(episodes), "eval_seconds": time.perf_counter() - start}
    records = [EpisodeRecord(e.seed, e.mission, e.success, e.length, round(e.episode_return, 6), e.truncated)
               for e in episodes]
    if gif_dir is not None and num_gifs > 0:
        from sima2.training.episodes import Episode, write_episode_gifs

        shown = episodes[:num_gifs]
        write_episode_gifs(
            [Episode(frames=e.frames, topdown=e.frames, instruction=e.mission, success=e.success, length=e.length,
                     outcome="success" if e.success else "timeout" if e.truncated else "failed") for e in shown],
            gif_dir, [f"seed-{e.seed}" for e in shown], topdown=False,
        )
    return GymEvaluation(summary, records)


def score_episodes(episodes: Sequence[HostEpisode]) -> dict[str, float]:
    """Success rate, mean length and return over `episodes` (the figures `evaluate` reports)."""
    if not episodes:
        return {"episodes": 0.0, "success_rate": 0.0}
    return {
        "episodes": float(len(episodes)),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "episode_length": float(np.mean([e.length for e in episodes])),
        "return": float(np.mean([e.episode_return for e in episodes])),
    }


__all__ = [
    "EpisodeRecord",
    "Expert",
    "ExpertActions",
    "GymEvaluation",
    "HostEpisode",
    "episode_rows",
    "evaluate_gym",
    "random_actions",
    "run_episodes",
    "score_episodes",
]
