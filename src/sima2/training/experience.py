"""The agent's own experience: practice episodes judged successful, kept on disk for behaviour cloning.

`practise` runs the agent (sampling its actions) in worlds that generate their own tasks and keeps the
episodes a judge accepts: by default the world's own success signal, or any `Judge` (a callable on an
`RecordedEpisode`'s frames, instruction and actions: a learned reward model or a VLM fits). `ExperienceStore` holds
the kept episodes in the demonstrations' row format (`sima2.training.data.FEATURES`), so behaviour cloning
reads its own successes mixed with the demonstrations through the same batches.

The store is a folder of Arrow shards (frames PNG-compressed, as `datasets.Image` stores them) with a
manifest, `store.json`, that is replaced atomically after each change: memory stays bounded at any size
(shards are memory-mapped, nothing is preallocated), a restart reopens it where it was, and a crash leaves
the last complete state. Past its capacity (in transitions) it drops its oldest whole episodes first.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from sima2.contract import AbstractAgent, Env
from sima2.interop.pretrained import atomic_write
from sima2.training.data import FEATURES, Describe, Judge, RecordedEpisode, record_rows
from sima2.training.rollout import AgentActor
from sima2.training.windows import episode_starts

STORE_FORMAT = 1
MANIFEST = "store.json"


def world_success(episode: RecordedEpisode) -> bool:
    """The default judge: the world's own success signal at the episode's last step."""
    return episode.success


@dataclasses.dataclass(frozen=True)
class PracticeReport:
    """What a practice run produced: episodes finished, how many the world scored successful, how many the
    judge kept (and their steps)."""

    episodes: int
    world_successes: int
    kept_episodes: int
    kept_steps: int

    @property
    def success_rate(self) -> float:
        return self.world_successes / self.episodes if self.episodes else 0.0


def practise(
    agent: AbstractAgent,
    env: Env,
    env_params: PyTree,
    key: PRNGKeyArray,
    *,
    num_envs: int,
    num_steps: int,
    judge: Judge = world_success,
    deterministic: bool = False,
    describe: Describe | None = None,
) -> tuple[datasets.Dataset, PracticeReport]:
    """The agent acts in `num_envs` worlds for `num_steps` steps (its own observations only; actions sampled
    unless `deterministic`); returns the rows of the finished episodes `judge` accepts, labelled with the
    actions the agent took, and a `PracticeReport`."""
    if not callable(judge):
        raise TypeError(f"judge must be a callable RecordedEpisode -> bool, got {type(judge).__name__}")
    verdicts: list[bool] = []

    def keep(episode: RecordedEpisode) -> bool:
        verdict = judge(episode)
        if not isinstance(verdict, bool | np.bool_):
            raise TypeError(f"the judge must return a bool for each episode, got {type(verdict).__name__}")
        verdicts.append(bool(verdict))
        return bool(verdict)

    actor = AgentActor(agent, deterministic=deterministic)
    rows, successes = record_rows(
        actor, env, env_params, key, num_envs=num_envs, num_steps=num_steps, describe=describe, keep_episode=keep
    )
    report = PracticeReport(
        episodes=len(successes),
        world_successes=int(successes.sum()),
        kept_episodes=sum(verdicts),
        kept_steps=len(rows),
    )
    return rows, report


def _check_rows(dataset: datasets.Dataset) -> None:
    missing = [name for name in FEATURES if name not in dataset.column_names]
    if missing:
        raise ValueError(f"experience rows need the demonstration columns; these are missing: {missing}")
    if len(dataset):
        episode_starts(dataset)  # whole episodes, contiguous and in step order


class ExperienceStore:
    """Up to `capacity` transitions of whole episodes on disk under `folder`; reopening a folder resumes it.

    `capacity=None` reopens an existing store with its own capacity (a new store gets 1,000,000). A smaller
    capacity than the transitions a store already holds is refused, not applied by deleting them.
    """

    def __init__(self, folder: str | Path, capacity: int | None = None):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"the experience store {str(self.folder)!r} is an existing file, not a folder")
        manifest = self.folder / MANIFEST
        if manifest.exists():
            self._state = json.loads(manifest.read_text())
            self._state.setdefault("added", {})
            if self._state.get("format") != STORE_FORMAT:
                raise ValueError(
                    f"{manifest} is experience-store format {self._state.get('format')!r}; this sima2 reads "
                    f"format {STORE_FORMAT}"
                )
            lost = [s["name"] for s in self._state["shards"] if not (self.folder / s["name"]).is_dir()]
            if lost:
                raise ValueError(f"the experience store {self.folder} lists shards that are missing: {lost}")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise ValueError(
                f"{str(self.folder)!r} holds files but no {MANIFEST}: it is not an experience store (choose "
                "an empty or new folder)"
            )
        else:
            self._state = {"format": STORE_FORMAT, "capacity": 1_000_000, "shards": [], "next_shard": 0,
                           "next_episode": 0, "added": {}}
        if capacity is not None:
            if capacity <= 0:
                raise ValueError(f"capacity must be a positive number of transitions, got {capacity}")
            if capacity < len(self):
                raise ValueError(
                    f"the experience store {self.folder} holds {len(self)} transitions, more than capacity "
                    f"{capacity}; reopen it with capacity >= {len(self)} (or capacity=None) or use a new folder"
                )
            self._state["capacity"] = int(capacity)
        self._remove_strays()

    # --- reading -------------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self._state["capacity"])

    @property
    def num_episodes(self) -> int:
        return sum(s["episodes"] for s in self._state["shards"])

    def __len__(self) -> int:
        """Transitions held."""
        return sum(s["rows"] for s in self._state["shards"])

    def dataset(self) -> datasets.Dataset:
        """Every held episode, oldest first, as one memory-mapped dataset (empty: no rows)."""
        shards = [datasets.load_from_disk(str(self.folder / s["name"])) for s in self._state["shards"]]
        if not shards:
            return datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
        return datasets.concatenate_datasets(shards)

    # --- writing -------------------------------------------------------------------------------------------
    def added(self, tag: str) -> dict[str, Any] | None:
        """The `info` an `add(..., tag=tag)` recorded, or None if no add carried that tag."""
        return self._state["added"].get(tag)

    def add(self, rows: datasets.Dataset, *, tag: str | None = None, info: dict[str, Any] | None = None) -> int:
        """Append whole episodes (rows in `FEATURES`, e.g. from `practise`); returns the transitions added.
        Episodes get the store's own ids; past capacity the oldest episodes are dropped (of `rows` too, when
        they alone exceed it). `tag` and its `info` (JSON) are recorded in the same atomic write as the rows,
        so a resumed run knows for certain whether this add happened (`added(tag)`); a tag is added once."""
        _check_rows(rows)
        if tag is not None and tag in self._state["added"]:
            raise ValueError(f"the experience store {self.folder} already holds the rows tagged {tag!r}")
        if not len(rows):
            if tag is not None:
                self._record(tag, info)
                self._commit()
            return 0
        rows = rows.select_columns(list(FEATURES))
        starts = episode_starts(rows)
        fits = starts[len(rows) - starts <= self.capacity]
        if not fits.size:
            raise ValueError(f"one episode of {len(rows) - starts[-1]} steps exceeds the capacity {self.capacity}")
        rows = rows.select(range(int(fits[0]), len(rows)))
        step = np.asarray(rows["step_id"])
        ids = self._state["next_episode"] + np.cumsum(step == 0) - 1
        rows = rows.remove_columns("episode_id").add_column("episode_id", ids.tolist()).cast(FEATURES)
        episodes = int((step == 0).sum())
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self._write_shard(rows)
        self._state["shards"].append({"name": name, "rows": len(rows), "episodes": episodes})
        self._state["next_episode"] += episodes
        self._evict()
        if tag is not None:
            self._record(tag, info)
        self._commit()
        self._remove_strays()
        return len(rows)

    def _record(self, tag: str, info: dict[str, Any] | None) -> None:
        """`info` under `tag`, with the store's size right after the add."""
        size = {"store_transitions": len(self), "store_episodes": self.num_episodes}
        self._state["added"][tag] = {**(info or {}), **size}

    def _write_shard(self, rows: datasets.Dataset) -> str:
        name = f"shard-{self._state['next_shard']:06d}"
        self._state["next_shard"] += 1
        tmp = self.folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        rows.save_to_disk(str(tmp))
        tmp.rename(self.folder / name)
        return name

    def _evict(self) -> None:
        """Drop the oldest episodes until the store fits its capacity (a shard cut mid-way is rewritten with
        its newer episodes; the old shard folder goes once the manifest no longer lists it)."""
        shards = self._state["shards"]
        while len(self) > self.capacity:
            excess = len(self) - self.capacity
            oldest = shards[0]
            if oldest["rows"] <= excess:
                shards.pop(0)
                continue
            data = datasets.load_from_disk(str(self.folder / oldest["name"]))
            starts = episode_starts(data)
            later = starts[starts >= excess]
            if not later.size:  # no episode of this shard starts late enough: all of it goes
                shards.pop(0)
                continue
            kept = data.select(range(int(later[0]), len(data)))
            shards[0] = {"name": self._write_shard(kept), "rows": len(kept),
                         "episodes": int((np.asarray(kept["step_id"]) == 0).sum())}

    def _commit(self) -> None:
        text = json.dumps(self._state, indent=1)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / MANIFEST, lambda p: Path(p).write_text(text))

    def _remove_strays(self) -> None:
        """Shard folders the manifest does not list: left by an interrupted add or eviction."""
        if not self.folder.is_dir():
            return
        listed = {s["name"] for s in self._state["shards"]}
        for path in self.folder.iterdir():
            stray = path.name.startswith("shard-") or path.name.startswith(".shard-")
            if stray and path.is_dir() and path.name not in listed:
                shutil.rmtree(path)

    def summary(self) -> dict[str, Any]:
        """Transitions and episodes held, and the capacity."""
        return {"transitions": len(self), "episodes": self.num_episodes, "capacity": self.capacity}
