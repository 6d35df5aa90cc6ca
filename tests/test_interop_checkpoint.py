"""Checkpoint resolution: pickle is refused on every route; corrupt safetensors headers are CheckpointErrors."""

from __future__ import annotations

import json
import struct

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from sima2.interop import CheckpointError, PickleRefusedError, resolve_checkpoint  # noqa: E402
from sima2.interop.checkpoint import read_safetensors_header  # noqa: E402
from sima2.planning import CausalLM  # noqa: E402

LLAMA = {
    "model_type": "llama", "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
    "num_key_value_heads": 1, "intermediate_size": 24, "vocab_size": 31, "max_position_embeddings": 16,
}


def _index(path, shard, state):
    path.write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(state, shard)}))
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm")
    lm = CausalLM.from_config(LLAMA, key=jax.random.key(0))
    lm.save_pretrained(folder)
    return lm, folder, load_file(folder / "model.safetensors")


def test_pickle_index_or_file_named_directly_is_refused(saved, tmp_path):
    lm, src, state = saved
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    torch.save(state, tmp_path / "pytorch_model.bin")
    for target in (
        _index(tmp_path / "pytorch_model.bin.index.json", "pytorch_model.bin", state),
        _index(tmp_path / "weights.index.json", "pytorch_model.bin", state),  # judged by its shards
        tmp_path / "pytorch_model.bin",
    ):
        with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
            CausalLM.from_pretrained(target)
    loaded = CausalLM.from_pretrained(tmp_path / "pytorch_model.bin.index.json", allow_pickle=True)
    np.testing.assert_array_equal(loaded.embed_tokens, lm.embed_tokens)
    # A safetensors index that names pickle shards is refused too, not read as safetensors.
    _index(tmp_path / "model.safetensors.index.json", "pytorch_model.bin", state)
    with pytest.raises(PickleRefusedError):
        resolve_checkpoint(tmp_path)


def test_safetensors_index_whose_name_contains_bin_is_not_pickle(saved, tmp_path):
    lm, src, state = saved
    save_file(state, tmp_path / "combined.safetensors")
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    index = _index(tmp_path / "combined.safetensors.index.json", "combined.safetensors", state)
    assert not resolve_checkpoint(index).is_pickle
    np.testing.assert_array_equal(CausalLM.from_pretrained(index).embed_tokens, lm.embed_tokens)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ([1, 2], "header is a JSON list"),
        ({"w": {"shape": [1], "data_offsets": [0, 4]}}, r"'w' lacks \['dtype'\]"),
        ({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, r"lacks \['shape'\]"),
        ({"w": {"dtype": "F32", "shape": [1]}}, r"lacks \['data_offsets'\]"),
        ({"w": [1]}, "'w' is a JSON list"),
        ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, "unsupported dtype"),
        ({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, "shape '1'"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, r"data_offsets \[4\]"),
        ({"__metadata__": [1]}, "__metadata__ must be a JSON object"),
    ],
)
def test_corrupt_safetensors_header_is_a_checkpoint_error(tmp_path, header, match):
    raw = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(CheckpointError, match=match) as info:
        read_safetensors_header(path)
    assert "bad.safetensors" in str(info.value)
