"""`sima2 train --preset tiny` end to end: every stage runs and the run folder holds what it promises."""

from __future__ import annotations

import json

from sima2.policy import Agent
from sima2.training.pipeline import pipeline_config, train


def test_tiny_pipeline_writes_run_folder(tmp_path):
    overrides = ["demo_envs=4", "demo_steps=32", "ppo_updates=1", "train.num_steps=4",
                 "train.eval.num_envs=4", "train.eval.num_episodes=4", "train.eval.max_steps=32"]
    report = train("tiny", tmp_path, overrides=overrides)
    assert set(report["success_rate"]) == {"train", "heldout_layouts", "heldout_pairs", "heldout_paraphrases"}
    assert all(0.0 <= v <= 1.0 for v in report["success_rate"].values())
    assert json.loads((tmp_path / "eval.json").read_text())["success_rate"] == report["success_rate"]
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "bc" / "metrics.jsonl").exists() and (tmp_path / "ppo" / "metrics.jsonl").exists()
    Agent.from_pretrained(tmp_path / "final")  # the exported agent loads back
    # The report: plots, GIFs of evaluation episodes with their instruction, summary.md.
    from PIL import Image

    assert {"ppo_training.png", "success.png"} <= {p.name for p in (tmp_path / "plots").glob("*.png")}
    gifs = sorted((tmp_path / "gifs").glob("*.gif"))
    assert len(gifs) >= len(report["success_rate"])
    for gif in gifs:
        with Image.open(gif) as image:
            assert image.format == "GIF" and image.n_frames > 1
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {split} |" in summary for split in report["success_rate"])
    assert "](plots/success.png)" in summary and "](gifs/" in summary


def test_unknown_preset_and_bad_override_are_named():
    import pytest

    with pytest.raises(ValueError, match="unknown preset"):
        pipeline_config("huge")
    with pytest.raises(ValueError, match="no_such_field"):
        pipeline_config("tiny", ["train.no_such_field=3"])
