"""The run report: learning curves from metrics files, the success chart, summary.md, episode GIFs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _specs import world_spec
from PIL import Image

import sima2.envs as envs
from sima2.envs.instruct import parse_instruction
from sima2.policy import Agent
from sima2.training.config import MonitorConfig
from sima2.training.monitor import MetricsLogger
from sima2.training.report import (
    evaluation_report,
    plot_learning_curves,
    plot_success,
    read_metrics,
    record_episodes,
    stage_timings,
    write_episode_gif,
    write_report,
    write_summary,
)


def _open(path, kind: str) -> Image.Image:
    image = Image.open(path)
    assert image.format == kind
    return image


def _write_metrics(folder, records, events=()):
    with MetricsLogger(folder, MonitorConfig(tensorboard=False, progress=False)) as logger:
        for step, metrics in records:
            logger.log(step, metrics)
        for step, kind, message in events:
            logger.event(step, kind, message)


def test_learning_curves_from_the_stages_metrics(tmp_path):
    assert plot_learning_curves(tmp_path) == []  # nothing logged yet: nothing drawn
    _write_metrics(tmp_path / "bc", [(s, {"loss": 5.0 / s, "action_loss": 4.0 / s, "plan_loss": 1.0 / s,
                                          "grad_norm": 1.0, "skipped_updates": 0.0}) for s in (5, 10, 15)],
                   [(10, "resume", "resumed")])
    _write_metrics(tmp_path / "ppo", [(s, {"return": 0.1 * s, "success_rate": 0.05 * s, "episode_length": 30.0 - s,
                                           "reward_success": 0.01 * s, "reward_potential": 0.02,
                                           "world_rollback_rate": 0.0})
                                      for s in (1, 2, 3)])
    records, events = read_metrics(tmp_path / "bc" / "metrics.jsonl")
    assert [r["step"] for r in records] == [5, 10, 15] and [e["event"] for e in events] == ["resume"]
    paths = plot_learning_curves(tmp_path)
    assert [p.name for p in paths] == ["bc_losses.png", "ppo_training.png", "ppo_rewards.png"]
    for path in paths:
        with _open(path, "PNG") as image:
            assert image.width > 200 and image.height > 100


def _results(splits, groups=("level_0", "level_1")):
    """`evaluate_splits`-shaped results (as test input) with per-group success keys."""
    results = {}
    for i, split in enumerate(splits):
        results[split] = {"episodes": 8.0, "success_rate": 0.125 * (i + 1), "episode_length": 20.0 + i,
                          "return": 0.125 * (i + 1), **{f"success_rate/{g}": 0.25 * j for j, g in enumerate(groups)}}
        if i % 2 == 0:
            results[split]["navigation_efficiency"] = 0.5 + 0.1 * i
    return results


def test_success_chart_summary_and_timings(tmp_path):
    splits = envs.make("sima2/GoTo-v0", image_size=16)[0].splits  # a GoTo run's splits
    report = evaluation_report(_results(splits), preset="tiny", level="sima2/GoTo-v0")
    assert report["success_rate"]["heldout_pairs"] == 0.375
    assert set(report["navigation_efficiency_by_split"]) == {"train", "heldout_pairs", "heldout_game"}
    assert report["navigation_efficiency"] == pytest.approx((0.5 * 1 + 0.7 * 3 + 0.9 * 5) / 9)  # by successes
    chart = plot_success(report, tmp_path / "plots" / "success.png")
    with _open(chart, "PNG"):
        pass

    (tmp_path / "pipeline.json").write_text(json.dumps({"preset": "tiny", "level": "sima2/GoTo-v0", "image_size": 64}))
    (tmp_path / "demos").mkdir()
    (tmp_path / "demos" / "part.parquet").write_text("x")
    (tmp_path / "eval.json").write_text("{}")
    start = 1_000_000.0
    os.utime(tmp_path / "pipeline.json", (start, start))
    os.utime(tmp_path / "demos" / "part.parquet", (start + 7.0, start + 7.0))
    os.utime(tmp_path / "eval.json", (start + 19.5, start + 19.5))
    timings = stage_timings(tmp_path)
    assert timings == {"demonstrations": 7.0, "evaluation": 12.5}
    os.utime(tmp_path / "demos" / "part.parquet", (start - 50.0, start - 50.0))  # reused from an earlier run
    assert stage_timings(tmp_path) == {"evaluation": 19.5}

    summary = write_summary(tmp_path, report, timings=timings, plots=[chart]).read_text()
    for split in splits:
        assert f"| {split} | 8 | {report['success_rate'][split]:.2f} |" in summary
    assert "success level_1" in summary and "train 0.50" in summary and "heldout_pairs 0.70" in summary
    assert "| demonstrations | 7.0 s |" in summary and "| total | 19.5 s |" in summary
    assert "](plots/success.png)" in summary and '"image_size": 64' in summary


def test_recorded_episodes_gifs_and_full_report(tmp_path):
    env, _ = envs.make("sima2/GoTo-v0")
    agent = Agent.from_preset("tiny", world_spec(), key=jax.random.key(0))
    # One world per split, as `write_report` records them (same shapes: one compile for both calls).
    params = jax.tree.map(lambda *x: jnp.stack(x), *(env.default_params(s) for s in env.splits))
    max_steps = 6
    episodes = record_episodes(agent, env, params, jax.random.key(1), len(env.splits), max_steps)
    assert len(episodes) == len(env.splits)
    for episode in episodes:
        assert episode.frames.shape == (episode.length + 1, 64, 64, 3)
        assert episode.topdown.shape[0] == episode.length + 1
        # GoTo's time limit (32) is beyond max_steps: an episode either succeeds or is cut at max_steps.
        assert episode.outcome == ("success" if episode.success else "cut")
        assert 1 <= episode.length <= max_steps and (episode.success or episode.length == max_steps)
        parse_instruction(episode.instruction)  # the world's instruction, in the task language
    again = record_episodes(agent, env, params, jax.random.key(1), len(env.splits), max_steps)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(episodes, again, strict=True))  # greedy + same key

    gif = write_episode_gif(episodes[0], tmp_path / "episode.gif")
    with _open(gif, "GIF") as image:
        assert image.n_frames > 1 and image.width == 4 * 2 * 64  # agent view and map side by side, scaled 4x

    (tmp_path / "pipeline.json").write_text(json.dumps({"preset": "tiny", "level": "sima2/GoTo-v0", "image_size": 64}))
    _write_metrics(tmp_path / "bc", [(s, {"loss": 1.0 / s}) for s in (1, 2)])
    report = evaluation_report(_results(env.splits, groups=()), preset="tiny", level="sima2/GoTo-v0")
    written = write_report(tmp_path, agent, env, report, jax.random.key(2), episodes_per_split=1,
                           max_steps=max_steps, progress=False)
    assert [p.name for p in written["plots"]] == ["bc_losses.png", "success.png"]
    assert [p.name for p in written["gifs"]] == [f"{s}_0.gif" for s in env.splits]
    for path in written["gifs"]:
        with _open(path, "GIF") as image:
            assert image.n_frames > 1
    summary = written["summary"].read_text()
    assert all(f"({GIF})" in summary for GIF in (f"gifs/{s}_0.gif" for s in env.splits))
    assert "| report |" in summary
