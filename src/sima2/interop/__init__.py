"""Hugging Face (PyTorch / safetensors) <-> Equinox weights: one mapping mechanism for every architecture.

- `resolve_checkpoint` finds config + weights (folder, file, sharded index, Hub repo id).
- `HFParam` rules (`same`, `transposed`, `fused`, `reshaped`) declare how each Equinox leaf maps to HF names.
- `PretrainedModel` gives every ported module `from_pretrained`, `save_pretrained` and `push_to_hub`.
"""

from sima2.interop.checkpoint import (
    CheckpointError,
    CheckpointFiles,
    PickleRefusedError,
    TensorSource,
    resolve_checkpoint,
)
from sima2.interop.mapping import (
    HFParam,
    KeyMismatchError,
    LoadReport,
    fused,
    load_state_dict,
    named_arrays,
    reshaped,
    same,
    state_dict,
    transposed,
)
from sima2.interop.pretrained import PretrainedModel, hf_config_to_dict, with_hf_defaults, write_safetensors

__all__ = [
    "CheckpointError",
    "CheckpointFiles",
    "HFParam",
    "KeyMismatchError",
    "LoadReport",
    "PickleRefusedError",
    "PretrainedModel",
    "TensorSource",
    "fused",
    "hf_config_to_dict",
    "load_state_dict",
    "named_arrays",
    "reshaped",
    "resolve_checkpoint",
    "same",
    "state_dict",
    "transposed",
    "with_hf_defaults",
    "write_safetensors",
]
