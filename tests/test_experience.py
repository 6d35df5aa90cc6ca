"""Tests of the agent's own experience: practice with the world's success signal or a pluggable judge, and the
on-disk experience store (round trip, capacity, restart, refusals)."""

import json

import datasets
import jax
import numpy as np
import pytest
from _training_standins import LineParams, LineWorld, MLPAgent

from sima2.training import ExperienceStore, practise, record_demonstrations
from sima2.training.data import FEATURES, RecordedEpisode


def _describe(obs):
    side = int(obs["instruction"][0])
    return ["go left", "go right"][side], ["walk"]


def _practice(judge=None, key=0):
    kwargs = {} if judge is None else {"judge": judge}
    return practise(MLPAgent(jax.random.key(3)), LineWorld(), LineParams(), jax.random.key(key), num_envs=8,
                    num_steps=24, describe=_describe, **kwargs)


def test_practice_keeps_the_episodes_the_world_scores_successful():
    rows, report = _practice()
    # A random policy in the line world succeeds in some episodes and times out in others.
    assert 0 < report.world_successes < report.episodes
    assert report.kept_episodes == report.world_successes and report.kept_steps == len(rows)
    assert rows.features == FEATURES
    # Every kept episode ends at the goal: its last action moves toward the instructed side.
    ids = np.asarray(rows["episode_id"])
    last = np.flatnonzero(np.r_[ids[1:] != ids[:-1], True])
    for i in last:
        row = rows[int(i)]
        assert row["action"][0] == row["instruction_ids"][0]


def test_practice_honours_a_pluggable_judge():
    seen = []

    def judge(episode: RecordedEpisode) -> bool:
        seen.append(episode)
        return episode.instruction == "go left" and len(episode.frames) <= 3  # not the world's rule

    rows, report = _practice(judge)
    assert len(seen) == report.episodes
    assert all(ep.frames.dtype == np.uint8 and ep.frames.ndim == 4 and len(ep.actions) == len(ep.frames)
               for ep in seen)
    wanted = [ep for ep in seen if ep.instruction == "go left" and len(ep.frames) <= 3]
    assert report.kept_episodes == len(wanted) > 0
    assert set(rows["instruction"]) == {"go left"} and len(rows) == sum(len(ep.frames) for ep in wanted)
    with pytest.raises(TypeError, match="must return a bool"):
        _practice(lambda episode: "yes")


def test_store_round_trips_resumes_and_keeps_its_newest_episodes_within_capacity(tmp_path):
    demos = record_demonstrations(LineWorld(), LineParams(), jax.random.key(0), num_envs=4, num_steps=10,
                                  describe=_describe)
    assert len(demos) == 40  # 20 episodes of 2 steps
    store = ExperienceStore(tmp_path / "store", capacity=50)
    assert len(store) == 0 and len(store.dataset()) == 0
    assert store.add(demos) == 40
    first = store.dataset()
    assert len(first) == 40 and first.features == FEATURES
    np.testing.assert_array_equal(np.asarray(first[5]["image"]), np.asarray(demos[5]["image"]))
    # A restart reopens the same episodes with the store's own capacity.
    reopened = ExperienceStore(tmp_path / "store")
    assert (len(reopened), reopened.num_episodes, reopened.capacity) == (40, 20, 50)
    # Past capacity the oldest whole episodes go: 80 rows into 50 keep the newest 25 episodes.
    reopened.add(demos)
    assert len(reopened) == 50 and reopened.num_episodes == 25
    held = reopened.dataset()
    assert np.asarray(held["step_id"])[0] == 0
    ids = np.asarray(held["episode_id"])
    np.testing.assert_array_equal(np.unique(ids), np.arange(15, 40))  # store ids, oldest 15 dropped
    assert held[len(held) - 1]["instruction"] == demos[len(demos) - 1]["instruction"]
    # Only listed shards remain on disk, and the manifest says what is held.
    manifest = json.loads((tmp_path / "store" / "store.json").read_text())
    on_disk = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name.startswith("shard-"))
    assert on_disk == sorted(s["name"] for s in manifest["shards"])


def test_store_refuses_what_would_lose_or_corrupt_data(tmp_path):
    demos = record_demonstrations(LineWorld(), LineParams(), jax.random.key(0), num_envs=2, num_steps=10,
                                  describe=_describe)
    store = ExperienceStore(tmp_path / "store", capacity=100)
    store.add(demos)
    with pytest.raises(ValueError, match="more than capacity"):
        ExperienceStore(tmp_path / "store", capacity=4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an experience store"):
        ExperienceStore(tmp_path / "other")
    with pytest.raises(ValueError, match="missing"):
        store.add(datasets.Dataset.from_dict({"image": [], "instruction": []}))
    shuffled = demos.select([1, 0, *range(2, len(demos))])
    with pytest.raises(ValueError, match="does not continue"):
        store.add(shuffled)
    assert len(ExperienceStore(tmp_path / "store")) == len(demos)  # nothing changed by the refusals


def test_store_records_tagged_adds_with_their_rows(tmp_path):
    """A tagged add and its record are one atomic write: a resumed run can ask whether it happened."""
    demos = record_demonstrations(LineWorld(), LineParams(), jax.random.key(0), num_envs=2, num_steps=10,
                                  describe=_describe)
    store = ExperienceStore(tmp_path / "store")
    assert store.added("round-0") is None
    store.add(demos, tag="round-0", info={"practice_success_rate": 0.5})
    store.add(demos.select([]), tag="round-1", info={"practice_success_rate": 0.0})  # nothing kept, still recorded
    reopened = ExperienceStore(tmp_path / "store")
    assert reopened.added("round-0") == {"practice_success_rate": 0.5, "store_transitions": len(demos),
                                         "store_episodes": len(demos) // 2}
    assert reopened.added("round-1")["store_transitions"] == len(demos) == len(reopened)
    with pytest.raises(ValueError, match="already holds the rows tagged 'round-0'"):
        reopened.add(demos, tag="round-0")
    assert len(ExperienceStore(tmp_path / "store")) == len(demos)
