"""First-person and top-down rendering of the built-in world, in pure JAX (works under jit and vmap).

Colours, wall pattern, sprite sizes and the camera (field of view, eye height) are those of the world's
game (`sima2.envs.world.games`). First person: walls and closed doors are ray-cast, one ray per column (grid
traversal in closed form: all grid crossings tested at once), floor and ceiling are shaded by distance, and
objects are billboard sprites composited in a fixed back-to-front order (sorted by depth once) with a
per-column depth test against the walls. The image is composited as packed 32-bit colours with selects
(colours are looked up per column and per sprite, never per pixel) and reinterpreted as RGB bytes at the
end, which keeps it cheap on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float32, Int32, UInt8

from sima2.envs.world import (
    DOOR_LOCKED,
    DOOR_OPEN,
    EnvState,
    door_state_grid,
    heading_vectors,
    object_grid,
    precise_dot,
    row_masks,
)
from sima2.envs.world.games import (
    GAME_BOX_EXPONENT,
    GAME_EYE_HEIGHT,
    GAME_FIELD_OF_VIEW,
    GAME_SPRITE_SCALE,
    GAME_WALL_PATTERN,
    GAMES,
    Game,
)

FIELD_OF_VIEW = math.radians(GAMES[0].field_of_view_degrees)  # the classic game's camera
SHADE_LEVELS = 8
# Base colours: the six object colours (BabyAI palette), then wall, floor, ceiling, then the colours of up to
# four agents of a team world (`sima2.envs.team`: their bodies, and the doors only that agent opens) and of
# a floor switch.
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
        [255, 140, 0],  # agent 0: orange
        [0, 210, 210],  # agent 1: cyan
        [255, 105, 180],  # agent 2: pink
        [120, 80, 40],  # agent 3: brown
        [245, 245, 245],  # switch: white
    ],
    np.float32,
)
WALL, FLOOR, CEILING = 6, 7, 8
AGENT_COLOURS = (9, 10, 11, 12)
SWITCH_COLOUR = 13
# Sprite kinds beyond the world's object types (ball, box, key): a team world's other agents and its floor
# switch (drawn only, never objects of the world).
AGENT_SPRITE, SWITCH_SPRITE = 3, 4
SPRITE_SIZE = (0.7, 0.6, 0.55, 0.95, 0.2)  # ball, box, key, agent, switch: height in cells
# Shape exponent p of |u|^p + |v|^p < 1: ball = disc, box = (near) square, key = diamond, agent = rounded
# square, switch = square.
SPRITE_EXPONENT = (2, 8, 1, 4, 8)


def _palette(base: np.ndarray) -> np.ndarray:
    shade = 1.0 - 0.085 * np.arange(SHADE_LEVELS, dtype=np.float32)
    colours = base[:, None, :] * shade[None, :, None]
    return np.clip(colours, 0, 255).astype(np.uint8).reshape(-1, 3)


def _game_colours(game: Game) -> np.ndarray:
    colours = BASE_COLOURS.copy()
    colours[:WALL] *= game.object_brightness
    colours[WALL], colours[FLOOR], colours[CEILING] = game.wall, game.floor, game.ceiling
    return colours


# One palette per game ([G, colours * SHADE_LEVELS, 3]).
PALETTES = np.stack([_palette(_game_colours(game)) for game in GAMES])
# The palettes as little-endian 0x00BBGGRR words: the image is composited as one 32-bit plane (vectorises
# well) and reinterpreted as RGB bytes at the end.
PACKED_PALETTES = (
    PALETTES[..., 0].astype(np.uint32)
    | (PALETTES[..., 1].astype(np.uint32) << 8)
    | (PALETTES[..., 2].astype(np.uint32) << 16)
)


def _shade_level(distance: Float32[Array, "*s"]) -> jax.Array:
    return jnp.clip(jnp.floor(distance * 0.7), 0, SHADE_LEVELS - 1).astype(jnp.int32)


def _cast_rays(
    state: EnvState, ray: tuple[Float32[Array, " W"], Float32[Array, " W"]]
) -> tuple[Float32[Array, " W"], Int32[Array, " W"], Int32[Array, " W"], Int32[Array, " W"]]:
    """The first wall or closed door along each ray (x, y): (distance, row, col, side: 0 = x, 1 = y).

    Grid traversal (DDA) in closed form: the k-th grid line a ray crosses along one axis is at distance
    first + k * delta and enters a known cell, so all crossings of all rays are tested at once and the
    first opaque one is a min-reduction; no sequential loop, whose carries XLA would have to materialise
    at every step. Opacity comes from per-column and per-row bit masks gathered once per world, not per
    ray. Outside the grid counts as opaque; a tie goes to the y crossing, as in the stepping DDA.
    """
    grid_rows, grid_cols = state.wall.shape
    pos = state.agent_pos
    opaque = state.wall | (door_state_grid(state) > DOOR_OPEN)
    bits = (row_masks(opaque.T), row_masks(opaque))  # per axis: each grid line's cells, over the other axis
    cell = jnp.floor(pos).astype(jnp.int32)  # (col, row) of the agent
    size = (grid_cols, grid_rows)

    def first_crossing(axis: int) -> tuple[Float32[Array, " W"], Int32[Array, " W"]]:
        other = 1 - axis
        lines = size[axis]
        k = jnp.arange(lines, dtype=jnp.int32)
        entered = jnp.stack([cell[axis] + k + 1, cell[axis] - k - 1])  # [2, K]: rays going + / -
        in_grid = (entered >= 0) & (entered < lines)
        masks = jnp.where(in_grid, bits[axis][jnp.clip(entered, 0, lines - 1)], -1)
        direction = ray[axis]
        delta = jnp.abs(1.0 / jnp.where(jnp.abs(direction) < 1e-6, 1e-6, direction))
        here = pos[axis]
        first = jnp.where(direction < 0, here - jnp.floor(here), jnp.floor(here) + 1.0 - here) * delta
        distance = first[:, None] + k.astype(jnp.float32)[None, :] * delta[:, None]  # [W, K]
        across = jnp.floor(pos[other] + ray[other][:, None] * distance).astype(jnp.int32)
        mask = jnp.where(direction[:, None] < 0, masks[1][None, :], masks[0][None, :])
        blocked = (across < 0) | (across >= size[other]) | (((mask >> jnp.clip(across, 0, 31)) & 1) == 1)
        index = jnp.min(jnp.where(blocked, k[None, :], lines), axis=1)
        return first + index.astype(jnp.float32) * delta, index

    (dist_x, index_x), (dist_y, index_y) = first_crossing(0), first_crossing(1)
    use_x = dist_x < dist_y
    step_x, step_y = jnp.where(ray[0] < 0, -1, 1), jnp.where(ray[1] < 0, -1, 1)
    floor_at = lambda axis, distance: jnp.floor(pos[axis] + ray[axis] * distance).astype(jnp.int32)  # noqa: E731
    col = jnp.where(use_x, cell[0] + step_x * (index_x + 1), floor_at(0, dist_y))
    row = jnp.where(use_x, floor_at(1, dist_x), cell[1] + step_y * (index_y + 1))
    return jnp.minimum(dist_x, dist_y), row, col, jnp.where(use_x, 0, 1)


def render_first_person(
    state: EnvState, height: int, width: int, sprite_centres: Float32[Array, "K 2"] | None = None
) -> UInt8[Array, "{height} {width} 3"]:
    """The agent's view as RGB uint8 [height, width, 3], in the colours and camera of the world's game.
    `sprite_centres`: the (x, y) of each object's sprite, for sprites that stand off their cell's centre (a
    team world's other agents); by default the centres of the objects' cells."""
    tan_half = jnp.tan(jnp.asarray(GAME_FIELD_OF_VIEW)[state.game] / 2)
    focal = (width / 2) / tan_half
    eye = jnp.asarray(GAME_EYE_HEIGHT)[state.game]  # camera height, in wall heights
    forward, right = heading_vectors(state.agent_dir)
    pos = state.agent_pos

    # --- walls and closed doors, one ray per column
    cam_x = jnp.asarray(2.0 * (np.arange(width, dtype=np.float32) + 0.5) / width - 1.0) * tan_half
    # forward + cam_x * right as a (tiny) matrix product: XLA materialises a dot's result, where element-wise
    # ray directions would be fused into every per-crossing and per-pixel loop and the heading's sine and
    # cosine recomputed for each element.
    basis = jnp.stack([forward, right], axis=1)  # [(x, y), (forward, right)]
    ray_xy = precise_dot(basis, jnp.stack([jnp.ones_like(cam_x), cam_x]))  # [2, W]
    rays = (ray_xy[0], ray_xy[1])
    hit_dist, hit_row, hit_col, hit_side = _cast_rays(state, rays)
    # The cell hit is a wall unless it is a closed door (its colour, darker when locked): comparing with
    # the few doors is cheaper than a per-ray gather on CPU.
    closed = state.door_valid & (state.door_state > DOOR_OPEN)
    door_code = state.door_colour * 4 + jnp.where(state.door_state == DOOR_LOCKED, 3, 0)
    hit_code = jnp.full((width,), WALL * 4, jnp.int32)  # base colour * 4 + extra darkness
    for d in range(state.door_pos.shape[0]):
        at_door = closed[d] & (hit_row == state.door_pos[d, 0]) & (hit_col == state.door_pos[d, 1])
        hit_code = jnp.where(at_door, door_code[d], hit_code)
    hit_dist = jnp.maximum(hit_dist, 1e-3)
    bricks = jnp.asarray(GAME_WALL_PATTERN)[state.game] * ((hit_row + hit_col) % 2) * (hit_code // 4 == WALL)
    level = jnp.clip(_shade_level(hit_dist) + hit_side + hit_code % 4 + bricks, 0, SHADE_LEVELS - 1)
    wall_index = (hit_code // 4) * SHADE_LEVELS + level  # [W]
    wall_below = focal * eye / hit_dist  # [W] rows of wall below the horizon
    wall_above = focal * (1.0 - eye) / hit_dist

    # --- floor and ceiling: per-row distance shading
    row_offset = jnp.asarray(np.arange(height, dtype=np.float32) + 0.5 - height / 2)  # [H], > 0 below
    below = row_offset > 0
    row_distance = focal * jnp.where(below, eye, 1.0 - eye) / jnp.maximum(jnp.abs(row_offset), 1e-3)
    row_level = _shade_level(row_distance)
    row_index = jnp.where(below, FLOOR * SHADE_LEVELS, CEILING * SHADE_LEVELS) + row_level
    is_wall = (row_offset[:, None] < wall_below[None, :]) & (-row_offset[:, None] < wall_above[None, :])
    # Colours are looked up per column / per sprite (small gathers) and composited with selects on RGB:
    # a per-pixel palette gather does not vectorise on CPU.
    palette = jnp.asarray(PACKED_PALETTES)[state.game]
    wall_rgb = palette[wall_index]  # [W]
    image = jnp.where(is_wall, wall_rgb[None, :], palette[row_index][:, None])  # [H, W]

    # --- sprites, far to near, depth-tested per column against the walls
    n_obj = state.obj_type.shape[0]
    centres = state.obj_pos[:, ::-1].astype(jnp.float32) + 0.5 if sprite_centres is None else sprite_centres
    rel = centres - pos[None, :]
    depth = precise_dot(rel, forward)
    lateral = precise_dot(rel, right)
    lying = (jnp.arange(n_obj) != state.carrying) & state.obj_valid
    depth = jnp.where(lying, depth, -1.0)
    # Back-to-front order by ranking (a few objects: comparisons are cheaper than a sort call on CPU); equal
    # depths keep the lower index first, as a stable argsort would.
    index = jnp.arange(n_obj)
    drawn_before = (depth[None, :] > depth[:, None]) | (
        (depth[None, :] == depth[:, None]) & (index[None, :] < index[:, None])
    )  # [i, j]: object j is drawn before object i
    rank = drawn_before.sum(axis=1)
    order = jnp.sum(jnp.where(rank[None, :] == index[:, None], index[None, :], 0), axis=1)  # rank -> object
    columns = jnp.asarray(np.arange(width, dtype=np.float32) + 0.5)
    rows = jnp.asarray(np.arange(height, dtype=np.float32) + 0.5)
    # Per-sprite column and row terms for all objects at once, [K, W] and [K, H].
    d = depth[order]
    visible = d > 0.2
    d_safe = jnp.maximum(d, 0.2)
    obj_type = state.obj_type[order]
    sprite_size = jnp.asarray(SPRITE_SIZE, jnp.float32)[obj_type] * jnp.asarray(GAME_SPRITE_SCALE)[state.game]
    half = focal * sprite_size * 0.5 / d_safe
    centre_x = width / 2 + focal * lateral[order] / d_safe
    centre_y = height / 2 + focal * eye / d_safe - half  # standing on the floor
    exponent = jnp.asarray(SPRITE_EXPONENT, jnp.int32)[obj_type]
    exponent = jnp.where(obj_type == 1, jnp.asarray(GAME_BOX_EXPONENT)[state.game], exponent)

    def sprite_terms(sprite: tuple[Array, ...]) -> tuple[Float32[Array, " W"], Float32[Array, " H"]]:
        # |u|^p per column (2 where the sprite is hidden) and |v|^p per row: inside where u + v < 1.
        centre_x, centre_y, half, exponent, visible, depth = sprite
        u = jnp.abs(columns - centre_x) / half
        v = jnp.abs(rows - centre_y) / half
        u2, v2 = u * u, v * v
        u4, v4 = u2 * u2, v2 * v2
        u_term = jnp.where(exponent == 1, u, jnp.where(exponent == 2, u2, jnp.where(exponent == 4, u4, u4 * u4)))
        v_term = jnp.where(exponent == 1, v, jnp.where(exponent == 2, v2, jnp.where(exponent == 4, v4, v4 * v4)))
        return jnp.where(visible & (depth < hit_dist) & (u < 1.0), u_term, 2.0), v_term

    # lax.map (a loop) materialises these small per-sprite tables: XLA would otherwise fuse their
    # computation into the per-pixel compositing and redo it for every pixel.
    u_term, v_term = jax.lax.map(sprite_terms, (centre_x, centre_y, half, exponent, visible, d))
    sprite_rgb = palette[state.obj_colour[order] * SHADE_LEVELS + _shade_level(d_safe)]  # [K]
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
    image = jnp.take(jnp.asarray(PALETTES)[state.game], colour_index * SHADE_LEVELS + level, axis=0)

    forward, _ = heading_vectors(state.agent_dir)
    px, py = jnp.asarray(xx), jnp.asarray(yy)
    body = (px - state.agent_pos[0]) ** 2 + (py - state.agent_pos[1]) ** 2 < 0.3**2
    nose_at = state.agent_pos + 0.3 * forward
    nose = (px - nose_at[0]) ** 2 + (py - nose_at[1]) ** 2 < 0.12**2
    image = jnp.where(body[..., None], jnp.array([255, 255, 255], jnp.uint8), image)
    return jnp.where(nose[..., None], jnp.array([0, 0, 0], jnp.uint8), image)
