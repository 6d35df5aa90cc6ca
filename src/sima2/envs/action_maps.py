"""How sima2's factored actions (key, look, duration indices) become a gymnasium env's actions and back:
`DiscreteActionMap` for a `Discrete(n)` env (a table from index triples to the env's action, with the inverse
that turns an expert's native actions into factors), `FactorActionMap` for a `MultiDiscrete` env that already
speaks factors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MINIGRID_ACTIONS = ("left", "right", "forward", "pickup", "drop", "toggle", "done")


class DiscreteActionMap:
    """Maps sima2 (key, look, duration) indices to a Discrete action: ``table[key, look, duration]``."""

    def __init__(self, table: np.ndarray):
        table = np.asarray(table)
        if table.ndim < 1 or not np.issubdtype(table.dtype, np.integer):
            raise ValueError(
                f"action table must be an integer array with one axis per factor, got {table.dtype}"
            )
        self.table = table

    @classmethod
    def for_discrete(cls, n: int) -> DiscreteActionMap:
        """Key factor selects the action; look and duration have one value each."""
        return cls(np.arange(n).reshape(n, 1, 1))

    @property
    def nvec(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.table.shape)

    def inverse(self, native: Any) -> np.ndarray:
        """sima2 factor indices `(N, factors)` for native actions `(N,)`: for each, the first index triple
        (in lexicographic order) that the table maps to it. Raises ValueError naming an action no index
        triple maps to."""
        native = np.asarray(native).reshape(-1)
        flat = self.table.reshape(-1)
        out = np.empty((native.shape[0], self.table.ndim), np.int32)
        for i, action in enumerate(native):
            hits = np.flatnonzero(flat == action)
            if hits.size == 0:
                raise ValueError(
                    f"native action {action.item()!r} is not in the action table "
                    f"(it maps to {sorted(set(flat.tolist()))})"
                )
            out[i] = np.unravel_index(hits[0], self.table.shape)
        return out

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != self.table.ndim:
            raise ValueError(f"actions must have shape (num_envs, {self.table.ndim}), got {actions.shape}")
        if np.any(actions < 0) or np.any(actions >= np.asarray(self.nvec)):
            raise ValueError(f"action indices out of range for action_nvec={self.nvec}: {actions.tolist()}")
        return self.table[tuple(actions.T)]


class FactorActionMap:
    """The identity map for an env whose actions already are sima2's factors (a `MultiDiscrete(nvec)` space, such
    as the built-in world behind gymnasium): the same interface as `DiscreteActionMap`."""

    def __init__(self, nvec: Sequence[int]):
        self._nvec = tuple(int(n) for n in nvec)
        if not self._nvec or min(self._nvec) < 1:
            raise ValueError(f"every action factor needs at least one value, got nvec={self._nvec}")

    @property
    def nvec(self) -> tuple[int, ...]:
        return self._nvec

    def inverse(self, native: Any) -> np.ndarray:
        """The factors `(N, factors)` of native actions (the same numbers), range-checked."""
        return self(np.asarray(native, np.int64).reshape(-1, len(self._nvec))).astype(np.int32)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        if actions.ndim != 2 or actions.shape[1] != len(self._nvec):
            raise ValueError(f"actions must have shape (num_envs, {len(self._nvec)}), got {actions.shape}")
        if np.any(actions < 0) or np.any(actions >= np.asarray(self._nvec)):
            raise ValueError(f"action indices out of range for action_nvec={self._nvec}: {actions.tolist()}")
        return actions


__all__ = ["MINIGRID_ACTIONS", "DiscreteActionMap", "FactorActionMap"]
