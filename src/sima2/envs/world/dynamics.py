"""Physics of one action (interact/drop, then per-tick motion with collisions), and the two body senses
read from the state: proprioception (motion, heading, what is held) and touch (contact, holding, reach).

Depends only on the state types and geometry: the step's hot path, kept free of generation and language.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float32, Int32

from sima2.envs import vocabulary as voc
from sima2.envs.world.games import GAME_MOVE_SPEED
from sima2.envs.world.geometry import (
    entity_in_reach,
    heading_vectors,
    object_grid,
    precise_dot,
    row_masks,
    solid_grid,
    wrap_angle,
)
from sima2.envs.world.state import (
    ACTION_NVEC,
    AGENT_RADIUS,
    CONTACT_DOOR,
    CONTACT_NONE,
    CONTACT_OBJECT,
    CONTACT_WALL,
    DOOR_CLOSED,
    DOOR_LOCKED,
    DOOR_OPEN,
    DROP,
    DURATION_TICKS,
    INTERACT,
    LOOK_DEGREES,
    MOVE_SPEED,
    TICK_HZ,
    EnvState,
)


# --- physics ---------------------------------------------------------------------------------------------
def _blocked(
    row_bits: Int32[Array, " GH"], cols: int, x: Float32[Array, ""], y: Float32[Array, ""]
) -> Bool[Array, ""]:
    """Whether the agent's bounding square at (x, y) overlaps a solid cell (`row_bits`: the solid cells
    of each row as a bit mask; positions outside the grid read its edge cells). The square's corners span
    at most two rows and two columns: two row lookups instead of four cell lookups."""
    rows = row_bits.shape[0]
    col_lo = jnp.clip(jnp.floor(x - AGENT_RADIUS).astype(jnp.int32), 0, cols - 1)
    col_hi = jnp.clip(jnp.floor(x + AGENT_RADIUS).astype(jnp.int32), 0, cols - 1)
    row_lo = jnp.clip(jnp.floor(y - AGENT_RADIUS).astype(jnp.int32), 0, rows - 1)
    row_hi = jnp.clip(jnp.floor(y + AGENT_RADIUS).astype(jnp.int32), 0, rows - 1)
    # Row lookups as selects over the few rows: all elementwise, so XLA fuses a whole physics tick into
    # one kernel (a gather would split it into several, and their launches dominate at this size).
    mask = jnp.int32(0)
    for r in range(rows):
        mask = mask | jnp.where((row_lo == r) | (row_hi == r), row_bits[r], 0)
    return (((mask >> col_lo) | (mask >> col_hi)) & 1) == 1


def _interact(state: EnvState, key_index: Int32[Array, ""]) -> tuple[EnvState, Bool[Array, ""]]:
    """Apply interact (pick up / toggle door) or drop; returns the new state and whether it failed."""
    n_obj = state.obj_type.shape[0]
    reach, distance = entity_in_reach(state)
    candidate = jnp.argmin(jnp.where(reach, distance, jnp.inf))
    any_reach = jnp.any(reach)
    is_object = candidate < n_obj
    empty_handed = state.carrying < 0
    do_interact = key_index == INTERACT
    pick = do_interact & any_reach & is_object & empty_handed
    door = jnp.clip(candidate - n_obj, 0, state.door_state.shape[0] - 1)
    current = state.door_state[door]
    holds_key = (
        (state.carrying >= 0)
        & (state.obj_type[jnp.maximum(state.carrying, 0)] == voc.KEY)
        & (state.obj_colour[jnp.maximum(state.carrying, 0)] == state.door_colour[door])
    )
    # A door cannot be closed on the agent standing in its doorway.
    clear_of_door = distance[candidate] > 0.5 + AGENT_RADIUS
    toggle = do_interact & any_reach & ~is_object & clear_of_door & ((current != DOOR_LOCKED) | holds_key)
    new_door_state = jnp.where(current == DOOR_OPEN, DOOR_CLOSED, DOOR_OPEN)
    door_state = jnp.where(toggle, state.door_state.at[door].set(new_door_state), state.door_state)
    carrying = jnp.where(pick, candidate, state.carrying).astype(jnp.int32)

    # Drop into the cell in front if it is free floor (no wall, door, object, or the agent itself).
    forward, _ = heading_vectors(state.agent_dir)
    front = jnp.floor(state.agent_pos + forward).astype(jnp.int32)[::-1]
    rows, cols = state.wall.shape
    inside = (front[0] >= 0) & (front[0] < rows) & (front[1] >= 0) & (front[1] < cols)
    fr, fc = jnp.clip(front[0], 0, rows - 1), jnp.clip(front[1], 0, cols - 1)
    agent_cell = jnp.floor(state.agent_pos).astype(jnp.int32)[::-1]
    free = inside & ~state.wall[fr, fc] & (state.door_id[fr, fc] < 0) & ~object_grid(state)[fr, fc]
    free = free & ~jnp.all(agent_cell == jnp.stack([fr, fc]))
    drop = (key_index == DROP) & (state.carrying >= 0) & free
    obj_pos = jnp.where(
        drop, state.obj_pos.at[jnp.maximum(state.carrying, 0)].set(jnp.stack([fr, fc])), state.obj_pos
    )
    carrying = jnp.where(drop, -1, carrying).astype(jnp.int32)
    failed = (do_interact & ~pick & ~toggle) | ((key_index == DROP) & ~drop)
    new_state = eqx.tree_at(
        lambda s: (s.door_state, s.carrying, s.obj_pos),
        state,
        (door_state.astype(jnp.int32), carrying, obj_pos),
    )
    return new_state, failed


def physics(
    state: EnvState, action: Int32[Array, "3"], others: Float32[Array, "K 2"] | None = None
) -> tuple[EnvState, Bool[Array, ""]]:
    """Hold `action` for its duration at TICK_HZ: interact/drop first, then per-tick motion with collisions.
    `others`: the (x, y) of other bodies (a team world's agents), squares of the agent's size that a move
    may not push into (moving away from one it touches is free).

    Returns the new state and whether the action was invalid (bump, or an interaction that did nothing).
    """
    key_index = jnp.clip(action[0], 0, ACTION_NVEC[0] - 1)
    look = jnp.asarray(LOOK_DEGREES, jnp.float32)[jnp.clip(action[1], 0, ACTION_NVEC[1] - 1)]
    ticks = jnp.asarray(DURATION_TICKS, jnp.int32)[jnp.clip(action[2], 0, ACTION_NVEC[2] - 1)]
    state, failed = _interact(state, key_index)

    body = jnp.array([[0, 0], [1, 0], [-1, 0], [0, -1], [0, 1], [0, 0], [0, 0]], jnp.float32)[key_index]
    yaw_step = jnp.deg2rad(look) / ticks.astype(jnp.float32)
    dt = 1.0 / TICK_HZ
    solid = solid_grid(state)
    cols = solid.shape[1]
    row_bits = row_masks(solid)

    # The heading and the intended displacement of every tick, computed up front (vectorised over ticks);
    # the sequential loop then only moves and collides.
    tick_index = jnp.arange(max(DURATION_TICKS), dtype=jnp.int32)
    active = tick_index < ticks
    angles = state.agent_dir + yaw_step * (jnp.minimum(tick_index, ticks - 1) + 1).astype(jnp.float32)
    cos, sin = jnp.cos(angles), jnp.sin(angles)  # forward = (cos, sin), right = (-sin, cos)
    speed = jnp.asarray(GAME_MOVE_SPEED)[state.game]  # each game moves at its own speed
    steps_x = jnp.where(active, (body[0] * cos + body[1] * -sin) * (speed * dt), 0.0)
    steps_y = jnp.where(active, (body[0] * sin + body[1] * cos) * (speed * dt), 0.0)
    counts = active & ((steps_x != 0.0) | (steps_y != 0.0))  # ticks whose bumps count as contact

    def bumps(x: Float32[Array, ""], y: Float32[Array, ""], new_x: Float32[Array, ""], new_y: Float32[Array, ""]):
        if others is None:
            return jnp.bool_(False)
        near = jnp.all(jnp.abs(others - jnp.stack([new_x, new_y])) < 2 * AGENT_RADIUS, axis=-1)
        closer = jnp.sum((others - jnp.stack([new_x, new_y])) ** 2, -1) < jnp.sum((others - jnp.stack([x, y])) ** 2, -1)
        return jnp.any(near & closer)

    def tick(t, carry):
        # One array as the carry: the tick then has a single output and XLA fuses it into one kernel.
        x, y, pushed = carry[0], carry[1], carry[2]
        dx, dy = steps_x[t], steps_y[t]
        hit_x = _blocked(row_bits, cols, x + dx, y) | bumps(x, y, x + dx, y)
        x = jnp.where(hit_x, x, x + dx)
        hit_y = _blocked(row_bits, cols, x, y + dy) | bumps(x, y, x, y + dy)
        y = jnp.where(hit_y, y, y + dy)
        pushed = pushed + (counts[t] & (hit_x | hit_y)).astype(jnp.float32)
        return jnp.stack([x, y, pushed])

    start = state.agent_pos
    carry = jnp.stack([start[0], start[1], jnp.float32(0.0)])
    x, y, pushed = jax.lax.fori_loop(0, max(DURATION_TICKS), tick, carry)
    angle = angles[-1]
    pos = jnp.stack([x, y])
    duration = ticks.astype(jnp.float32) * dt
    forward, right = heading_vectors(angle)
    moved = (pos - start) / duration
    contact = pushed / ticks.astype(jnp.float32)
    # Each tick moves an axis by its whole step or not at all: what the walls took from the intended motion
    # is the push against them (kept out of the tick loop, which XLA fuses into one kernel).
    push = jnp.stack([jnp.sum(steps_x), jnp.sum(steps_y)]) - (pos - start)
    push_norm = jnp.sqrt(precise_dot(push, push))
    push_dir = jnp.where((pushed > 0) & (push_norm > 0), push / jnp.maximum(push_norm, 1e-12), 0.0)
    state = eqx.tree_at(
        lambda s: (
            s.agent_pos, s.agent_dir, s.velocity, s.yaw_rate, s.contact, s.contact_direction, s.contact_kind
        ),
        state,
        (
            pos,
            wrap_angle(angle),
            jnp.stack([precise_dot(moved, forward), precise_dot(moved, right)]),
            jnp.deg2rad(look) / duration,
            contact,
            jnp.stack([precise_dot(push_dir, forward), precise_dot(push_dir, right)]),
            _touched_kind(state, pos, push_dir, pushed > 0),
        ),
    )
    return state, failed | (pushed > 0)


def _touched_kind(
    state: EnvState, pos: Float32[Array, "2"], push_dir: Float32[Array, "2"], touching: Bool[Array, ""]
) -> Int32[Array, ""]:
    """What the agent at `pos` pushes against in `push_dir`: an object or a door in the cell just past the
    edge of its bounding square, along the push's main axis, at either end of that edge (a collision is
    with any cell the square overlaps); else a wall."""
    main_axis = jnp.where(jnp.abs(push_dir[0]) >= jnp.abs(push_dir[1]), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))
    across = main_axis[::-1] * (AGENT_RADIUS * 0.99)
    ahead = pos + jnp.sign(push_dir) * main_axis * (AGENT_RADIUS + 0.1)  # past the largest per-tick gap
    # The two probed cells as (row, col), compared with the few entity positions: no grid gathers (slow
    # batched on CPU).
    cells = jnp.floor(jnp.stack([ahead - across, ahead + across])[:, ::-1]).astype(jnp.int32)

    def at_cells(positions: Int32[Array, "E 2"], present: Bool[Array, " E"]) -> Bool[Array, ""]:
        return jnp.any(jnp.all(positions[None, :, :] == cells[:, None, :], axis=-1) & present[None, :])

    lying = (jnp.arange(state.obj_type.shape[0]) != state.carrying) & state.obj_valid
    kind = jnp.where(
        at_cells(state.obj_pos, lying),
        CONTACT_OBJECT,
        jnp.where(at_cells(state.door_pos, state.door_valid), CONTACT_DOOR, CONTACT_WALL),
    )
    return jnp.where(touching, kind, CONTACT_NONE).astype(jnp.int32)


def proprio(state: EnvState) -> Float32[Array, " P"]:
    """Velocity (body frame), yaw rate, heading, and the held object's type and colour (one-hot; zeros when
    empty-handed). Contact and holding are touch (`touch`)."""
    holding = state.carrying >= 0
    held = jnp.maximum(state.carrying, 0)
    held_type = jax.nn.one_hot(state.obj_type[held], 3) * holding
    held_colour = jax.nn.one_hot(state.obj_colour[held], len(voc.COLOURS)) * holding
    return jnp.concatenate(
        [
            state.velocity / MOVE_SPEED,
            (state.yaw_rate / math.pi)[None],
            jnp.stack([jnp.cos(state.agent_dir), jnp.sin(state.agent_dir)]),
            held_type,
            held_colour,
        ]
    ).astype(jnp.float32)


def touch(state: EnvState) -> Float32[Array, " T"]:
    """What the body feels (`TOUCH_SIZE` values): contact strength over the last action's moving ticks, its
    direction in the body frame (forward, right; zeros without contact), what was touched (wall, door,
    object; one-hot, zeros without contact), whether an object is held, and whether an object / a door is
    within reach of a hand (close and in front: what interact would act on)."""
    reach, _ = entity_in_reach(state)
    n_obj = state.obj_type.shape[0]
    kinds = jnp.array([CONTACT_WALL, CONTACT_DOOR, CONTACT_OBJECT], jnp.int32)
    return jnp.concatenate(
        [
            state.contact[None],
            state.contact_direction,
            (state.contact_kind == kinds).astype(jnp.float32),
            (state.carrying >= 0).astype(jnp.float32)[None],
            jnp.stack([jnp.any(reach[:n_obj]), jnp.any(reach[n_obj:])]).astype(jnp.float32),
        ]
    ).astype(jnp.float32)
