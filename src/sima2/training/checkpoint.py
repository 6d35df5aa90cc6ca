"""Checkpoints of the full training state with orbax (final weights: the model's own `save_pretrained`).

Orbax writes each checkpoint to a temporary folder and renames it when complete (atomic), keeps the last
K, and handles sharded and multi-host arrays. The state is saved as a flat `{path: array}` dict of every
array leaf (parameters, optimiser state, RNG keys as raw key data, step, world states); the non-array
structure is rebuilt from a template state made from the same config, so a resume is exact. Host-side
facts that are not arrays (the data iterator's position) go in a JSON item next to it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PyTree

from sima2.training.loop import own_buffers

log = logging.getLogger("sima2.training")


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _flatten(state: PyTree) -> dict[str, Any]:
    arrays, _ = eqx.partition(state, eqx.is_array)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(arrays)[0]:
        flat[jax.tree_util.keystr(path)] = jax.random.key_data(leaf) if _is_key(leaf) else leaf
    return flat


def _like(template: Any, value: Any) -> Any:
    """`value` placed as `template` is: orbax restores onto the template's device and so commits every array,
    but a template that was not committed to a device (a single-device run) must get an uncommitted array
    back, or every jitted program that takes the restored state compiles again instead of reusing the
    program (in memory and in the persistent compilation cache) that the same run compiled before."""
    if isinstance(template, jax.Array) and not template.committed and isinstance(value, jax.Array) and value.committed:
        return jax.device_put(np.asarray(value))
    return value


def _unflatten(template: PyTree, flat: dict[str, Any]) -> PyTree:
    arrays, static = eqx.partition(template, eqx.is_array)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    missing = [jax.tree_util.keystr(p) for p, _ in leaves_with_path if jax.tree_util.keystr(p) not in flat]
    if missing:
        raise ValueError(f"checkpoint does not match the training state; missing entries: {missing[:5]}")
    leaves = []
    for path, leaf in leaves_with_path:
        value = _like(leaf, flat[jax.tree_util.keystr(path)])
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
        """Save `state` (and JSON-serialisable `meta`) as checkpoint `step`. The arrays are copied first, so
        the caller may reuse or donate its buffers while an asynchronous save is still writing."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_flatten(own_buffers(state))),
                meta=ocp.args.JsonSave(dict(meta or {}, step=step)),
            ),
            force=force,
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict[str, Any]]:
        """Restore checkpoint `step` into the structure and shardings of `template`.

        Without `step`, the newest checkpoint that restores: a damaged or foreign one (truncated files, a
        stray folder, a missing item) is skipped with a warning naming it and the next older one is tried,
        so a run killed while its newest checkpoint was being damaged still resumes from the last good one.
        A skipped checkpoint is moved aside to `<step>.unreadable` (nothing is deleted), so the resumed run can
        save that step again. If none restores, nothing is moved and the ValueError lists why for each.
        """
        if step is not None:
            return self._restore(template, step)
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
        failures = []
        for candidate in steps:
            try:
                restored = self._restore(template, candidate)
            except Exception as err:  # orbax and tensorstore raise many types for unreadable data
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                failures.append(f"checkpoint {candidate}: {type(err).__name__}: {reason}")
                log.warning("cannot restore %s/%d (%s); trying an older checkpoint", self.directory, candidate, reason)
                continue
            skipped = [step for step in steps if step > candidate]
            if skipped and jax.process_index() == 0:
                for step in skipped:
                    aside = self.directory / f"{step}.unreadable"
                    while aside.exists():
                        aside = aside.with_name(aside.name + "_")
                    (self.directory / str(step)).rename(aside)
                    log.warning("moved the unreadable checkpoint %s/%d aside to %s", self.directory, step, aside)
                self._manager.reload()
            return restored
        raise ValueError(
            f"no checkpoint in {self.directory} restores into this run's training state (was the run's "
            f"configuration changed since they were saved?): " + "; ".join(failures)
        )

    def _restore(self, template: PyTree, step: int) -> tuple[PyTree, dict[str, Any]]:
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
