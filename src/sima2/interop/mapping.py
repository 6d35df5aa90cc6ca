"""The one mechanism that maps Hugging Face state-dict names to Equinox fields, both ways.

Each ported architecture declares, per array leaf of its Equinox module (by dotted path such as
`layers.3.attn.qkv.weight`), which HF tensor(s) it comes from and how (`same`, `transposed`, `fused`,
`reshaped`). Loading walks a shape-only skeleton of the module (`eqx.filter_eval_shape`, so nothing is
allocated twice), reads each tensor from disk on demand, transforms, checks, casts and places it. Saving
runs the same rules backwards, so every ported model round-trips to `transformers` with its own names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from sima2.interop.checkpoint import CheckpointError, TensorSource

DTYPES: dict[str, Any] = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
}


@dataclass(frozen=True)
class HFParam:
    """How one Equinox array leaf relates to one or more HF tensors.

    `to_module` turns the HF tensors (in `hf_keys` order) into the leaf; `to_hf` is its inverse.
    """

    hf_keys: tuple[str, ...]
    to_module: Callable[[list[np.ndarray]], np.ndarray]
    to_hf: Callable[[np.ndarray], list[np.ndarray]]


def same(hf_key: str) -> HFParam:
    """The leaf is the HF tensor as is (torch `nn.Linear` weights are already `(out, in)` like Equinox's)."""
    return HFParam((hf_key,), lambda xs: xs[0], lambda x: [x])


def transposed(hf_key: str) -> HFParam:
    """The leaf is the HF tensor transposed (e.g. GPT-2's `Conv1D`, stored `(in, out)`)."""
    return HFParam((hf_key,), lambda xs: xs[0].T, lambda x: [x.T])


def reshaped(hf_key: str, hf_shape: Sequence[int], module_shape: Sequence[int]) -> HFParam:
    """The leaf holds the same values in another shape (e.g. a `(1, 1, D)` class token kept as `(D,)`)."""
    hf_shape, module_shape = tuple(hf_shape), tuple(module_shape)

    def to_module(xs: list[np.ndarray]) -> np.ndarray:
        if xs[0].shape != hf_shape:  # the strict shape check reports it; never reshape silently
            return xs[0]
        return xs[0].reshape(module_shape)

    return HFParam((hf_key,), to_module, lambda x: [x.reshape(hf_shape)])


def fused(hf_keys: Sequence[str], *, sizes: Sequence[int] | None = None, axis: int = 0, transpose: bool = False
          ) -> HFParam:
    """The leaf concatenates several HF tensors (e.g. separate q/k/v into one fused projection).

    `sizes` are the parts' extents along `axis` of the leaf (default: equal parts); they let grouped-query
    attention split back into a large q and small k/v. With `transpose`, each part is transposed first.
    """
    keys = tuple(hf_keys)

    def to_module(xs: list[np.ndarray]) -> np.ndarray:
        parts = [x.T for x in xs] if transpose else xs
        return np.concatenate(parts, axis=axis)

    def to_hf(x: np.ndarray) -> list[np.ndarray]:
        if sizes is None:
            parts = np.split(x, len(keys), axis=axis)
        else:
            parts = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
        return [p.T for p in parts] if transpose else parts

    return HFParam(keys, to_module, to_hf)


def leaf_path(path: Sequence[Any]) -> str:
    """A JAX key path as a dotted name: `(GetAttrKey('layers'), SequenceKey(0), ...)` -> `layers.0...`."""
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry).strip(".[]'\""))
    return ".".join(parts)


def named_arrays(module: Any) -> dict[str, Any]:
    """Every array leaf of `module` by dotted path."""
    leaves = jax.tree_util.tree_flatten_with_path(module, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return {
        leaf_path(path): leaf
        for path, leaf in leaves[0]
        if isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))
    }


@dataclass
class LoadReport:
    """What a load found: problems (fatal when strict) and keys deliberately skipped."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped_outside_prefix: list[str] = field(default_factory=list)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, what: str) -> str:
        lines = [f"checkpoint does not match {what}:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for name, in_file, expected in self.mismatched:
            lines.append(f"  shape mismatch for {name}: checkpoint has {in_file}, model expects {expected}")
        lines.append("  (pass strict=False to load what matches and keep the rest freshly initialised)")
        return "\n".join(lines)


class KeyMismatchError(CheckpointError):
    """Strict loading found missing, unexpected or wrongly shaped tensors; the message names each one."""

    def __init__(self, report: LoadReport, what: str):
        super().__init__(report.describe(what))
        self.report = report


def _rename(key: str, aliases: Iterable[tuple[str, str]]) -> str:
    for pattern, replacement in aliases:
        key = re.sub(pattern, replacement, key)
    return key


def _detect_prefix(file_keys: list[str], wanted: set[str], aliases: Sequence[tuple[str, str]]) -> str:
    """The prefix under which the base model sits (`""`, `vit.`, `vision_model.`, `model.`, ...)."""
    candidates = {""}
    for key in file_keys:
        parts = key.split(".")
        for depth in range(1, min(len(parts), 4)):
            candidates.add(".".join(parts[:depth]) + ".")

    def score(prefix: str) -> int:
        return sum(
            1 for k in file_keys if k.startswith(prefix) and _rename(k[len(prefix):], aliases) in wanted
        )

    # Highest score wins; on ties the shortest prefix (so "" beats a spurious one).
    return max(sorted(candidates, key=len), key=score)


def _expected_hf_shapes(rule: HFParam, leaf_shape: tuple[int, ...], dtype: Any) -> list[tuple[int, ...]]:
    # Run the inverse transform on a zero-strided view: shapes come out without allocating the tensor.
    ghost = np.broadcast_to(np.zeros((), dtype=np.float32), leaf_shape)
    return [tuple(p.shape) for p in rule.to_hf(ghost)]


def _to_numpy_dtype(dtype: Any) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if dtype == jnp.bfloat16 else np.dtype(dtype)


def load_state_dict(
    skeleton: Any,
    key_map: Mapping[str, HFParam],
    source: TensorSource,
    *,
    dtype: Any = None,
    strict: bool = True,
    aliases: Sequence[tuple[str, str]] = (),
    ignore: Sequence[str] = (),
    fallback: Any = None,
    what: str = "the model",
) -> tuple[Any, LoadReport]:
    """Fill `skeleton` (a module whose leaves may be `jax.ShapeDtypeStruct`s) from `source`.

    `aliases` are `(regex, replacement)` renames applied to checkpoint names first (legacy naming schemes);
    `ignore` are regexes of checkpoint names that carry nothing the module needs (buffers, unused heads).
    With `strict=False`, leaves that cannot be loaded are taken from `fallback` (an initialised module).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        skeleton, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    wanted = {k for rule in key_map.values() for k in rule.hf_keys}
    file_keys = source.keys()
    prefix = _detect_prefix(file_keys, wanted, aliases)
    report = LoadReport(prefix=prefix)

    # canonical name -> name in the file
    in_file: dict[str, str] = {}
    for key in file_keys:
        if not key.startswith(prefix):
            report.skipped_outside_prefix.append(key)
            continue
        in_file.setdefault(_rename(key[len(prefix):], aliases), key)

    ignore_res = [re.compile(p) for p in ignore]
    report.unexpected = sorted(
        prefix + k for k in in_file if k not in wanted and not any(r.search(k) for r in ignore_res)
    )

    fallback_arrays = named_arrays(fallback) if fallback is not None else {}
    target_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype

    plan: list[tuple[Any, str, HFParam | None]] = []
    for path, leaf in leaves:
        name = leaf_path(path)
        if not isinstance(leaf, (jax.ShapeDtypeStruct, jax.Array, np.ndarray)):
            plan.append((leaf, name, None))
            continue
        rule = key_map.get(name)
        if rule is None:
            raise CheckpointError(f"internal: {what} has no HF mapping for its field {name!r}")
        expected = _expected_hf_shapes(rule, tuple(leaf.shape), leaf.dtype)
        for hf_key, shape in zip(rule.hf_keys, expected, strict=True):
            if hf_key not in in_file:
                report.missing.append(prefix + hf_key)
            elif tuple(source.shape(in_file[hf_key])) != shape:
                report.mismatched.append((in_file[hf_key], tuple(source.shape(in_file[hf_key])), shape))
        plan.append((leaf, name, rule))

    if strict and not report.ok:
        raise KeyMismatchError(report, what)
    if not report.ok and fallback is None:
        raise KeyMismatchError(report, what)

    bad = {m for m in report.missing} | {m[0] for m in report.mismatched}
    new_leaves = []
    for leaf, name, rule in plan:
        if rule is None:
            new_leaves.append(leaf)
            continue
        file_names = [in_file.get(k) for k in rule.hf_keys]
        if any(f is None or f in bad for f in file_names) or any(prefix + k in bad for k in rule.hf_keys):
            new_leaves.append(fallback_arrays[name])
            continue
        value = rule.to_module([source.load(f) for f in file_names])
        leaf_dtype = leaf.dtype
        if jnp.issubdtype(leaf_dtype, jnp.floating) and target_dtype is not None:
            leaf_dtype = target_dtype
        # Cast on the host in one step (bf16 via ml_dtypes), then one copy to the device.
        host = np.asarray(value).astype(_to_numpy_dtype(leaf_dtype), copy=False)
        # Wait for each copy: an asynchronous transfer keeps its source pages resident, and a queue of them
        # would hold much of the file in memory at once.
        new_leaves.append(jax.device_put(host).block_until_ready())
        del value, host
    return jax.tree_util.tree_unflatten(treedef, new_leaves), report


def state_dict(module: Any, key_map: Mapping[str, HFParam]) -> dict[str, np.ndarray]:
    """The module's arrays under their HF names (the inverse of `load_state_dict`)."""
    out: dict[str, np.ndarray] = {}
    for name, array in named_arrays(module).items():
        rule = key_map.get(name)
        if rule is None:
            raise CheckpointError(f"internal: no HF mapping for field {name!r}")
        for hf_key, part in zip(rule.hf_keys, rule.to_hf(np.asarray(array)), strict=True):
            out[hf_key] = np.ascontiguousarray(part)
    return out


def parameter_count(module: Any) -> int:
    """Number of scalars in the module's inexact arrays."""
    return sum(x.size for x in jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array)))
