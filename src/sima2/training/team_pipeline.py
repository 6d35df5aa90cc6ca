"""The team job: the team expert's demonstrations -> behaviour cloning of one shared policy -> optional
multi-agent PPO -> the team metrics, into one run folder.

    from sima2.training.team_pipeline import team_run_config, train_team
    summary = train_team("runs/team", team_run_config(overrides=["bc.num_updates=2000"]))

`sima2 train --team` runs it. The policy is the preset's agent, sized from one agent's spec (its proprio holds
its agent index, so one set of weights plays every role). PPO collects from every (world, agent) stream with
the team's reward and per-agent values (`sima2.training.team.TeamRollout`) through the same `ppo_update` as
every other job. `dagger_rounds` > 0 adds DAgger between the two: the cloned agent plays
with itself, the team expert labels every state it reaches, and cloning continues on the grown data. The
run folder holds `pipeline.json`, `demonstrations/`, `bc/`, `dagger/round_N/` and `ppo/` (each `final/`
loadable with `Agent.from_pretrained`), `final/` (the evaluated agent), `eval.json` (per family and split:
self-play, cross-play with the expert partner in both roles, solo; and the untrained agent's figures on the
training split, the random-policy baseline) and `gifs/` (every agent's view beside
the shared map).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import jax
import numpy as np

from sima2.envs.team import FAMILIES, TeamEnv
from sima2.interop.pretrained import atomic_write
from sima2.training.config import PPOConfig, TrainConfig, apply_overrides, config_to_dict
from sima2.training.data import load_demonstrations, save_demonstrations
from sima2.training.host_rollout import make_host_ppo
from sima2.training.stages import run_stage, train_bc
from sima2.training.team import compiled_team_rollout, evaluate_team, record_team_demonstrations
from sima2.training.team_critic import CentralisedCritic

log = logging.getLogger("sima2.training")
TEAM_JOB = "team"  # `pipeline.json`'s "job" in a team run folder


@dataclasses.dataclass(frozen=True)
class TeamRunConfig:
    """The team job's settings: the agent preset (model sizes), the team, how much expert data, the stages'
    `TrainConfig`s and the evaluation's worlds per family, split and partner."""

    preset: str = "cpu-small"
    num_agents: int = 2
    family: str | None = None  # the one family trained and scored; None: every family, drawn at every reset
    demo_worlds: int = 256
    demo_steps: int = 128  # decision steps per demonstration world (several episodes each)
    ppo_worlds: int = 32
    eval_worlds: int = 128
    seed: int = 0
    bc: TrainConfig | None = None  # None: the preset's cloning settings, sized for the team data
    ppo: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(stage="ppo", num_updates=0))
    # DAgger for the team: rounds of the cloned agent's own self-play (`dagger_worlds` worlds x `demo_steps`
    # steps, sampled actions), every state labelled with the team expert's action and added to the data, each
    # round followed by `dagger_updates` cloning updates on everything gathered; 0 rounds: cloning only. In
    # round n (from 0) each agent's step is the expert's with probability `dagger_expert_share_decay ** (n+1)`
    # (DAgger's mixing, the demonstrations being round "-1"; 0: the agents alone).
    dagger_rounds: int = 0
    dagger_worlds: int = 64
    dagger_updates: int = 1000
    dagger_expert_share_decay: float = 0.5
    # PPO's value reads every agent's proprio (training only: `sima2.training.team_critic`); False: each
    # agent's own value.
    centralised_critic: bool = True

    def __post_init__(self) -> None:
        for name in ("demo_worlds", "demo_steps", "ppo_worlds", "eval_worlds", "dagger_worlds", "dagger_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dagger_rounds < 0:
            raise ValueError(f"dagger_rounds must be >= 0, got {self.dagger_rounds}")
        if not 0.0 <= self.dagger_expert_share_decay <= 1.0:
            raise ValueError(f"dagger_expert_share_decay must be in [0, 1], got {self.dagger_expert_share_decay}")
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; families: {', '.join(FAMILIES)}")


def team_run_config(preset: str = "cpu-small", overrides: Sequence[str] = ()) -> TeamRunConfig:
    """A `TeamRunConfig` with the preset's cloning settings over whole episodes (4,000 updates), then `key=value`
    overrides (`bc.num_updates=2000`, `family=hold_and_pass`, `ppo.num_updates=20`, ...)."""
    from sima2.training.pipeline import pipeline_config

    bc = pipeline_config(preset).bc
    bc = dataclasses.replace(
        _sized(bc, min(bc.num_updates, 4000)), bc=dataclasses.replace(bc.bc, window_starts="whole_episodes"),
        data=dataclasses.replace(bc.data, allow_empty_instructions=True),  # split knowledge's listener
    )  # fmt: skip
    ppo = TrainConfig(stage="ppo", num_updates=0, ppo=PPOConfig(num_envs=1, rollout_length=32, num_minibatches=1))
    return apply_overrides(TeamRunConfig(preset=preset, bc=bc, ppo=ppo), list(overrides))


def _sized(bc: TrainConfig, updates: int) -> TrainConfig:
    """`bc` for `updates` cloning updates: its learning-rate schedule and checkpoints fitted to them."""
    warmup = min(bc.optim.warmup_steps, updates // 10)
    return dataclasses.replace(
        bc, num_updates=updates, optim=dataclasses.replace(bc.optim, decay_steps=updates, warmup_steps=warmup),
        checkpoint=dataclasses.replace(bc.checkpoint, every=min(bc.checkpoint.every, max(1, updates // 3))),
    )  # fmt: skip


def _families(family: str | None) -> tuple[str, ...]:
    """The families a run of `TeamRunConfig.family` trains and is scored on."""
    return FAMILIES if family is None else (family,)


def _episode_gif(agent: Any, env: TeamEnv, family: str, key: jax.Array, path: Path) -> None:
    """One self-play episode of `family`: every agent's view side by side, then the shared map."""
    from sima2.envs.video import write_episode

    params = env.default_params(family)
    steps = compiled_team_rollout(env, params, key, num_worlds=1, num_steps=64, agent=agent,
                                  policy_slots=np.ones(env.num_agents, bool))  # fmt: skip
    views = np.asarray(steps.obs["image"][:, 0])  # (T, A, H, W, 3)
    frames = np.concatenate(list(views.transpose(1, 0, 2, 3, 4)), axis=2)  # agents side by side
    end = int(np.argmax(np.asarray(steps.done[:, 0]))) + 1 if bool(np.asarray(steps.done[:, 0]).any()) else len(frames)
    write_episode(frames[:end], str(path), fps=4)


def _recorded(folder: Path, cache: Path, record: Callable[[], datasets.Dataset], *, resume: bool) -> datasets.Dataset:
    """The demonstrations in `folder`: those a resumed run already saved there, else `record()`'s, saved."""
    if resume and any((folder / "data").glob("train-*.parquet")):
        return load_demonstrations(str(folder), cache_dir=str(cache))
    dataset = record()
    save_demonstrations(dataset, folder)
    return dataset


def _clone(bc: TrainConfig, agent: Any, dataset: datasets.Dataset, env: TeamEnv, *, resume: bool) -> Any:
    """`train_bc` of `agent` on team rows, bounded by one agent's spec."""
    spec = env.spec
    return train_bc(bc, agent, dataset, image_shape=spec.observation.image.shape, action_nvec=spec.action.nvec,
                    vocab_size=spec.observation.vocab_size, proprio_size=spec.observation.proprio.shape[0],
                    resume=resume).model  # fmt: skip


def _dagger_round(
    config: TeamRunConfig, number: int, agent: Any, dataset: datasets.Dataset, env: TeamEnv, params: Any,
    out: Path, *, resume: bool,
) -> tuple[Any, datasets.Dataset]:  # fmt: skip
    """One DAgger round in `out/dagger/round_N/`: the agent's self-play labelled by the team expert
    (`demonstrations/`), joined to the data so far, and cloning continued on it (`bc/`)."""
    folder = out / "dagger" / f"round_{number}"
    rows = _recorded(folder / "demonstrations", out / ".cache", lambda: record_team_demonstrations(
        env, params, jax.random.fold_in(jax.random.key(config.seed + 5), number), num_worlds=config.dagger_worlds,
        num_steps=config.demo_steps, agent=agent, expert_share=config.dagger_expert_share_decay ** (number + 1),
        first_episode_id=max(dataset["episode_id"]) + 1,
    ), resume=resume)  # fmt: skip
    dataset = datasets.concatenate_datasets([dataset, rows])
    log.info("DAgger round %d: %d labelled self-play steps, %d steps in all", number, len(rows), len(dataset))
    round_config = dataclasses.replace(_sized(config.bc, config.dagger_updates), stage="bc",
                                       seed=config.seed + 1 + number, out=str(folder / "bc"))  # fmt: skip
    return _clone(round_config, agent, dataset, env, resume=resume), dataset


def train_team(out: str | Path, config: TeamRunConfig | None = None, *, resume: bool = False) -> dict[str, Any]:
    """Demonstrations, cloning, optional PPO and the team metrics (also in `eval.json`)."""
    from sima2.policy.agent import Agent
    from sima2.presets import preset as preset_named

    config = team_run_config() if config is None else config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image_size = int(preset_named(config.preset).vision["image_size"])
    env = TeamEnv(config.num_agents, image_size)
    params = env.default_params(config.family)
    record = {"job": TEAM_JOB, **config_to_dict(config)}
    _write_json(out / "pipeline.json", record)
    dataset = _recorded(out / "demonstrations", out / ".cache", lambda: record_team_demonstrations(
        env, params, jax.random.key(config.seed), num_worlds=config.demo_worlds, num_steps=config.demo_steps
    ), resume=resume)  # fmt: skip
    log.info("%d demonstration episodes (per agent), %d steps", len(set(dataset["episode_id"])), len(dataset))
    spec = env.spec
    agent = Agent.from_preset(config.preset, spec, key=jax.random.key(config.seed))
    # The baseline: the same agent before training (its near-uniform initial policy), on the training split.
    untrained = evaluate_team(agent, env, jax.random.key(config.seed + 2), num_worlds=config.eval_worlds,
                              splits=("train",), families=_families(config.family))  # fmt: skip
    bc_config = dataclasses.replace(config.bc, stage="bc", seed=config.seed, out=str(out / "bc"))
    agent = _clone(bc_config, agent, dataset, env, resume=resume)
    for number in range(config.dagger_rounds):
        agent, dataset = _dagger_round(config, number, agent, dataset, env, params, out, resume=resume)
    if config.ppo.num_updates > 0:
        from sima2.training.team import TeamRollout

        streams = config.ppo_worlds * config.num_agents
        ppo_config = dataclasses.replace(config.ppo, stage="ppo", seed=config.seed, out=str(out / "ppo"),
                                         ppo=dataclasses.replace(config.ppo.ppo, num_envs=streams))  # fmt: skip
        rollout = TeamRollout(
            agent, env, params, config.ppo_worlds, ppo_config.ppo.rollout_length, seed=config.seed + 1
        )
        learner = agent
        if config.centralised_critic:
            learner = CentralisedCritic.around(agent, num_agents=config.num_agents,
                                               proprio_size=spec.observation.proprio.shape[0],
                                               key=jax.random.key(config.seed + 4))  # fmt: skip
        init_fn, step_fn = make_host_ppo(learner, rollout, ppo_config)
        learner = run_stage(ppo_config, init_fn, step_fn, resume=resume, jit=False,
                            samples_per_step=streams * ppo_config.ppo.rollout_length).model  # fmt: skip
        agent = learner.agent if isinstance(learner, CentralisedCritic) else learner
    agent.save_pretrained(out / "final")
    metrics = evaluate_team(agent, env, jax.random.key(config.seed + 2), num_worlds=config.eval_worlds,
                            families=_families(config.family))  # fmt: skip
    gifs = out / "gifs"
    gifs.mkdir(exist_ok=True)
    for number, family in enumerate(_families(config.family)):
        _episode_gif(agent, env, family, jax.random.key(config.seed + 3 + number), gifs / f"{family}.gif")
    summary = {
        "families": metrics,
        "untrained_agent": untrained,
        "demonstration_episodes": len(set(dataset["episode_id"])),
        "demonstration_steps": len(dataset),
    }
    _write_json(out / "eval.json", summary)
    return summary


def evaluate_team_run(run: str | Path, *, num_worlds: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Evaluate a team run folder's final agent again (`sima2 eval RUN` on a team run): the team metrics per
    family and split replace `families` in its `eval.json`; the run's other figures (the untrained agent,
    the demonstrations) stay. `num_worlds` per family, split and partner (default: the run's `eval_worlds`),
    `seed` (default: the run's, which gives its figures again)."""
    from sima2.policy.agent import Agent
    from sima2.presets import preset as preset_named

    folder = Path(run)
    pipeline = folder / "pipeline.json"
    run_config = json.loads(pipeline.read_text()) if pipeline.is_file() else {}
    if run_config.get("job") != TEAM_JOB:
        raise ValueError(f"{folder} is not a team run folder (what `sima2 train --team --out {folder}` writes)")
    num_worlds = run_config["eval_worlds"] if num_worlds is None else num_worlds
    if num_worlds < 1:
        raise ValueError(f"num_worlds must be >= 1, got {num_worlds}")
    seed = run_config["seed"] if seed is None else seed
    agent = Agent.from_pretrained(folder / "final")
    env = TeamEnv(run_config["num_agents"], int(preset_named(run_config["preset"]).vision["image_size"]))
    metrics = evaluate_team(agent, env, jax.random.key(seed + 2), num_worlds=num_worlds,
                            families=_families(run_config["family"]))  # fmt: skip
    summary = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
    summary["families"] = metrics
    _write_json(folder / "eval.json", summary)
    return summary


def _write_json(path: Path, record: dict[str, Any]) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(record, indent=2, default=str) + "\n"))


__all__ = ["TEAM_JOB", "TeamRunConfig", "evaluate_team_run", "team_run_config", "train_team"]
