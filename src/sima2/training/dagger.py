"""Interactive imitation (DAgger, Ross et al. 2011): the agent drives, the expert labels every state it visits.

Each round runs episodes in which each step executes the expert's action with probability `beta` (DAgger's
mixing; `beta = expert_share_decay ** round`, so round 0 is the expert alone) and otherwise the agent's, records
the expert's action in every visited state, adds exactly `labels_per_round` of these labelled steps to the
dataset, clones the agent on everything gathered so far (`train_bc`, continuing from the current agent) and
scores it greedily on fresh seeds. With `expert_share_decay=1` the expert always drives: plain behaviour
cloning on the same label budget, through the same code, which is the comparison DAgger has to win:

    agent, records = dagger(agent, adapter, make_expert, config, out="runs/dagger")
    _, plain = dagger(agent, adapter, make_expert, dataclasses.replace(config, expert_share_decay=1.0), out=...)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import datasets
import jax
from jaxtyping import PRNGKeyArray

from sima2.contract import AbstractAgent
from sima2.envs.adapter import GymnasiumAdapter
from sima2.training.config import TrainConfig
from sima2.training.gym_pipeline import EVAL_SEED_START
from sima2.training.host_episodes import Expert, episode_rows, evaluate_gym, run_episodes
from sima2.training.stages import train_bc


@dataclasses.dataclass(frozen=True)
class DaggerConfig:
    """Rounds of labelled episodes then cloning; `bc.num_updates` is each round's cloning."""

    rounds: int = 4
    labels_per_round: int = 1000  # expert labels (steps) added to the dataset each round
    expert_share_decay: float = 0.5  # beta of round r = decay ** r (1.0: the expert always drives: plain BC)
    eval_episodes: int = 100
    seed: int = 0
    max_episode_steps: int | None = None  # cut longer episodes (for an env without a time limit of its own)
    bc: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(stage="bc", num_updates=500))

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.labels_per_round < 1 or self.eval_episodes < 1:
            raise ValueError("rounds, labels_per_round and eval_episodes must be >= 1")
        if not 0.0 <= self.expert_share_decay <= 1.0:
            raise ValueError(f"expert_share_decay must be in [0, 1], got {self.expert_share_decay}")


def _labelled_rows(
    agent: AbstractAgent, env: GymnasiumAdapter, expert: Expert, beta: float, budget: int, first_seed: int,
    key: PRNGKeyArray, max_episode_steps: int | None,
) -> tuple[datasets.Dataset, int]:
    """Episodes (num_envs at a time, consecutive seeds) until `budget` labelled steps, cut to exactly that many
    (the last episode keeps its first steps); returns the rows and the next unused seed."""
    episodes, steps, seed = [], 0, first_seed
    while steps < budget:
        seeds = range(seed, seed + env.num_envs)
        batch = run_episodes(env, seeds=seeds, agent=agent, expert=expert, expert_share=beta,
                             key=jax.random.fold_in(key, seed), deterministic=False,
                             max_episode_steps=max_episode_steps)
        episodes += batch
        steps += sum(e.length for e in batch)
        seed += env.num_envs
    rows = episode_rows(episodes, labels="expert")
    return rows.select(range(budget)), seed


def dagger(
    agent: AbstractAgent,
    env: GymnasiumAdapter,
    expert: Expert,
    config: DaggerConfig,
    *,
    out: str | Path,
    **train_bc_args: Any,
) -> tuple[AbstractAgent, list[dict[str, Any]]]:
    """`config.rounds` rounds of DAgger from `agent` (see module docstring); returns the final agent and one
    record per round (`expert_labels` so far, `beta`, and the greedy `success_rate`, `episode_length` and
    `return` on `eval_episodes` fresh seeds), also written to `out/dagger.json`. `train_bc_args` go to
    `train_bc` (`image_shape`, `action_nvec`, ...; default: from `env.spec`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = env.spec
    bc_args = {"image_shape": spec.observation.image.shape, "action_nvec": spec.action.nvec,
               "vocab_size": spec.observation.vocab_size, **train_bc_args}
    key = jax.random.key(config.seed)
    gathered: datasets.Dataset | None = None
    records: list[dict[str, Any]] = []
    seed = 0
    eval_seeds = range(EVAL_SEED_START, EVAL_SEED_START + config.eval_episodes)
    for r in range(config.rounds):
        beta = config.expert_share_decay**r
        rows, seed = _labelled_rows(agent, env, expert, beta, config.labels_per_round, seed, jax.random.fold_in(key, r),
                                    config.max_episode_steps)
        if gathered is not None:  # episode ids continue after the ones already gathered
            offset = max(gathered["episode_id"]) + 1
            rows = rows.map(lambda row, shift=offset: {"episode_id": row["episode_id"] + shift})
        gathered = rows if gathered is None else datasets.concatenate_datasets([gathered, rows])
        round_config = dataclasses.replace(config.bc, stage="bc", seed=config.seed + r, out=str(out / f"round-{r}"))
        agent = train_bc(round_config, agent, gathered, **bc_args).model
        score = evaluate_gym(agent, env, eval_seeds, key=jax.random.fold_in(key, 10_000 + r),
                             max_episode_steps=config.max_episode_steps).summary
        records.append({"round": r, "beta": beta, "expert_labels": len(gathered),
                        **{k: score[k] for k in ("success_rate", "episode_length", "return")}})
        (out / "dagger.json").write_text(json.dumps(records, indent=2) + "\n")
    return agent, records


__all__ = ["DaggerConfig", "dagger"]
