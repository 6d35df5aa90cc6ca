"""The weight-loading mechanism: strict errors, pickle refusal, shards, Hub cache resolution, memory, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sima2.interop import (  # noqa: E402
    CheckpointError,
    KeyMismatchError,
    PickleRefusedError,
    resolve_checkpoint,
)
from sima2.perception import ViTEncoder  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
            patch_size=8)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp("vit")
    model.save_pretrained(folder)
    return model, folder


def reference(model, pixels):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(pixels)).last_hidden_state[0].numpy()


def assert_matches(encoder, model):
    pixels = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    assert np.abs(np.asarray(encoder(jnp.asarray(pixels[0]))) - reference(model, pixels)).max() <= 1e-5


def edited_checkpoint(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_strict_error_names_missing_unexpected_and_mismatched(hf_vit, tmp_path):
    _, folder = hf_vit

    def edit(t):
        del t["encoder.layer.1.output.dense.weight"]
        t["encoder.layer.0.surprise.weight"] = torch.zeros(3)
        t["encoder.layer.0.attention.attention.key.bias"] = torch.zeros(31)

    bad = edited_checkpoint(folder, tmp_path / "bad", edit)
    with pytest.raises(KeyMismatchError) as err:
        ViTEncoder.from_pretrained(bad)
    message = str(err.value)
    assert "missing keys (1): encoder.layer.1.output.dense.weight" in message
    assert "unexpected keys (1): encoder.layer.0.surprise.weight" in message
    assert "encoder.layer.0.attention.attention.key.bias: checkpoint has (31,), model expects (32,)" in message
    report = err.value.report
    assert report.missing == ["encoder.layer.1.output.dense.weight"]


def test_non_strict_loads_what_matches(hf_vit, tmp_path):
    model, folder = hf_vit
    bad = edited_checkpoint(folder, tmp_path / "bad", lambda t: t.pop("encoder.layer.1.output.dense.weight"))
    encoder, report = ViTEncoder.from_pretrained_with_report(bad, strict=False)
    assert report.missing == ["encoder.layer.1.output.dense.weight"]
    np.testing.assert_array_equal(np.asarray(encoder.blocks[0].fc1.weight),
                                  model.state_dict()["layers.0.mlp.fc1.weight"].numpy())


def test_pickle_refused_by_default_and_loaded_on_request(hf_vit, tmp_path):
    model, folder = hf_vit
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(folder / "config.json", legacy / "config.json")
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="pickle") as err:
        ViTEncoder.from_pretrained(legacy)
    assert "allow_pickle=True" in str(err.value)
    with pytest.raises(PickleRefusedError):
        ViTEncoder.from_pretrained(legacy / "pytorch_model.bin")
    assert_matches(ViTEncoder.from_pretrained(legacy, allow_pickle=True), model)


def test_bfloat16_pickle_and_safetensors_agree(hf_vit, tmp_path):
    model, _ = hf_vit
    half = transformers.ViTModel(model.config).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    half.save_pretrained(tmp_path / "st")
    (tmp_path / "pk").mkdir()
    shutil.copy(tmp_path / "st" / "config.json", tmp_path / "pk" / "config.json")
    torch.save(half.state_dict(), tmp_path / "pk" / "pytorch_model.bin")
    a = ViTEncoder.from_pretrained(tmp_path / "st", dtype="bfloat16")
    b = ViTEncoder.from_pretrained(tmp_path / "pk", dtype="bfloat16", allow_pickle=True)
    assert a.blocks[0].attn.qkv.weight.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a.blocks[0].attn.qkv.weight, np.float32),
                                  np.asarray(b.blocks[0].attn.qkv.weight, np.float32))
    f16 = ViTEncoder.from_pretrained(tmp_path / "st", dtype="float16")
    assert f16.position_embeddings.dtype == jnp.float16


def test_sharded_checkpoints_both_directions(hf_vit, tmp_path):
    model, _ = hf_vit
    model.save_pretrained(tmp_path / "hf_sharded", max_shard_size="20KB")
    assert (tmp_path / "hf_sharded" / "model.safetensors.index.json").exists()
    encoder = ViTEncoder.from_pretrained(tmp_path / "hf_sharded")
    assert_matches(encoder, model)

    encoder.save_pretrained(tmp_path / "ours", max_shard_size=20_000)
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_matches(ViTEncoder.from_pretrained(tmp_path / "ours"), model)
    reloaded, info = transformers.ViTModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_missing_shard_is_named(hf_vit, tmp_path):
    model, _ = hf_vit
    model.save_pretrained(tmp_path / "s", max_shard_size="20KB")
    shard = sorted((tmp_path / "s").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        ViTEncoder.from_pretrained(tmp_path / "s")


def test_corrupt_file_is_a_clear_error(hf_vit, tmp_path):
    _, folder = hf_vit
    shutil.copytree(folder, tmp_path / "c")
    path = tmp_path / "c" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        ViTEncoder.from_pretrained(tmp_path / "c")
    path.write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        ViTEncoder.from_pretrained(tmp_path / "c")


def _fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str, ref: str = "main") -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


def test_repo_id_resolves_offline_from_hf_cache(hf_vit, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    model, folder = hf_vit
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "tiny-org/tiny-vit", folder, "a" * 40)
    other = tmp_path / "other"
    edited_checkpoint(folder, other, lambda t: t["layernorm.bias"].add_(1.0))
    _fake_hub_cache(cache, "tiny-org/tiny-vit", other, "b" * 40, ref="v2")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    assert_matches(ViTEncoder.from_pretrained("tiny-org/tiny-vit"), model)
    v2 = ViTEncoder.from_pretrained("tiny-org/tiny-vit", revision="v2")
    np.testing.assert_allclose(np.asarray(v2.final_norm.bias),
                               model.state_dict()["layernorm.bias"].numpy() + 1.0)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        ViTEncoder.from_pretrained("tiny-org/absent")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint("./no/such/dir/here")


def test_dtype_must_be_known(hf_vit):
    with pytest.raises(ValueError, match="dtype must be one of"):
        ViTEncoder.from_pretrained(hf_vit[1], dtype="float8")


def test_peak_rss_while_loading_stays_under_one_and_a_half_weights(tmp_path, hf_vit):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                                    intermediate_size=2048, image_size=64, patch_size=16)
    transformers.ViTModel(config).save_pretrained(tmp_path)
    weights = (tmp_path / "model.safetensors").stat().st_size
    script = textwrap.dedent(f"""
        import jax
        from sima2.perception import ViTEncoder
        # Warm up imports (transformers' config classes import torch when it is installed) on a tiny load.
        jax.block_until_ready(ViTEncoder.from_pretrained({str(hf_vit[1])!r}))
        def status(field):
            for line in open('/proc/self/status'):
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        open('/proc/self/clear_refs', 'w').write('5')  # reset the peak-RSS high-water mark (VmHWM)
        before = status('VmRSS')
        enc = ViTEncoder.from_pretrained({str(tmp_path)!r})
        jax.block_until_ready(enc)
        print(status('VmHWM') - before)
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth <= 1.5 * weights, f"peak RSS grew by {growth / weights:.2f}x the weights"


def test_cli_version_and_convert(hf_vit, tmp_path):
    model, folder = hf_vit
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(folder / "config.json", legacy / "config.json")
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    cli = [sys.executable, "-m", "sima2.cli"]
    version = subprocess.run(cli + ["--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("sima2 ")
    refused = subprocess.run(cli + ["convert", str(legacy), str(tmp_path / "out")], capture_output=True, text=True)
    assert refused.returncode != 0 and "pickle" in refused.stderr
    subprocess.run(cli + ["convert", str(legacy), str(tmp_path / "out"), "--allow-pickle", "--dtype", "bfloat16"],
                   check=True, capture_output=True)
    converted = load_file(tmp_path / "out" / "model.safetensors")
    assert converted["encoder.layer.0.attention.attention.query.weight"].dtype == torch.bfloat16
    reloaded, info = transformers.ViTModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
