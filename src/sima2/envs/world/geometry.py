"""Small geometry and state queries on one world: headings, entity tables, per-cell grids, reach.

Shared by generation, the plans, physics, the renderer and the expert; they depend only on the state types.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float32, Int32

from sima2.envs import vocabulary as voc
from sima2.envs.world.state import DOOR_OPEN, REACH_ANGLE, REACH_DISTANCE, EnvState


# --- small helpers ---------------------------------------------------------------------------------------
def precise_dot(a: Float32[Array, "..."], b: Float32[Array, "..."]) -> Float32[Array, "..."]:
    """`a @ b` in full float32 on every backend (GPUs and TPUs would otherwise round the operands)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def heading_vectors(angle: Float32[Array, ""]) -> tuple[Float32[Array, "2"], Float32[Array, "2"]]:
    """Unit forward and right vectors (x, y) of a heading."""
    forward = jnp.stack([jnp.cos(angle), jnp.sin(angle)])
    right = jnp.stack([-jnp.sin(angle), jnp.cos(angle)])
    return forward, right


def wrap_angle(angle: Float32[Array, "*s"]) -> Float32[Array, "*s"]:
    """Wrap to (-pi, pi]."""
    return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def location_phrases_holding(
    cell: Int32[Array, "2"], pos: Float32[Array, "2"], heading: Float32[Array, ""]
) -> Bool[Array, "4"]:
    """Which location phrases (in front of, behind, left of, right of: codes 1-4) hold for the entity in
    `cell` (row, col), seen from `pos` facing `heading`."""
    forward, right = heading_vectors(heading)
    offset = cell[::-1].astype(jnp.float32) + 0.5 - pos
    along, across = precise_dot(offset, forward), precise_dot(offset, right)
    return jnp.stack([along > 0.5, along < -0.5, across < -0.5, across > 0.5])


def entity_positions(state: EnvState) -> Int32[Array, "E 2"]:
    return jnp.concatenate([state.obj_pos, state.door_pos], axis=0)


def entity_types(state: EnvState) -> Int32[Array, " E"]:
    return jnp.concatenate([state.obj_type, jnp.full_like(state.door_colour, voc.DOOR)])


def entity_colours(state: EnvState) -> Int32[Array, " E"]:
    return jnp.concatenate([state.obj_colour, state.door_colour])


def row_masks(grid: Bool[Array, "R C"]) -> Int32[Array, " R"]:
    """Each row of a boolean grid as a 32-bit mask (bit c = column c): grid lookups become shifts and ands
    (renderer, physics, BFS). `row_masks(grid.T)` gives the columns."""
    if grid.shape[1] > 31:
        raise ValueError(f"grids larger than 31 cells are not supported, got {grid.shape}")
    return jnp.sum(jnp.where(grid, jnp.int32(1) << jnp.arange(grid.shape[1], dtype=jnp.int32), 0), axis=1)


# The per-cell grids below compare every cell with the few entity positions instead of scattering or
# gathering: elementwise code that XLA fuses, where batched scatters and gathers are slow on CPU.
def _cells_at(shape: tuple[int, int], pos: Int32[Array, "2"]) -> Bool[Array, "GH GW"]:
    rows = jnp.arange(shape[0], dtype=jnp.int32)[:, None]
    cols = jnp.arange(shape[1], dtype=jnp.int32)[None, :]
    return (rows == pos[0]) & (cols == pos[1])


def object_grid(state: EnvState) -> Bool[Array, "GH GW"]:
    """Cells occupied by objects lying in the world (not the carried one)."""
    grid = jnp.zeros(state.wall.shape, bool)
    for i in range(state.obj_type.shape[0]):
        grid = grid | (_cells_at(state.wall.shape, state.obj_pos[i]) & (state.carrying != i) & state.obj_valid[i])
    return grid


def door_state_grid(state: EnvState) -> Int32[Array, "GH GW"]:
    """Door state per cell, -1 where there is no door."""
    grid = jnp.full(state.wall.shape, -1, jnp.int32)
    for d in range(state.door_pos.shape[0]):
        at_door = _cells_at(state.wall.shape, state.door_pos[d]) & state.door_valid[d]
        grid = jnp.where(at_door, state.door_state[d], grid)
    return grid


def solid_grid(state: EnvState) -> Bool[Array, "GH GW"]:
    """Cells the agent cannot enter: walls, closed or locked doors, lying objects."""
    return state.wall | (door_state_grid(state) > DOOR_OPEN) | object_grid(state)


def entity_in_reach(state: EnvState) -> tuple[Bool[Array, " E"], Float32[Array, " E"]]:
    """Which entities the agent can interact with (close and roughly in front), and their distances."""
    centres = entity_positions(state)[:, ::-1].astype(jnp.float32) + 0.5
    offset = centres - state.agent_pos
    distance = jnp.linalg.norm(offset, axis=-1)
    forward, _ = heading_vectors(state.agent_dir)
    # Within REACH_ANGLE of the heading, tested as a cosine (no per-entity arctangent, slow on CPU).
    in_front = precise_dot(offset, forward) >= distance * math.cos(REACH_ANGLE)
    n_obj = state.obj_type.shape[0]
    present = jnp.concatenate([(jnp.arange(n_obj) != state.carrying) & state.obj_valid, state.door_valid])
    reach = present & (distance <= REACH_DISTANCE) & in_front
    return reach, distance
