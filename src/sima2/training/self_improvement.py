"""The self-improvement stage: the agent practises on tasks the world generates, keeps what succeeded, and is
cloned on its own successes mixed with the demonstrations.

Each round runs `practise` (actions sampled from the agent; episodes judged by the world's success signal or a
pluggable `Judge`), adds the kept episodes to the `ExperienceStore` under `out/experience`, then behaviour-
clones the agent for `bc.num_updates` updates on the demonstrations plus the store, the store's episodes
repeated so that they make up `experience_share` of the rows. Each round's episodes and its practice record go
into the store in one atomic write (tagged `round-<r>`), so a resumed run neither practises a round twice nor
adds its episodes twice; each round's cloning resumes from its own checkpoints (`out/round-<r>`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import jax
from jaxtyping import PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, Env
from sima2.training.config import TrainConfig, check_fields
from sima2.training.data import Judge
from sima2.training.experience import ExperienceStore, practise, world_success

# (agent, rows, TrainConfig) -> the cloned agent: the pipeline's own behaviour-cloning call.
Clone = Callable[[AbstractAgent, datasets.Dataset, TrainConfig], AbstractAgent]


@dataclasses.dataclass(frozen=True)
class SelfImprovementConfig:
    """Rounds of practice then cloning; `rounds=0` skips the stage. `bc` is the cloning `TrainConfig` of each
    round (its `num_updates` per round)."""

    rounds: int = 0
    practice_envs: int = 64
    practice_steps: int = 256  # steps per world and round; episodes still running at the end are dropped
    # The levels practised in (None: the training level(s)), e.g. a family that had no demonstrations.
    practice_level: str | None = None
    store_capacity: int = 1_000_000  # transitions kept on disk (oldest whole episodes dropped beyond it)
    experience_share: float = 0.5  # the store's share of the cloning rows (its episodes repeated to reach it)
    bc: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(stage="bc", num_updates=0))

    def __post_init__(self) -> None:
        check_fields(
            self,
            rounds=(self.rounds >= 0, "must be >= 0"),
            practice_envs=(self.practice_envs >= 1, "must be >= 1"),
            practice_steps=(self.practice_steps >= 1, "must be >= 1"),
            store_capacity=(self.store_capacity >= 1, "must be >= 1"),
            experience_share=(0 < self.experience_share < 1, "must be in (0, 1)"),
        )


def mixed_rows(demonstrations: datasets.Dataset, experience: datasets.Dataset, share: float) -> datasets.Dataset:
    """The demonstrations followed by the experience's episodes repeated so they make up about `share` of the
    rows (at least once; the rows are shuffled by the batches)."""
    if not len(experience):
        return demonstrations
    copies = max(1, round(share / (1 - share) * len(demonstrations) / len(experience)))
    return datasets.concatenate_datasets([demonstrations, *[experience] * copies])


def self_improve(
    config: SelfImprovementConfig,
    agent: AbstractAgent,
    env: Env,
    env_params: PyTree,
    demonstrations: datasets.Dataset,
    key: PRNGKeyArray,
    out: str | Path,
    *,
    clone: Clone,
    judge: Judge = world_success,
    announce: Callable[[str], None] = lambda text: None,
) -> tuple[AbstractAgent, list[dict[str, Any]]]:
    """`config.rounds` rounds of practice and cloning from `agent`; returns the improved agent and one record per
    round (practice episodes, the world's success rate while practising, episodes and steps kept, store size).

    `clone(agent, rows, train_config)` trains the agent on the rows (the pipeline passes `train_bc` with its
    plan supervision and resume flag). Reopening `out` resumes: practised rounds are not practised again.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # With several processes each keeps its own store of its own practice (different keys) and clones on it.
    processes, index = jax.process_count(), jax.process_index()
    key = key if processes == 1 else jax.random.fold_in(key, index)
    store = ExperienceStore(out / ("experience" if processes == 1 else f"experience-{index}"),
                            capacity=config.store_capacity)
    records: list[dict[str, Any]] = []
    for r in range(config.rounds):
        tag = f"round-{r}"
        if store.added(tag) is None:  # the round's rows and record are written in one atomic step
            rows, report = practise(
                agent, env, env_params, jax.random.fold_in(key, r),
                num_envs=config.practice_envs, num_steps=config.practice_steps, judge=judge,
            )
            store.add(rows, tag=tag, info={
                "round": r,
                "practice_episodes": report.episodes,
                "practice_success_rate": round(report.success_rate, 4),
                "kept_episodes": report.kept_episodes,
                "kept_steps": report.kept_steps,
            })
        record = store.added(tag)
        records.append(record)
        announce(f"      round {r + 1}/{config.rounds}: practice success {record['practice_success_rate']:.2f} over "
                 f"{record['practice_episodes']} episodes; {record['kept_episodes']} kept; the store holds "
                 f"{record['store_transitions']} steps")
        if config.bc.num_updates == 0 or not len(store):
            continue
        rows = mixed_rows(demonstrations, store.dataset(), config.experience_share)
        round_config = dataclasses.replace(config.bc, out=str(out / f"round-{r}"))
        agent = clone(agent, rows, round_config)
    return agent, records

