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
# The palette as little-endian 0x00BBGGRR words: the image is composited as one 32-bit plane (vectorises
# well) and reinterpreted as RGB bytes at the end.
PACKED_PALETTE = (
    PALETTE[:, 0].astype(np.uint32)
    | (PALETTE[:, 1].astype(np.uint32) << 8)
    | (PALETTE[:, 2].astype(np.uint32) << 16)
)


def _shade_level(distance: Float32[Array, "*s"]) -> jax.Array:
    return jnp.clip(jnp.floor(distance * 0.7), 0, SHADE_LEVELS - 1).astype(jnp.int32)


def render_first_person(state: EnvState, height: int, width: int) -> UInt8[Array, "{height} {width} 3"]:
    """The agent's view as RGB uint8 [height, width, 3]."""
    grid_rows, grid_cols = state.wall.shape
    if grid_cols > 31:
        raise ValueError(f"grids wider than 31 cells are not supported by the renderer, got {grid_cols}")
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

    # --- walls: DDA per column with a fixed step count. Solidity is looked up in per-row bit masks with
    # selects instead of a gather per step (batched gathers are slow on CPU); one gather per ray at the end.
    solid = cell_base >= 0
    row_bits = jnp.sum(solid.astype(jnp.int32) << jnp.arange(grid_cols, dtype=jnp.int32)[None, :], axis=1)
    cam_x = (2.0 * (np.arange(width, dtype=np.float32) + 0.5) / width - 1.0) * tan_half
    ray_x = forward[0] + jnp.asarray(cam_x) * right[0]  # [W]
    ray_y = forward[1] + jnp.asarray(cam_x) * right[1]
    delta_x = jnp.abs(1.0 / jnp.where(jnp.abs(ray_x) < 1e-6, 1e-6, ray_x))
    delta_y = jnp.abs(1.0 / jnp.where(jnp.abs(ray_y) < 1e-6, 1e-6, ray_y))
    step_x = jnp.where(ray_x < 0, -1, 1).astype(jnp.int32)
    step_y = jnp.where(ray_y < 0, -1, 1).astype(jnp.int32)
    floor_x, floor_y = jnp.floor(pos[0]), jnp.floor(pos[1])
    side_x = jnp.where(ray_x < 0, pos[0] - floor_x, floor_x + 1.0 - pos[0]) * delta_x
    side_y = jnp.where(ray_y < 0, pos[1] - floor_y, floor_y + 1.0 - pos[1]) * delta_y
    col = jnp.broadcast_to(floor_x.astype(jnp.int32), (width,))
    row = jnp.broadcast_to(floor_y.astype(jnp.int32), (width,))
    hit_dist = jnp.full((width,), 1e3, jnp.float32)
    zeros = jnp.zeros((width,), jnp.int32)
    found = jnp.zeros((width,), bool)

    # A real loop (not unrolled): its outputs are materialised, so XLA cannot fuse the whole ray march
    # into every pixel's computation (which made rendering ~50x slower).
    def march(_, carry):
        col, row, side_x, side_y, hit_dist, hit_col, hit_row, hit_side, found = carry
        use_x = side_x < side_y
        dist = jnp.minimum(side_x, side_y)
        col = jnp.where(use_x, col + step_x, col)
        row = jnp.where(use_x, row, row + step_y)
        side_x = jnp.where(use_x, side_x + delta_x, side_x)
        side_y = jnp.where(use_x, side_y, side_y + delta_y)
        bits = jnp.zeros((width,), jnp.int32)
        for r in range(grid_rows):
            bits = jnp.where(row == r, row_bits[r], bits)
        inside = (col >= 0) & (col < grid_cols) & (row >= 0) & (row < grid_rows)
        is_solid = ~inside | (((bits >> jnp.clip(col, 0, grid_cols - 1)) & 1) == 1)
        new_hit = ~found & is_solid
        hit_dist = jnp.where(new_hit, dist, hit_dist)
        hit_col = jnp.where(new_hit, col, hit_col)
        hit_row = jnp.where(new_hit, row, hit_row)
        hit_side = jnp.where(new_hit, jnp.where(use_x, 0, 1), hit_side)
        return col, row, side_x, side_y, hit_dist, hit_col, hit_row, hit_side, found | new_hit

    carry = (col, row, side_x, side_y, hit_dist, col, row, zeros, found)
    carry = jax.lax.fori_loop(0, grid_rows + grid_cols, march, carry)
    _, _, _, _, hit_dist, hit_col, hit_row, hit_side, _ = carry
    hit_inside = (hit_col >= 0) & (hit_col < grid_cols) & (hit_row >= 0) & (hit_row < grid_rows)
    flat = jnp.clip(hit_row, 0, grid_rows - 1) * grid_cols + jnp.clip(hit_col, 0, grid_cols - 1)
    hit_code = jnp.where(hit_inside, cell_code[flat], WALL * 4)
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
    # Colours are looked up per column / per sprite (small gathers) and composited with selects on RGB:
    # a per-pixel palette gather does not vectorise on CPU.
    palette = jnp.asarray(PACKED_PALETTE)
    wall_rgb = palette[wall_index]  # [W]
    image = jnp.where(is_wall, wall_rgb[None, :], jnp.asarray(PACKED_PALETTE[row_index])[:, None])  # [H, W]

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
    # Per-sprite column and row terms for all objects at once, [K, W] and [K, H].
    d = depth[order]
    visible = d > 0.2
    d_safe = jnp.maximum(d, 0.2)
    obj_type = state.obj_type[order]
    half = focal * jnp.asarray(SPRITE_SIZE, jnp.float32)[obj_type] * 0.5 / d_safe
    centre_x = width / 2 + focal * lateral[order] / d_safe
    centre_y = height / 2 + focal * 0.5 / d_safe - half  # standing on the floor
    u = jnp.abs(columns[None, :] - centre_x[:, None]) / half[:, None]
    v = jnp.abs(rows[None, :] - centre_y[:, None]) / half[:, None]
    p = jnp.asarray(SPRITE_EXPONENT, jnp.int32)[obj_type][:, None]
    u2, v2 = u * u, v * v
    u_term = jnp.where(p == 1, u, jnp.where(p == 2, u2, (u2 * u2) ** 2))
    v_term = jnp.where(p == 1, v, jnp.where(p == 2, v2, (v2 * v2) ** 2))
    u_term = jnp.where(visible[:, None] & (d[:, None] < hit_dist[None, :]) & (u < 1.0), u_term, 2.0)
    sprite_rgb = palette[state.obj_colour[order] * SHADE_LEVELS + _shade_level(d_safe)]  # [K]
    # Materialise the small per-sprite tables so they are not recomputed for every pixel.
    u_term, v_term, sprite_rgb = jax.lax.optimization_barrier((u_term, v_term, sprite_rgb))
    for k in range(n_obj):  # fixed back-to-front order: nearer sprites overwrite farther ones
        inside = u_term[k][None, :] + v_term[k][:, None] < 1.0
        image = jnp.where(inside, sprite_rgb[k], image)

    # --- the held object, as a small block at the bottom centre of the view
    held = state.carrying >= 0
    icon = np.zeros((height, width), bool)
    icon[
        height - max(height // 8, 1) :, width // 2 - max(width // 16, 1) : width // 2 + max(width // 16, 1)
    ] = True
    held_index = state.obj_colour[jnp.maximum(state.carrying, 0)] * SHADE_LEVELS
    image = jnp.where(jnp.asarray(icon) & held, palette[held_index], image)
    image = jax.lax.optimization_barrier(image)
    return jax.lax.bitcast_convert_type(image, jnp.uint8)[..., :3]


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
