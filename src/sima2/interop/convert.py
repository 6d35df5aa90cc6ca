"""`sima2 convert`: load any supported HF checkpoint through sima2 and write it back as safetensors.

Useful to turn a legacy pickle checkpoint into `model.safetensors`, to cast weights to bf16/fp16, and to
check that sima2 reads a checkpoint completely (strict loading names every key it cannot place).
"""

from __future__ import annotations

import os
from pathlib import Path

from sima2.interop.checkpoint import CheckpointError, resolve_checkpoint
from sima2.interop.pretrained import PretrainedModel

_VISION_TYPES = ("vit", "clip", "clip_vision_model", "siglip", "siglip_vision_model")


def model_class_for(model_type: str | None) -> type[PretrainedModel]:
    """The sima2 module that serves an HF `model_type`."""
    if model_type in _VISION_TYPES:
        from sima2.perception import ViTEncoder

        return ViTEncoder
    try:
        from sima2.planning import model_class_for as language_model_class_for
    except ImportError:
        language_model_class_for = None
    if language_model_class_for is not None:
        cls = language_model_class_for(model_type)
        if cls is not None:
            return cls
    raise CheckpointError(f"sima2 has no port of model_type {model_type!r}")


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    dtype: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Load `src` (folder, file or Hub id) strictly and save it to `dst` as config.json + model.safetensors."""
    files = resolve_checkpoint(src, revision=revision, allow_pickle=allow_pickle)
    if files.config is None:
        raise CheckpointError(f"{files.folder} has no config.json; cannot tell the architecture")
    cls = model_class_for(files.config.get("model_type"))
    model = cls.from_pretrained(src, dtype=dtype, revision=revision, allow_pickle=allow_pickle)
    if Path(dst).resolve() == files.folder.resolve():
        raise ValueError("refusing to convert a checkpoint onto itself; choose another output folder")
    return model.save_pretrained(dst)
