"""Data parallelism over all devices with `jax.sharding`, on one host or many.

Parameters and optimiser state are replicated over a 1-D `Mesh` with axis "data"; batches and per-world
rollout state are split along their leading (example or world) axis. The jitted step is written for one
global batch, and XLA inserts the gradient all-reduce, so results match a single device up to float
rounding. With several processes, `initialize_distributed` joins them first; every process then builds
the same host-side state and `shard_tree` turns it into global arrays holding only local shards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """`jax.distributed.initialize`, with gloo collectives on CPU so CPU hosts can train together.

    Arguments default to the environment variables `SIMA2_COORDINATOR`, `SIMA2_NUM_PROCESSES` and
    `SIMA2_PROCESS_ID`, and otherwise to JAX's own cluster auto-detection.
    """
    coordinator_address = coordinator_address or os.environ.get("SIMA2_COORDINATOR")
    if num_processes is None and "SIMA2_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["SIMA2_NUM_PROCESSES"])
    if process_id is None and "SIMA2_PROCESS_ID" in os.environ:
        process_id = int(os.environ["SIMA2_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_along(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding that splits dimension `axis` over the "data" mesh axis."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_global(leaf: Any, sharding: NamedSharding) -> Any:
    """A global array from a full host-side copy that every process holds identically."""
    if not eqx.is_array(leaf):
        return leaf
    if _is_key(leaf):
        data = _to_global(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    full = np.asarray(jax.device_get(leaf))
    return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])


def shard_tree(tree: PyTree, mesh: Mesh, axis: int | None = None) -> PyTree:
    """Place every array of `tree` on `mesh`: replicated (`axis=None`) or split along `axis`.

    Arrays whose size along `axis` does not divide the device count raise a ValueError.
    """
    if axis is None:
        sharding = replicated(mesh)
        return jax.tree.map(lambda leaf: _to_global(leaf, sharding), tree)
    count = mesh.devices.size

    def place(leaf: Any) -> Any:
        if not eqx.is_array(leaf):
            return leaf
        if leaf.ndim <= axis or leaf.shape[axis] % count:
            raise ValueError(
                f"cannot split an array of shape {leaf.shape} along axis {axis} over {count} devices"
            )
        return _to_global(leaf, split_along(mesh, axis))

    return jax.tree.map(place, tree)


def shard_train_state(state: Any, mesh: Mesh, env_axis: int = 0) -> Any:
    """Replicate the model, optimiser and counters; split the rollout state (`state.rollout`) over worlds."""
    if state.rollout is None:
        return shard_tree(state, mesh)
    replicated_part = shard_tree(eqx.tree_at(lambda s: s.rollout, state, None), mesh)
    return eqx.tree_at(
        lambda s: s.rollout, replicated_part, shard_tree(state.rollout, mesh, env_axis), is_leaf=lambda x: x is None
    )


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Split a batch along its leading axis. With several processes, `batch` is this process's part."""
    sharding = split_along(mesh, 0)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def to_host(tree: PyTree) -> PyTree:
    """NumPy copies of every array, gathering shards from all processes when needed."""

    def fetch(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array):
            return leaf
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        if leaf.is_fully_addressable or leaf.is_fully_replicated:
            if leaf.is_fully_addressable:
                return np.asarray(jax.device_get(leaf))
            return np.asarray(leaf.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)
