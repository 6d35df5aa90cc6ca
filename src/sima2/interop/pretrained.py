"""`from_pretrained` / `save_pretrained` / `push_to_hub` for every ported Hugging Face architecture.

A ported model subclasses `PretrainedModel` and supplies four things: how to read its typed config from an
HF `config.json` (`config_from_hf`), how to build itself from that config (`from_config`), its key map
(`hf_key_map`) and, where needed, legacy renames and ignorable checkpoint keys. Everything else (finding
files, streaming tensors, strict checking, dtype casting, writing HF-compatible folders) lives here once.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from sima2.interop.checkpoint import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    iter_shards,
    resolve_checkpoint,
)
from sima2.interop.mapping import DTYPES, HFParam, LoadReport, load_state_dict, state_dict


def hf_config_to_dict(config: Any) -> dict[str, Any]:
    """Accept a `transformers.PretrainedConfig`, a plain dict or a path to `config.json`."""
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / CONFIG_NAME
        return json.loads(path.read_text())
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"expected an HF config (PretrainedConfig, dict or path), got {type(config).__name__}")


try:
    from huggingface_hub.errors import StrictDataclassError

    _CONFIG_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, StrictDataclassError)
except ImportError:  # pragma: no cover - older huggingface_hub validates nothing
    _CONFIG_ERRORS = (ValueError, TypeError)


def with_hf_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the fields a `config.json` leaves out with `transformers`' own defaults for its `model_type`."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"config.json has model_type {model_type!r}, which transformers does not know")
    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        return CONFIG_MAPPING[model_type](**fields).to_dict()
    except _CONFIG_ERRORS as err:  # transformers' own validation (e.g. heads not dividing hidden_size)
        raise CheckpointError(f"invalid {model_type} config: {err}") from None


class PretrainedModel(eqx.Module):
    """Base of every sima2 module that mirrors a Hugging Face architecture."""

    # (regex, replacement) renames applied to checkpoint names before matching: older naming schemes.
    hf_aliases: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Regexes of checkpoint names the module does not need (non-persistent buffers, unused heads).
    hf_ignored: ClassVar[tuple[str, ...]] = ()

    # --- supplied by each architecture -------------------------------------------------------------
    @classmethod
    def config_from_hf(cls, hf_config: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: Any, *, key: jax.Array) -> PretrainedModel:
        raise NotImplementedError

    @classmethod
    def config_for_checkpoint(cls, hf_config: Mapping[str, Any], checkpoint_keys: list[str]) -> Any:
        """The config to build for a given checkpoint. Override when optional parts (a pooler, a head)
        are present in some checkpoints of the same `config.json` and absent in others."""
        return cls.config_from_hf(hf_config)

    def hf_key_map(self) -> dict[str, HFParam]:
        raise NotImplementedError

    def hf_config(self) -> dict[str, Any]:
        """The `config.json` that `transformers` needs to rebuild this module."""
        raise NotImplementedError

    # --- shared machinery ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        dtype: str | Any | None = None,
        revision: str | None = None,
        allow_pickle: bool = False,
        strict: bool = True,
    ) -> PretrainedModel:
        """Load HF weights: a local folder, a weight file, a sharded index or a Hub repo id.

        `dtype` casts floating weights (`"float32"`, `"bfloat16"`, `"float16"`; default float32).
        `strict` (default) raises `KeyMismatchError` naming every missing, unexpected or mis-shaped key.
        Pickle weights are refused unless `allow_pickle=True`. No remote code is ever run.
        """
        model, _ = cls.from_pretrained_with_report(
            path_or_repo_id, dtype=dtype, revision=revision, allow_pickle=allow_pickle, strict=strict
        )
        return model

    @classmethod
    def from_pretrained_with_report(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        dtype: str | Any | None = None,
        revision: str | None = None,
        allow_pickle: bool = False,
        strict: bool = True,
    ) -> tuple[PretrainedModel, LoadReport]:
        if isinstance(dtype, str) and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        files = resolve_checkpoint(path_or_repo_id, revision=revision, allow_pickle=allow_pickle)
        if files.config is None:
            raise CheckpointError(f"{files.folder} has no {CONFIG_NAME}; cannot tell the architecture")
        tensors = files.tensors()
        config = cls.config_for_checkpoint(files.config, tensors.keys())
        key = jax.random.key(0)
        skeleton = eqx.filter_eval_shape(cls.from_config, config, key=key)
        fallback = None if strict else cls.from_config(config, key=key)
        model, report = load_state_dict(
            skeleton,
            skeleton.hf_key_map(),
            tensors,
            dtype=dtype if dtype is not None else jnp.float32,
            strict=strict,
            aliases=cls.hf_aliases,
            ignore=cls.hf_ignored,
            fallback=fallback,
            what=f"{cls.__name__} ({files.folder})",
        )
        return model, report

    def state_dict(self) -> dict[str, Any]:
        """This module's weights as numpy arrays under Hugging Face's names."""
        return state_dict(self, self.hf_key_map())

    def save_pretrained(self, save_directory: str | os.PathLike, *, max_shard_size: int = 4 * 2**30) -> Path:
        """Write `config.json` + `model.safetensors` (sharded with an index past `max_shard_size` bytes)
        under HF's own names, loadable by `transformers`' `from_pretrained`.

        Files are written to a temporary name and renamed, so an interrupted save never leaves a
        half-written checkpoint over a good one.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = self.state_dict()
        shards = list(iter_shards(tensors, max_shard_size))
        if len(shards) == 1:
            names = [SAFE_WEIGHTS_NAME]
        else:
            names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            write_safetensors(shard, folder / name, {"format": "pt"})
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
                "weight_map": {k: n for n, s in zip(names, shards, strict=True) for k in s},
            }
            atomic_write(folder / SAFE_WEIGHTS_INDEX_NAME, lambda p: Path(p).write_text(json.dumps(index, indent=2)))
        config = self.hf_config()
        atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2, sort_keys=True)))
        return folder

    def push_to_hub(
        self, repo_id: str, *, private: bool | None = None, token: str | None = None,
        commit_message: str = "Upload with sima2", revision: str | None = None,
    ) -> str:
        """Save to a temporary folder and upload it to the Hub with `huggingface_hub`; returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision
            )
        return str(info)


def write_safetensors(
    tensors: Mapping[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """The one safetensors writer of sima2: `tensors` (name -> array, numpy or JAX) to `path`, atomically
    (`atomic_write`), with `metadata` in the header. Names are the caller's: Hugging Face's for ported parts,
    dotted PyTree paths (`sima2.interop.mapping.named_arrays`) for whole agents."""
    path = Path(path)
    arrays = {name: np.ascontiguousarray(np.asarray(jax.device_get(a))) for name, a in tensors.items()}
    header = {str(k): str(v) for k, v in (metadata or {}).items()} or None
    atomic_write(path, lambda p: save_file(arrays, p, metadata=header))
    return path


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)` on a temporary file next to `path`, then rename it over `path`: readers see the
    old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
