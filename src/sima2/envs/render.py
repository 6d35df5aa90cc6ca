"""First-person and top-down rendering of the built-in world, in pure JAX (works under jit and vmap).

First person: walls and closed doors are ray-cast column by column (DDA over the grid with a fixed number
of steps), floor and ceiling are shaded by distance, and objects are billboard sprites composited in a
fixed back-to-front order (sorted by depth once) with a per-column depth test against the walls. The
image is built as palette indices and turned into RGB with one gather, which keeps it cheap on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float32, UInt8

from sima2.envs.world import DOOR_LOCKED, EnvState, door_state_grid, heading_vectors, object_grid

FIELD_OF_VIEW = math.radians(66.0)
SHADE_LEVELS = 8
# Base colours: the six object colours (BabyAI palette), then wall, floor, ceiling.
BASE_COLOURS = np.array(
    [
        [230, 40, 40],  # red
        [40, 200, 60],  # green
        [50, 90, 255],  # blue
        [160, 60, 230],  # purple
        [250, 220, 30],  # yellow
        [150, 150, 150],  # grey
        [225, 215, 195],  # wall
        [70, 60, 50],  # floor
        [40, 50, 75],  # ceiling
    ],
    np.float32,
)
WALL, FLOOR, CEILING = 6, 7, 8
SPRITE_SIZE = (0.7, 0.6, 0.55)  # ball, box, key: height in cells
# Shape exponent p of |u|^p + |v|^p < 1: ball = disc, box = (near) square, key = diamond.
SPRITE_EXPONENT = (2, 8, 1)


def _palette() -> np.ndarray:
    shade = 1.0 - 0.085 * np.arange(SHADE_LEVELS, dtype=np.float32)
    colours = BASE_COLOURS[:, None, :] * shade[None, :, None]
    return np.clip(colours, 0, 255).astype(np.uint8).reshape(-1, 3)


PALETTE = _palette()


def _shade_level(distance: Float32[Array, "*s"]) -> jax.Array:
    return jnp.clip(jnp.floor(distance * 0.7), 0, SHADE_LEVELS - 1).astype(jnp.int32)


def render_first_person(state: EnvState, height: int, width: int) -> UInt8[Array, "{height} {width} 3"]:
    """The agent's view as RGB uint8 [height, width, 3]."""
    grid_rows, grid_cols = state.wall.shape
    tan_half = math.tan(FIELD_OF_VIEW / 2)
    focal = (width / 2) / tan_half
    forward, right = heading_vectors(state.agent_dir)
    pos = state.agent_pos

    # Cell appearance: wall, closed door (its colour, darker when locked), or see-through (-1).
    doors = door_state_grid(state)
    door_colour = state.door_colour[jnp.maximum(state.door_id, 0)]
    cell_base = jnp.where(state.wall, WALL, jnp.where(doors > 0, door_colour, -1))
    cell_dark = jnp.where(doors == DOOR_LOCKED, 3, 0)
    cell_code = (cell_base * 4 + cell_dark).reshape(-1)  # base and extra darkness in one gather

    # --- walls: DDA per column, fixed step count
    cam_x = (2.0 * (np.arange(width, dtype=np.float32) + 0.5) / width - 1.0) * tan_half
    ray = forward[None, :] + jnp.asarray(cam_x)[:, None] * right[None, :]  # [W, 2]
    safe = jnp.where(jnp.abs(ray) < 1e-6, 1e-6, ray)
    delta = jnp.abs(1.0 / safe)
    step = jnp.where(ray < 0, -1, 1).astype(jnp.int32)
    cell = jnp.floor(pos).astype(jnp.int32)
    side_dist = jnp.where(ray < 0, (pos - jnp.floor(pos)), (jnp.floor(pos) + 1.0 - pos)) * delta
    cell = jnp.broadcast_to(cell, (width, 2))
    hit_dist = jnp.full((width,), 1e3, jnp.float32)
    hit_code = jnp.full((width,), WALL * 4, jnp.int32)
    hit_side = jnp.zeros((width,), jnp.int32)
    found = jnp.zeros((width,), bool)
    for _ in range(grid_rows + grid_cols):
        use_x = side_dist[:, 0] < side_dist[:, 1]
        dist = jnp.where(use_x, side_dist[:, 0], side_dist[:, 1])
        cell = cell + jnp.where(use_x[:, None], jnp.stack([step[:, 0], jnp.zeros_like(step[:, 1])], -1),
                                jnp.stack([jnp.zeros_like(step[:, 0]), step[:, 1]], -1))
        side_dist = side_dist + jnp.where(use_x[:, None], jnp.stack([delta[:, 0], jnp.zeros_like(delta[:, 1])], -1),
                                          jnp.stack([jnp.zeros_like(delta[:, 0]), delta[:, 1]], -1))
        inside = (cell[:, 0] >= 0) & (cell[:, 0] < grid_cols) & (cell[:, 1] >= 0) & (cell[:, 1] < grid_rows)
        flat = jnp.clip(cell[:, 1], 0, grid_rows - 1) * grid_cols + jnp.clip(cell[:, 0], 0, grid_cols - 1)
        code = jnp.where(inside, cell_code[flat], WALL * 4)
        new_hit = ~found & (code >= 0)
        hit_dist = jnp.where(new_hit, dist, hit_dist)
        hit_code = jnp.where(new_hit, code, hit_code)
        hit_side = jnp.where(new_hit, jnp.where(use_x, 0, 1), hit_side)
        found = found | new_hit
    hit_dist = jnp.maximum(hit_dist, 1e-3)
    level = jnp.clip(_shade_level(hit_dist) + hit_side + hit_code % 4, 0, SHADE_LEVELS - 1)
    wall_index = (hit_code // 4) * SHADE_LEVELS + level  # [W]
    wall_half = focal * 0.5 / hit_dist  # [W]

    # --- floor and ceiling: per-row distance shading (static)
    row_offset = np.arange(height, dtype=np.float32) + 0.5 - height / 2  # [H]
    row_distance = focal * 0.5 / np.maximum(np.abs(row_offset), 1e-3)
    row_level = np.clip(np.floor(row_distance * 0.7), 0, SHADE_LEVELS - 1).astype(np.int32)
    row_index = np.where(row_offset > 0, FLOOR * SHADE_LEVELS, CEILING * SHADE_LEVELS) + row_level
    is_wall = jnp.abs(jnp.asarray(row_offset))[:, None] < wall_half[None, :]
    image = jnp.where(is_wall, wall_index[None, :], jnp.asarray(row_index)[:, None])  # [H, W]

    # --- sprites, far to near, depth-tested per column against the walls
    n_obj = state.obj_type.shape[0]
    centres = state.obj_pos[:, ::-1].astype(jnp.float32) + 0.5
    rel = centres - pos[None, :]
    depth = rel @ forward
    lateral = rel @ right
    lying = jnp.arange(n_obj) != state.carrying
    depth = jnp.where(lying, depth, -1.0)
    order = jnp.argsort(-depth)
    columns = jnp.asarray(np.arange(width, dtype=np.float32) + 0.5)
    rows = jnp.asarray(np.arange(height, dtype=np.float32) + 0.5)
    sizes = jnp.asarray(SPRITE_SIZE, jnp.float32)
    exponents = jnp.asarray(SPRITE_EXPONENT, jnp.int32)
    for k in range(n_obj):
        i = order[k]
        d = depth[i]
        visible = d > 0.2
        d_safe = jnp.maximum(d, 0.2)
        obj_type = state.obj_type[i]
        half = focal * sizes[obj_type] * 0.5 / d_safe
        centre_x = width / 2 + focal * lateral[i] / d_safe
        centre_y = height / 2 + focal * 0.5 / d_safe - half  # standing on the floor
        u = jnp.abs(columns - centre_x) / half
        v = jnp.abs(rows - centre_y) / half
        p = exponents[obj_type]
        u2, v2 = u * u, v * v
        u_term = jnp.where(p == 1, u, jnp.where(p == 2, u2, (u2 * u2) ** 2))
        v_term = jnp.where(p == 1, v, jnp.where(p == 2, v2, (v2 * v2) ** 2))
        u_term = jnp.where(visible & (d < hit_dist) & (u < 1.0), u_term, 2.0)
        index = state.obj_colour[i] * SHADE_LEVELS + _shade_level(d_safe)
        image = jnp.where(u_term[None, :] + v_term[:, None] < 1.0, index, image)

    # --- the held object, as a small block at the bottom centre of the view
    held = state.carrying >= 0
    icon = np.zeros((height, width), bool)
    icon[height - max(height // 8, 1):, width // 2 - max(width // 16, 1): width // 2 + max(width // 16, 1)] = True
    held_index = state.obj_colour[jnp.maximum(state.carrying, 0)] * SHADE_LEVELS
    image = jnp.where(jnp.asarray(icon) & held, held_index, image)
    return jnp.take(jnp.asarray(PALETTE), image, axis=0)


def render_topdown(state: EnvState, cell_px: int = 8) -> UInt8[Array, "h w 3"]:
    """A top-down map (walls, doors, objects, the agent and its heading) for videos and debugging."""
    grid_rows, grid_cols = state.wall.shape
    h, w = grid_rows * cell_px, grid_cols * cell_px
    y = (np.arange(h, dtype=np.float32) + 0.5) / cell_px
    x = (np.arange(w, dtype=np.float32) + 0.5) / cell_px
    yy, xx = np.meshgrid(y, x, indexing="ij")
    row = np.floor(yy).astype(np.int32)
    col = np.floor(xx).astype(np.int32)
    local_u = jnp.asarray(np.abs(xx - col - 0.5) * 2.0)  # [0, 1] from the cell centre
    local_v = jnp.asarray(np.abs(yy - row - 0.5) * 2.0)

    doors = door_state_grid(state)[row, col]
    door_colour = state.door_colour[jnp.maximum(state.door_id, 0)][row, col]
    colour_index = jnp.where(state.wall[row, col], WALL, FLOOR)
    door_frame = (local_u > 0.8) | (local_v > 0.8)
    colour_index = jnp.where((doors > 0) | ((doors == 0) & door_frame), door_colour, colour_index)
    level = jnp.where(doors == DOOR_LOCKED, 4, 0)

    occupied = object_grid(state)[row, col]
    obj_at = (
        jnp.full(state.wall.shape, 0, jnp.int32)
        .at[state.obj_pos[:, 0], state.obj_pos[:, 1]]
        .set(jnp.arange(state.obj_type.shape[0], dtype=jnp.int32), mode="drop")
    )[row, col]
    obj_type = state.obj_type[obj_at]
    shape = jnp.where(
        obj_type == 0,
        local_u**2 + local_v**2 < 0.5,
        jnp.where(obj_type == 1, (local_u < 0.7) & (local_v < 0.7), local_u + local_v < 0.8),
    )
    colour_index = jnp.where(occupied & shape, state.obj_colour[obj_at], colour_index)
    image = jnp.take(jnp.asarray(PALETTE), colour_index * SHADE_LEVELS + level, axis=0)

    forward, _ = heading_vectors(state.agent_dir)
    px, py = jnp.asarray(xx), jnp.asarray(yy)
    body = (px - state.agent_pos[0]) ** 2 + (py - state.agent_pos[1]) ** 2 < 0.3**2
    nose_at = state.agent_pos + 0.3 * forward
    nose = (px - nose_at[0]) ** 2 + (py - nose_at[1]) ** 2 < 0.12**2
    image = jnp.where(body[..., None], jnp.array([255, 255, 255], jnp.uint8), image)
    return jnp.where(nose[..., None], jnp.array([0, 0, 0], jnp.uint8), image)
