"""`sima2 train --preset tiny` end to end: every stage runs and the run folder holds what it promises."""

from __future__ import annotations

import json

import datasets
import pytest

import sima2.envs as envs
from sima2.policy import Agent
from sima2.training import ExperienceStore
from sima2.training.pipeline import pipeline_config, train


def test_tiny_pipeline_writes_run_folder(tmp_path):
    overrides = ["demo_envs=4", "demo_steps=32", "ppo.num_updates=1", "bc.num_updates=4", "bc.bc.batch_size=2",
                 "eval.num_envs=4", "eval.num_episodes=4", "eval.max_steps=32", "level=sima2/GoTo-v0,sima2/Pickup-v0",
                 "demo_level=sima2/GoTo-v0",  # Pickup is met only in PPO and practice
                 "self_improvement.practice_level=sima2/Pickup-v0"]
    judged = []

    def judge(episode):  # keeps every episode, unlike the world's success signal
        judged.append(episode)
        return True

    report = train("tiny", tmp_path, overrides=overrides, judge=judge)
    demos = datasets.load_dataset(str(tmp_path / "demos"), split="train")
    assert len(demos) and all(len(plan) == 1 and plan[0].startswith("go to") for plan in demos["plan"])
    # Every split but heldout_compositions (two-step instructions, which neither level has).
    assert set(report["success_rate"]) == set(envs.SPLITS) - {"heldout_compositions"}
    # One agent for both levels: every split is scored per level, and overall as the mean over levels.
    for split, result in report["splits"].items():
        assert result["episodes/GoTo"] >= 1 and result["episodes/Pickup"] >= 1, split
        assert result["episodes"] == result["episodes/GoTo"] + result["episodes/Pickup"]
        mean = (result["success_rate/GoTo"] + result["success_rate/Pickup"]) / 2
        assert result["success_rate"] == pytest.approx(mean)
    assert json.loads((tmp_path / "eval.json").read_text())["success_rate"] == report["success_rate"]
    assert (tmp_path / "final" / "model.safetensors").exists()
    # The image augmentation behaviour cloning used is on record, in the run's settings and the stage's.
    augmentation = {name: getattr(pipeline_config("tiny").bc.bc, name)
                    for name in ("crop_padding", "noise_std", "brightness", "contrast")}
    for recorded in (json.loads((tmp_path / "pipeline.json").read_text())["bc"]["bc"],
                     json.loads((tmp_path / "bc" / "config.json").read_text())["bc"]):
        assert {name: recorded[name] for name in augmentation} == augmentation
    assert (tmp_path / "bc" / "metrics.jsonl").exists() and (tmp_path / "ppo" / "metrics.jsonl").exists()
    bc_metrics = [json.loads(line) for line in (tmp_path / "bc" / "metrics.jsonl").read_text().splitlines()]
    assert any("plan_loss" in record for record in bc_metrics)  # the planner learns the expert's plans
    # ... and the policy its subgoals: the subgoal-done head is trained on the expert's boundaries.
    assert any("subgoal_done_loss" in record for record in bc_metrics)
    # The planner ablation, in the same run: with the agent's own plan, from the instruction alone, plan accuracy.
    assert set(report["planner_ablation"]) == set(report["success_rate"])
    for split, row in report["planner_ablation"].items():
        assert row["with_plan"] == report["success_rate"][split]
        assert set(row) == {"with_plan", "instruction_only", "plan_accuracy"}
    assert set(report["timings_s"]) >= {"demos", "bc", "ppo", "self_improvement", "eval", "total"}
    # Self-improvement: one round of practice in Pickup worlds, every episode kept by the judge, went into the
    # store and was cloned from.
    (practice,) = report["self_improvement"]
    assert practice["practice_episodes"] == len(judged) == practice["kept_episodes"] >= 8
    assert practice["store_transitions"] == practice["kept_steps"] == sum(len(ep.frames) for ep in judged)
    store = ExperienceStore(tmp_path / "self_improvement" / "experience")
    assert len(store) == practice["kept_steps"]
    assert all(plan[-1].startswith("pick up") for plan in store.dataset()["plan"])
    assert (tmp_path / "self_improvement" / "round-0" / "final").exists()
    final = Agent.from_pretrained(tmp_path / "final")  # the exported agent loads back
    assert final.config.policy.touch_dim == envs.make("sima2/GoTo-v0")[0].touch_size  # touch by default
    # The report: plots, GIFs of evaluation episodes with their instruction, summary.md.
    from PIL import Image

    assert {"ppo_training.png", "success.png"} <= {p.name for p in (tmp_path / "plots").glob("*.png")}
    gifs = sorted((tmp_path / "gifs").glob("*.gif"))
    assert len(gifs) >= len(report["success_rate"]) + 2
    assert {"train_GoTo.gif", "train_Pickup.gif"} <= {gif.name for gif in gifs}  # an episode of each level
    for gif in gifs:
        with Image.open(gif) as image:
            assert image.format == "GIF" and image.n_frames > 1
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {split} |" in summary for split in report["success_rate"])
    assert "](plots/success.png)" in summary and "](gifs/" in summary and "the agent's plan" in summary
    # Resuming the finished run repeats no stage: the practice is not redone and the store not added to.
    resumed = train("tiny", tmp_path, overrides=overrides, resume=True, report=False, progress=False, judge=judge)
    assert resumed["self_improvement"] == report["self_improvement"] and len(judged) == practice["practice_episodes"]
    assert resumed["success_rate"] == report["success_rate"]


def test_touch_false_builds_the_agent_without_touch():
    import jax

    from sima2.training.pipeline_agent import build_agent

    spec = envs.make("sima2/GoTo-v0", image_size=16)[0].spec
    with_touch = build_agent(pipeline_config("tiny"), spec, jax.random.key(0))
    without = build_agent(pipeline_config("tiny", ["touch=false"]), spec, jax.random.key(0))
    assert with_touch.config.policy.touch_dim == spec.observation.touch.shape[0]
    assert without.config.policy.touch_dim == 0 and without.policy.touch_encoder is None


def test_unknown_preset_and_bad_override_are_named():
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline_config("huge")
    with pytest.raises(ValueError, match="no_such_field"):
        pipeline_config("tiny", ["bc.no_such_field=3"])


def test_a_refused_run_leaves_the_run_folder_untouched(tmp_path):
    """Bad settings are refused before the folder is written: a finished run's pipeline.json survives."""
    saved = '{"level": "sima2/GoTo-v0", "finished": true}'
    (tmp_path / "pipeline.json").write_text(saved)
    with pytest.raises(ValueError, match="unknown level"):
        train("tiny", tmp_path, overrides=["level=sima2/Nope-v0"], report=False, progress=False)
    with pytest.raises(ValueError, match=r"eval.max_steps \(64\) is shorter than the longest episode"):
        train("tiny", tmp_path, overrides=["level=sima2/AllFamilies-v0"], report=False, progress=False)
    with pytest.raises(ValueError, match=r"eval.splits names \['heldout_compositions'\], which GoTo does not have"):
        train("tiny", tmp_path, overrides=["eval.splits=heldout_compositions"], report=False, progress=False)
    with pytest.raises(ValueError, match=r"demo_level names \['Pickup'\], which level=sima2/GoTo-v0 does not"):
        train("tiny", tmp_path, overrides=["demo_level=sima2/Pickup-v0"], report=False, progress=False)
    with pytest.raises(ValueError, match=r"ppo.ppo.num_envs \(6\) must be divisible by ppo.ppo.num_minibatches \(4\)"):
        train("tiny", tmp_path, overrides=["ppo.ppo.num_envs=6", "ppo.ppo.num_minibatches=4"], report=False)
    with pytest.raises(ValueError, match=r"self_improvement.bc.bc.sequence_length=1 .* memory is never trained"):
        train("tiny", tmp_path, overrides=["self_improvement.bc.bc.sequence_length=1"], report=False)
    assert (tmp_path / "pipeline.json").read_text() == saved and sorted(p.name for p in tmp_path.iterdir()) == [
        "pipeline.json"
    ]
    with pytest.raises(ValueError, match="is an existing file"):
        train("tiny", tmp_path / "pipeline.json", report=False)


def test_the_gpu_preset_needs_its_pretrained_parts(tmp_path, monkeypatch):
    """`--preset base` starts from pretrained parts by Hub id; offline and uncached it is refused with the
    flags that fix it, and without vision weights at all (its encoder is frozen) it is refused outright."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = pipeline_config("base")
    assert config.vision == "google/vit-base-patch16-224" and config.planner == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(ValueError, match=r"google/vit-base-patch16-224.*--vision.*--planner.*--text-encoder"):
        train("base", tmp_path / "run", report=False, progress=False)
    with pytest.raises(ValueError, match="freezes its vision encoder.*--vision"):
        train("base", tmp_path / "run", overrides=["vision=None"], report=False, progress=False)
    assert not (tmp_path / "run").exists()


def test_pipeline_splits_over_several_devices(tmp_path):
    """With two (simulated) devices the same command trains data-parallel and writes the same run folder;
    sizes that do not divide over the devices are named before anything runs."""
    import os
    import subprocess
    import sys

    import pytest

    from sima2.training.pipeline import _check_divisible

    with pytest.raises(ValueError, match=r"bc.bc.batch_size=3, ppo.ppo.num_envs=9 must divide by the 2 devices"):
        _check_divisible(pipeline_config("tiny", ["bc.bc.batch_size=3", "ppo.ppo.num_envs=9"]), 2)
    overrides = ["demo_envs=4", "demo_steps=32", "ppo.num_updates=1", "bc.num_updates=2", "bc.bc.batch_size=2",
                 "ppo.ppo.num_minibatches=1", "eval.num_envs=2", "eval.num_episodes=2", "eval.max_steps=32"]
    code = (
        "import jax, sys; from sima2.training.pipeline import train; assert jax.device_count() == 2; "
        f"train('tiny', sys.argv[1], overrides={overrides!r}, report=False)"
    )
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["success_rate"]) == set(envs.make("sima2/GoTo-v0")[0].splits)
    Agent.from_pretrained(tmp_path / "final")


def test_a_pretrained_causal_lm_planner_writes_the_plans_through_the_same_path(tmp_path):
    """`--planner <local HF Llama>`: the world writes instructions in its tokenizer's ids, the planner learns
    the expert's plans in them and writes each episode's plan at run time; the ablation is reported."""
    pytest.importorskip("torch")
    from _pretrained_fixtures import llama_tokenizer, save_tiny_llama

    llama = save_tiny_llama(tmp_path / "llama", llama_tokenizer(tmp_path / "tokenizer"))
    overrides = ["demo_envs=4", "demo_steps=32", "ppo.num_updates=0", "bc.num_updates=4", "bc.bc.batch_size=2",
                 "eval.num_envs=4", "eval.num_episodes=4", "eval.max_steps=32", "self_improvement.rounds=0"]
    report = train("tiny", tmp_path / "run", overrides=overrides, planner=str(llama), report=False, progress=False)
    bc_metrics = [json.loads(line) for line in (tmp_path / "run" / "bc" / "metrics.jsonl").read_text().splitlines()]
    assert any("plan_loss" in r and "subgoal_done_loss" in r for r in bc_metrics)
    assert set(report["planner_ablation"]) == set(report["success_rate"])
    agent = Agent.from_pretrained(tmp_path / "run" / "final")
    assert agent.plan_writer is None and agent.config.tokenizer is not None  # the planner itself writes
