"""The shortest-path expert: BFS distance fields over the grid (in JAX), subgoals, and expert actions.

The expert is reactive: from any state it works out the current subgoal of the plan (go to / pick up /
open / put next to), computes a BFS distance field to the cells from which that subgoal can be done, and
returns the action that turns toward or moves to the next cell on a shortest path, opens closed doors on
the way, and interacts or drops once in place. Everything is fixed-size array code, so it vmaps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float32, Int32

from sima2.envs import vocabulary as voc
from sima2.envs.world import (
    DOOR_CLOSED,
    DOOR_LOCKED,
    DROP,
    DURATION_TICKS,
    FORWARD,
    INTERACT,
    LOOK_CENTRE,
    LOOK_DEGREES,
    NOOP,
    NUM_STAGES,
    SUBGOAL_GOTO,
    SUBGOAL_PUT,
    TICK_HZ,
    EnvState,
    door_state_grid,
    entity_in_reach,
    entity_positions,
    key_for_door,
    object_grid,
    row_masks,
    wrap_angle,
)
from sima2.envs.world.games import GAME_MOVE_SPEED

UNREACHABLE = 10_000
ALIGN_TOLERANCE = math.radians(12.0)
_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (drow, dcol)


def _shift(grid: jax.Array, drow: int, dcol: int, fill) -> jax.Array:
    """grid[r + drow, c + dcol] at (r, c), `fill` outside."""
    padded = jnp.pad(grid, 1, constant_values=fill)
    rows, cols = grid.shape
    return padded[1 + drow : 1 + drow + rows, 1 + dcol : 1 + dcol + cols]


def adjacent(mask: Bool[Array, "GH GW"]) -> Bool[Array, "GH GW"]:
    out = jnp.zeros_like(mask)
    for drow, dcol in _NEIGHBOURS:
        out = out | _shift(mask, drow, dcol, False)
    return out


def passable_grid(state: EnvState) -> Bool[Array, "GH GW"]:
    """Cells a path may use: floor without objects, open or closed (not locked) doors."""
    doors = door_state_grid(state)
    return ~state.wall & ~object_grid(state) & (doors != DOOR_LOCKED)


def distance_field(goal: Bool[Array, "GH GW"], passable: Bool[Array, "GH GW"]) -> Int32[Array, "GH GW"]:
    """BFS distance (in cells, 4-neighbourhood) to the nearest goal cell; UNREACHABLE elsewhere.

    Runs a fixed number of relaxation sweeps: rows + cols for a single room (paths there are at most a
    Manhattan distance plus small detours around objects), twice that for multi-room layouts.
    """
    rows, cols = goal.shape
    init = jnp.where(goal & passable, 0, UNREACHABLE).astype(jnp.int32)

    def sweep(_, dist):
        best = dist
        for drow, dcol in _NEIGHBOURS:
            best = jnp.minimum(best, _shift(dist, drow, dcol, UNREACHABLE) + 1)
        return jnp.where(passable, jnp.minimum(best, UNREACHABLE), UNREACHABLE)

    return jax.lax.fori_loop(0, _sweeps(goal.shape), sweep, init)


def _sweeps(shape: tuple[int, int]) -> int:
    rows, cols = shape
    multi_room = rows > 9 or cols > 9
    return (2 if multi_room else 1) * (rows + cols)


def distances_at(
    goal: Bool[Array, "GH GW"], passable: Bool[Array, "GH GW"], cells: Int32[Array, "Q 2"]
) -> Int32[Array, " Q"]:
    """`distance_field(goal, passable)` at the (row, col) `cells` only (UNREACHABLE outside the grid).

    The same BFS with each grid row as a bit mask: a layer grows the reached set by one cell in all four
    directions with shifts and ors, and a query cell's distance counts the layers before it is reached.
    Several times cheaper than the full field when only a few cells are asked for (the step's distance
    to the goal, the expert's neighbours).
    """
    rows, cols = goal.shape
    open_bits = row_masks(passable)
    row, col = cells[:, 0], cells[:, 1]
    inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
    row, col = jnp.clip(row, 0, rows - 1), jnp.clip(col, 0, cols - 1)

    def unreached(reached: Int32[Array, " GH"]) -> Int32[Array, " Q"]:
        return 1 - ((reached[row] >> col) & 1)

    def layer(_, carry):
        reached, distance = carry
        grown = reached | (reached << 1) | (reached >> 1)
        grown = grown | jnp.pad(reached[1:], (0, 1)) | jnp.pad(reached[:-1], (1, 0))
        reached = grown & open_bits
        return reached, distance + unreached(reached)

    start = row_masks(goal & passable)
    reached, distance = jax.lax.fori_loop(0, _sweeps(goal.shape), layer, (start, unreached(start)))
    return jnp.where(inside & (unreached(reached) == 0), distance, UNREACHABLE).astype(jnp.int32)


def current_subgoal(
    state: EnvState,
) -> tuple[Int32[Array, ""], Int32[Array, ""], Int32[Array, ""], Int32[Array, ""]]:
    """The subgoal to pursue now: (index into the plan, subgoal kind, entity a, entity b)."""
    t = jnp.minimum(state.stage, NUM_STAGES - 1)
    kind, a, b = state.stage_kind[t], state.stage_a[t], state.stage_b[t]
    n_obj = state.obj_type.shape[0]
    reach, _ = entity_in_reach(state)
    door = jnp.clip(a - n_obj, 0, state.door_state.shape[0] - 1)
    locked = (kind == voc.OPEN) & (state.door_state[door] == DOOR_LOCKED)
    key = key_for_door(state, a)
    has_key = state.carrying == key
    carrying_a = state.carrying == a

    # Local step within the stage's plan (see world.plans._stage_plan for the plan rows).
    local_goto = jnp.int32(0)
    local_simple = jnp.where(reach[a], 1, 0)
    local_put = jnp.where(carrying_a, jnp.where(_at_drop_spot(state, b), 3, 2), jnp.where(reach[a], 1, 0))
    local_unlock = jnp.where(has_key, jnp.where(reach[a], 3, 2), jnp.where(reach[key], 1, 0))
    local = jnp.where(
        locked,
        local_unlock,
        jnp.stack([local_goto, local_simple, local_simple, local_put])[kind],
    ).astype(jnp.int32)
    index = jnp.clip(state.stage_plan_offset[t] + local, 0, state.plan_kind.shape[0] - 1)
    return index, state.plan_kind[index], state.plan_a[index], state.plan_b[index]


def drop_spots(state: EnvState, b: Int32[Array, ""]) -> Bool[Array, "GH GW"]:
    """Free floor cells next to object b, where a held object may be dropped to be 'next to' it."""
    b_obj = jnp.clip(b, 0, state.obj_type.shape[0] - 1)
    target = jnp.zeros(state.wall.shape, bool).at[state.obj_pos[b_obj, 0], state.obj_pos[b_obj, 1]].set(True)
    free = ~state.wall & (state.door_id < 0) & ~object_grid(state)
    return free & adjacent(target)


def _at_drop_spot(state: EnvState, b: Int32[Array, ""]) -> Bool[Array, ""]:
    goal = stand_cells_for_drop(state, b)
    cell = jnp.floor(state.agent_pos).astype(jnp.int32)
    return goal[cell[1], cell[0]]


def stand_cells_for_drop(state: EnvState, b: Int32[Array, ""]) -> Bool[Array, "GH GW"]:
    return passable_grid(state) & (state.door_id < 0) & adjacent(drop_spots(state, b))


def subgoal_goal_cells(state: EnvState) -> Bool[Array, "GH GW"]:
    """Cells from which the current subgoal can be completed (standing cells)."""
    _, kind, a, b = current_subgoal(state)
    pos = entity_positions(state)[a]
    target = jnp.zeros(state.wall.shape, bool).at[pos[0], pos[1]].set(True, mode="drop")
    near_entity = adjacent(target) & passable_grid(state)
    # Carrying the object to put: go where it can be dropped next to the other one.
    t = jnp.minimum(state.stage, NUM_STAGES - 1)
    placing = (state.stage_kind[t] == voc.PUTNEXT) & (state.carrying == state.stage_a[t])
    return jnp.where(placing, stand_cells_for_drop(state, state.stage_b[t]), near_entity)


def goal_distances(state: EnvState, positions: Float32[Array, "Q 2"]) -> Float32[Array, " Q"]:
    """Shortest-path distances (cells) to where the current subgoal can be done, from the cells holding
    the (x, y) `positions`."""
    cells = jnp.floor(positions).astype(jnp.int32)[:, ::-1]
    return distances_at(subgoal_goal_cells(state), passable_grid(state), cells).astype(jnp.float32)


def distance_to_goal(state: EnvState) -> Float32[Array, ""]:
    """Shortest-path distance in cells from the agent's cell to where the current subgoal can be done."""
    return goal_distances(state, state.agent_pos[None, :])[0]


def _turn_or(
    desired: Float32[Array, ""], state: EnvState, key_when_aligned: Int32[Array, ""], ticks: Int32[Array, ""]
) -> Int32[Array, "3"]:
    """Turn toward `desired` heading (closest look bin), or press `key_when_aligned` when facing it."""
    error = wrap_angle(desired - state.agent_dir)
    looks = jnp.deg2rad(jnp.asarray(LOOK_DEGREES, jnp.float32))
    look = jnp.argmin(jnp.abs(looks - error)).astype(jnp.int32)
    aligned = jnp.abs(error) <= ALIGN_TOLERANCE
    turn = jnp.stack([jnp.int32(NOOP), look, jnp.int32(0)])
    act = jnp.stack([key_when_aligned, jnp.int32(LOOK_CENTRE), ticks])
    return jnp.where(aligned, act, turn).astype(jnp.int32)


def drop_face_point(state: EnvState, b: Int32[Array, ""]) -> Float32[Array, "2"]:
    """(x, y) centre of the cell a held object is dropped into from the agent's cell to lie next to object
    `b`: the first of the four neighbours that is a drop spot."""
    cell = jnp.floor(state.agent_pos).astype(jnp.int32)[::-1]  # (row, col)
    spots = drop_spots(state, b)
    spot_here = jnp.stack([_shift(spots, dr, dc, False)[cell[0], cell[1]] for dr, dc in _NEIGHBOURS])
    spot_cell = cell + jnp.asarray(_NEIGHBOURS, jnp.int32)[jnp.argmax(spot_here)]
    return spot_cell[::-1].astype(jnp.float32) + 0.5


def navigate(
    state: EnvState,
    goal: Bool[Array, "GH GW"],
    face_point: Float32[Array, "2"],
    act_key: Int32[Array, ""],
    *,
    recentre_tolerance: Float32[Array, ""] | float = 0.3,
    skip_recentre: Bool[Array, ""] | bool = False,
) -> Int32[Array, "3"]:
    """The action (key, look, duration) that moves along a shortest path to the `goal` cells (opening closed
    doors on the way) and, once there, re-centres in the cell (unless `skip_recentre` or within
    `recentre_tolerance`), turns to `face_point` (x, y) and presses `act_key`. Shared by the world's expert
    and the team expert, whose agents give every subgoal its own goal cells."""
    passable = passable_grid(state)
    cell = jnp.floor(state.agent_pos).astype(jnp.int32)[::-1]  # (row, col)
    # Distances at the agent's cell and its four neighbours.
    distance = distances_at(goal, passable, cell[None, :] + jnp.asarray(((0, 0),) + _NEIGHBOURS, jnp.int32))
    here, neighbour_dist = distance[0], distance[1:]
    centre = cell[::-1].astype(jnp.float32) + 0.5  # (x, y)

    # Next cell on a shortest path (first neighbour with the smallest distance).
    best = jnp.argmin(neighbour_dist)
    step = jnp.asarray(_NEIGHBOURS, jnp.int32)[best]
    next_cell = cell + step
    next_centre = next_cell[::-1].astype(jnp.float32) + 0.5
    next_is_closed_door = door_state_grid(state)[next_cell[0], next_cell[1]] == DOOR_CLOSED

    def heading_to(point):
        offset = point - state.agent_pos
        return jnp.arctan2(offset[1], offset[0])

    # Moving: pick the duration whose distance best matches the distance to the next cell centre.
    speed = jnp.asarray(GAME_MOVE_SPEED)[state.game]
    move_distance = jnp.asarray(DURATION_TICKS, jnp.float32) * speed / TICK_HZ
    remaining = jnp.linalg.norm(next_centre - state.agent_pos)
    move_ticks = jnp.argmin(jnp.abs(move_distance - remaining)).astype(jnp.int32)
    travel = _turn_or(heading_to(next_centre), state, jnp.int32(FORWARD), move_ticks)
    open_door = _turn_or(heading_to(next_centre), state, jnp.int32(INTERACT), jnp.int32(0))
    travel = jnp.where(next_is_closed_door, open_door, travel)
    # No path (another body in the way in a team world): wait rather than walk off.
    stay = jnp.stack([jnp.int32(NOOP), jnp.int32(LOOK_CENTRE), jnp.int32(0)])
    travel = jnp.where(jnp.min(neighbour_dist) >= UNREACHABLE, stay, travel)

    # In place: re-centre if far off the cell centre, then face the target and act.
    off_centre = jnp.linalg.norm(state.agent_pos - centre)
    recentre_ticks = jnp.argmin(jnp.abs(move_distance - off_centre)).astype(jnp.int32)
    recentre = _turn_or(heading_to(centre), state, jnp.int32(FORWARD), recentre_ticks)
    arrive = _turn_or(heading_to(face_point), state, act_key, jnp.int32(0))
    arrive = jnp.where((off_centre > recentre_tolerance) & ~skip_recentre, recentre, arrive)
    return jnp.where(here == 0, arrive, travel).astype(jnp.int32)


def expert_action(state: EnvState) -> Int32[Array, "3"]:
    """The expert's action (key, look, duration) in this state."""
    _, kind, a, b = current_subgoal(state)
    target_pos = entity_positions(state)[a]
    target_centre = target_pos[::-1].astype(jnp.float32) + 0.5
    face_point = jnp.where(kind == SUBGOAL_PUT, drop_face_point(state, b), target_centre)
    act_key = jnp.stack([jnp.int32(NOOP), jnp.int32(INTERACT), jnp.int32(INTERACT), jnp.int32(DROP)])[kind]
    # Going to an entity before picking it up / opening it needs no extra key press: turning is enough.
    act_key = jnp.where(kind == SUBGOAL_GOTO, NOOP, act_key).astype(jnp.int32)
    reach, _ = entity_in_reach(state)
    return navigate(
        state,
        subgoal_goal_cells(state),
        face_point,
        act_key,
        recentre_tolerance=jnp.where(kind == SUBGOAL_PUT, 0.2, 0.3),
        skip_recentre=(kind != SUBGOAL_PUT) & reach[a],
    )
