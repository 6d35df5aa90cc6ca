"""Checkpoints of the full training state with orbax, and safetensors export of final weights.

Orbax writes each checkpoint to a temporary folder and renames it when complete (atomic), keeps the last
K, and handles sharded and multi-host arrays. The state is saved as a flat `{path: array}` dict of every
array leaf (parameters, optimiser state, RNG keys as raw key data, step, world states); the non-array
structure is rebuilt from a template state made from the same config, so a resume is exact. Host-side
facts that are not arrays (the data iterator's position) go in a JSON item next to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PyTree
from safetensors.numpy import save_file


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _flatten(state: PyTree) -> dict[str, Any]:
    arrays, _ = eqx.partition(state, eqx.is_array)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
        flat[jax.tree_util.keystr(path)] = jax.random.key_data(leaf) if _is_key(leaf) else leaf
    return flat


def _unflatten(template: PyTree, flat: dict[str, Any]) -> PyTree:
    arrays, static = eqx.partition(template, eqx.is_array)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    missing = [jax.tree_util.keystr(p) for p, _ in leaves_with_path if jax.tree_util.keystr(p) not in flat]
    if missing:
        raise ValueError(f"checkpoint does not match the training state; missing entries: {missing[:5]}")
    leaves = []
    for path, leaf in leaves_with_path:
        value = flat[jax.tree_util.keystr(path)]
        leaves.append(
            jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf)) if _is_key(leaf) else value
        )
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


def _abstract(flat: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    return {
        name: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None))
        for name, a in flat.items()
    }


class Checkpointer:
    """Saves and restores a `TrainState` under `directory/<step>/`, keeping the last `keep` checkpoints."""

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 3, async_save: bool = True):
        if every <= 0:
            raise ValueError(f"checkpoint interval must be positive, got {every}")
        if keep <= 0:
            raise ValueError(f"number of checkpoints to keep must be positive, got {keep}")
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def save(
        self, step: int, state: PyTree, meta: dict[str, Any] | None = None, *, force: bool = False
    ) -> None:
        """Save `state` (and JSON-serialisable `meta`) as checkpoint `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_flatten(state)),
                meta=ocp.args.JsonSave(dict(meta or {}, step=step)),
            ),
            force=force,
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
        """Restore checkpoint `step` (default: latest) into the structure and shardings of `template`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(_flatten(template))),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return _unflatten(template, restored["state"]), dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def export_safetensors(
    model: PyTree, directory: str | os.PathLike, filename: str = "model.safetensors"
) -> Path:
    """Write every array of `model` to `directory/filename`, named by PyTree path (`layers[0].weight`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        name.lstrip("."): np.ascontiguousarray(np.asarray(jax.device_get(value)))
        for name, value in _flatten(model).items()
    }
    path = directory / filename
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)  # atomic: readers never see a half-written file
    return path
