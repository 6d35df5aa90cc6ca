"""World state, procedural generation, physics and task logic of the built-in 3D world (pure JAX).

Coordinates: the world is a grid of unit cells, `grid[row, col]`. The agent has a continuous position
(x, y) = (col, row) in cell units and a heading angle (0 = +x, increasing clockwise on the top-down map
because y points down). Objects and doors sit at cell centres and block their cell.

Everything works on ONE world; callers `jax.vmap`. There is no Python control flow on traced values.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float32, Int32, PRNGKeyArray, UInt32

from sima2.envs import vocabulary as voc
from sima2.envs.levels import LevelConfig

# --- time and actions ------------------------------------------------------------------------------------
TICK_HZ = 60
KEY_NAMES = ("noop", "forward", "back", "strafe_left", "strafe_right", "interact", "drop")
NOOP, FORWARD, BACK, STRAFE_LEFT, STRAFE_RIGHT, INTERACT, DROP = range(len(KEY_NAMES))
# Mouse-look: total yaw change over the held action, in degrees (positive turns right).
LOOK_DEGREES = (-90.0, -45.0, -15.0, 0.0, 15.0, 45.0, 90.0)
LOOK_CENTRE = LOOK_DEGREES.index(0.0)
# How long an action is held, in simulation ticks (0.1 s, 0.25 s, 0.5 s at 60 Hz).
DURATION_TICKS = (6, 15, 30)
ACTION_NVEC = (len(KEY_NAMES), len(LOOK_DEGREES), len(DURATION_TICKS))

MOVE_SPEED = 4.0  # cells per second
AGENT_RADIUS = 0.25
REACH_DISTANCE = 1.5  # interaction range (cell units, centre to centre)
REACH_ANGLE = math.radians(35.0)
PROPRIO_SIZE = 16
MAX_PLAN = 8  # subgoals in the expert plan
NUM_STAGES = 2  # clauses of an instruction ("X, then Y")

# Splits: layout seeds, colour-object pairs and paraphrase templates are partitioned by construction.
SPLITS = ("train", "heldout_layouts", "heldout_pairs", "heldout_paraphrases")
TRAIN, HELDOUT_LAYOUTS, HELDOUT_PAIRS, HELDOUT_PARAPHRASES = range(len(SPLITS))
NUM_PAIRS = 3 * len(voc.COLOURS)  # (ball | box | key) x colour
# Held-out colour-object pairs: green ball, purple box, grey key.
HELDOUT_PAIR_MASK = np.array(
    [
        (pair % len(voc.COLOURS)) == (2 * (pair // len(voc.COLOURS)) + 1) % len(voc.COLOURS)
        for pair in range(NUM_PAIRS)
    ]
)
LAYOUT_SEED_SPACE = 1 << 24
_LAYOUT_ROOT = 0x5EED01A7  # salt of the layout streams

# Door states.
DOOR_OPEN, DOOR_CLOSED, DOOR_LOCKED = 0, 1, 2


class EnvParams(eqx.Module):
    """Dynamic environment parameters (can change without recompiling)."""

    max_steps: Int32[Array, ""]
    split: Int32[Array, ""]


class EnvState(eqx.Module):
    """Full state of one world. Entities: objects 0..N-1, then doors N..N+D-1."""

    wall: Bool[Array, "GH GW"]
    door_id: Int32[Array, "GH GW"]  # index of the door in each cell, -1 where none
    door_pos: Int32[Array, "D 2"]  # (row, col)
    door_colour: Int32[Array, " D"]
    door_state: Int32[Array, " D"]
    door_valid: Bool[Array, " D"]
    obj_pos: Int32[Array, "N 2"]  # (row, col)
    obj_type: Int32[Array, " N"]
    obj_colour: Int32[Array, " N"]
    carrying: Int32[Array, ""]  # index of the carried object, -1 when empty-handed
    agent_pos: Float32[Array, "2"]  # (x, y)
    agent_dir: Float32[Array, ""]
    start_pos: Float32[Array, "2"]
    start_dir: Float32[Array, ""]
    velocity: Float32[Array, "2"]  # body frame (forward, right), cells/s
    yaw_rate: Float32[Array, ""]  # rad/s over the last action
    contact: Float32[Array, ""]  # fraction of the last action's ticks spent pushing against something
    stage_kind: Int32[Array, " T"]
    stage_a: Int32[Array, " T"]  # entity index
    stage_b: Int32[Array, " T"]
    num_stages: Int32[Array, ""]
    stage: Int32[Array, ""]
    plan_kind: Int32[Array, " S"]
    plan_a: Int32[Array, " S"]
    plan_b: Int32[Array, " S"]
    plan_len: Int32[Array, ""]
    stage_plan_offset: Int32[Array, " T"]
    entity_synonym: Int32[Array, " E"]
    entity_location: Int32[Array, " E"]
    instruction: Int32[Array, " L"]
    time: Int32[Array, ""]
    layout_seed: Int32[Array, ""]  # seeds divisible by 5 are the held-out layouts
    episode_return: Float32[Array, ""]
    # Navigation efficiency: cells travelled since reset, and the sum of each subgoal's shortest path (BFS
    # cells) from where the agent stood when that subgoal became current.
    path_length: Float32[Array, ""]
    optimal_path_length: Float32[Array, ""]


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
        grid = grid | (_cells_at(state.wall.shape, state.obj_pos[i]) & (state.carrying != i))
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
    present = jnp.concatenate([jnp.arange(n_obj) != state.carrying, state.door_valid])
    reach = present & (distance <= REACH_DISTANCE) & in_front
    return reach, distance


def _concat_pieces(
    tokens: Int32[Array, "P W"], lengths: Int32[Array, " P"], out_len: int
) -> tuple[Int32[Array, " {out_len}"], Int32[Array, ""]]:
    """Concatenate variable-length token pieces into a padded sequence (no Python control flow)."""
    width = tokens.shape[1]
    offsets = jnp.cumsum(lengths) - lengths
    cols = jnp.arange(width)
    index = offsets[:, None] + cols[None, :]
    index = jnp.where(cols[None, :] < lengths[:, None], index, out_len)  # padding lands out of range
    out = jnp.zeros((out_len,), jnp.int32).at[index.reshape(-1)].set(tokens.reshape(-1), mode="drop")
    return out, jnp.minimum(jnp.sum(lengths), out_len)


def _noun_phrase(
    obj_type: Int32[Array, ""],
    colour: Int32[Array, ""],
    synonym: Int32[Array, ""],
    location: Int32[Array, ""],
) -> tuple[Int32[Array, " W"], Int32[Array, ""]]:
    tables = voc.token_tables()
    head = jnp.stack(
        [
            jnp.int32(tables.the_id),
            jnp.asarray(tables.colour_ids)[colour],
            jnp.asarray(tables.noun_ids)[obj_type, synonym],
        ]
    )
    pieces = jnp.zeros((2, voc.PIECE_WIDTH), jnp.int32)
    pieces = pieces.at[0, :3].set(head).at[1, :4].set(jnp.asarray(tables.location_tokens)[location])
    lengths = jnp.stack([jnp.int32(3), jnp.asarray(tables.location_length)[location]])
    return _concat_pieces(pieces, lengths, voc.PIECE_WIDTH)


def _fill_template(
    kinds: Int32[Array, " K"],
    seg_tokens: Int32[Array, "K W"],
    seg_lengths: Int32[Array, " K"],
    slot_a: tuple[Int32[Array, " W"], Int32[Array, ""]],
    slot_b: tuple[Int32[Array, " W"], Int32[Array, ""]],
    out_len: int,
) -> tuple[Int32[Array, " {out_len}"], Int32[Array, ""]]:
    a_tok = (
        jnp.zeros((voc.PIECE_WIDTH,), jnp.int32).at[: slot_a[0].shape[0]].set(slot_a[0][: voc.PIECE_WIDTH])
    )
    b_tok = (
        jnp.zeros((voc.PIECE_WIDTH,), jnp.int32).at[: slot_b[0].shape[0]].set(slot_b[0][: voc.PIECE_WIDTH])
    )
    tokens = jnp.where(
        (kinds == 1)[:, None], a_tok[None], jnp.where((kinds == 2)[:, None], b_tok[None], seg_tokens)
    )
    lengths = jnp.where(kinds == 1, slot_a[1], jnp.where(kinds == 2, slot_b[1], seg_lengths))
    return _concat_pieces(tokens, lengths, out_len)


def _mix32(x: UInt32[Array, "*s"]) -> UInt32[Array, "*s"]:
    """A 32-bit integer hash with full avalanche ("lowbias32", C. Wellons)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class _Draws:
    """Counter-based random draws from one 32-bit seed, for world generation.

    Word i of the n-th stream is mix(mix(seed ^ n * golden) + i): elementwise integer arithmetic that XLA
    fuses, instead of one threefry call per draw (each a loop on CPU, and generation makes dozens). Each
    method takes the next stream, so the draws of a world depend only on the seed and the code's order.
    """

    def __init__(self, seed: UInt32[Array, ""]):
        self.seed = seed
        self.stream = 0

    def words(self, shape: tuple[int, ...] = ()) -> UInt32[Array, "..."]:
        self.stream += 1
        base = _mix32(self.seed ^ jnp.uint32((self.stream * 0x9E3779B9) & 0xFFFFFFFF))
        count = math.prod(shape)
        return _mix32(base + jnp.arange(count, dtype=jnp.uint32)).reshape(shape)

    def uniform(self, shape: tuple[int, ...] = ()) -> Float32[Array, "..."]:
        """Uniform in [0, 1) with 24 bits of resolution."""
        return (self.words(shape) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)

    def integers(self, low, high, shape: tuple[int, ...] = ()) -> Int32[Array, "..."]:
        """Uniform integers in [low, high) (bounds may be traced)."""
        count = jnp.asarray(high, jnp.int32) - low
        draw = jnp.floor(self.uniform(shape) * count.astype(jnp.float32)).astype(jnp.int32)
        return (low + jnp.minimum(draw, count - 1)).astype(jnp.int32)

    def choice(self, allowed: Bool[Array, "..."]) -> Int32[Array, ""]:
        """A uniformly random flat index among the True entries of `allowed` (which must have one)."""
        scores = jnp.where(allowed, (self.words(allowed.shape) >> 1).astype(jnp.int32), -1)
        return jnp.argmax(scores.reshape(-1)).astype(jnp.int32)

    def permutation(self, n: int) -> Int32[Array, " {n}"]:
        return jnp.argsort(self.words((n,))).astype(jnp.int32)


def _pick_cell(draws: _Draws, allowed: Bool[Array, "GH GW"]) -> Int32[Array, "2"]:
    """A uniformly random allowed cell (row, col); allowed must be non-empty."""
    flat = draws.choice(allowed)
    return jnp.stack([flat // allowed.shape[1], flat % allowed.shape[1]]).astype(jnp.int32)


# --- generation ------------------------------------------------------------------------------------------
def _static_walls(level: LevelConfig) -> np.ndarray:
    rows, cols = level.grid_shape
    period = level.room_size + 1
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (r % period == 0) | (c % period == 0)


def _door_slots(level: LevelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate door position: base cell (row, col) and the unit step along its wall segment."""
    period = level.room_size + 1
    rows, cols = level.rooms
    base, step = [], []
    for i in range(rows):  # doors between horizontally adjacent rooms
        for j in range(cols - 1):
            base.append((i * period, (j + 1) * period))
            step.append((1, 0))
    for i in range(rows - 1):  # doors between vertically adjacent rooms
        for j in range(cols):
            base.append(((i + 1) * period, j * period))
            step.append((0, 1))
    grid_rows, grid_cols = level.grid_shape
    # Outer sides: top, bottom, left, right.
    outer_base = [(0, 0), (grid_rows - 1, 0), (0, 0), (0, grid_cols - 1)]
    outer_step = [(0, 1), (0, 1), (1, 0), (1, 0)]
    return np.array(base + outer_base, np.int32).reshape(-1, 2), np.array(
        step + outer_step, np.int32
    ).reshape(-1, 2)


def generate(key: PRNGKeyArray, level: LevelConfig, split: Int32[Array, ""]) -> EnvState:
    """Generate a fresh world and task for `level` from a PRNG key (cheap: no search, no rejection)."""
    grid_rows, grid_cols = level.grid_shape
    size = level.room_size
    period = size + 1
    n_obj = level.num_objects
    n_door = max(level.num_doors, 1)
    n_inner = level.num_inner_doors
    # One threefry call for the episode; every other draw comes from cheap counter-based streams: the
    # layout's seeded by the layout seed alone (so a seed is a layout), the task's by the episode.
    episode = _Draws(jax.random.bits(key, (), jnp.uint32))

    # Layout seeds: held-out layouts use seeds divisible by 5, all other splits the rest (disjoint).
    u = episode.integers(0, LAYOUT_SEED_SPACE // 5)
    residue = episode.integers(1, 5)
    layout_seed = jnp.where(split == HELDOUT_LAYOUTS, 5 * u, 5 * u + residue)
    layout = _Draws(_mix32(layout_seed.astype(jnp.uint32) ^ jnp.uint32(_LAYOUT_ROOT)))

    # Doors: one per wall between adjacent rooms, plus optional doors on the outer walls.
    slot_base, slot_step = _door_slots(level)
    sides = layout.permutation(4)[: level.num_outer_doors] + n_inner
    slot = jnp.concatenate([jnp.arange(n_inner), sides]).astype(jnp.int32)
    if level.num_doors == 0:
        slot = jnp.zeros((1,), jnp.int32)
    offsets = layout.integers(1, size + 1, (n_door,))
    door_pos = jnp.asarray(slot_base)[slot] + offsets[:, None] * jnp.asarray(slot_step)[slot]
    door_valid = jnp.arange(n_door) < level.num_doors
    door_pos = jnp.where(door_valid[:, None], door_pos, jnp.array([grid_rows, grid_cols]))  # dummy: off-grid
    wall = jnp.asarray(_static_walls(level)).at[door_pos[:, 0], door_pos[:, 1]].set(False, mode="drop")
    door_id = (
        jnp.full((grid_rows, grid_cols), -1, jnp.int32)
        .at[door_pos[:, 0], door_pos[:, 1]]
        .set(jnp.arange(n_door, dtype=jnp.int32), mode="drop")
    )

    # Objects on a lattice of every other interior cell: never adjacent, so they cannot wall anything off.
    rr, cc = jnp.meshgrid(jnp.arange(grid_rows), jnp.arange(grid_cols), indexing="ij")
    interior = ~jnp.asarray(_static_walls(level))
    parity = layout.integers(0, 2, (2,))
    lattice = (
        interior & (((rr % period) - 1 - parity[0]) % 2 == 0) & (((cc % period) - 1 - parity[1]) % 2 == 0)
    )
    is_door = door_id >= 0
    near_door = (
        jnp.roll(is_door, 1, 0)
        | jnp.roll(is_door, -1, 0)
        | jnp.roll(is_door, 1, 1)
        | jnp.roll(is_door, -1, 1)
    )
    room0 = (rr < period) & (cc < period)
    free_lattice = lattice & ~near_door
    taken = jnp.zeros((grid_rows, grid_cols), bool)
    cells = []
    for i in range(n_obj):
        allowed = free_lattice & ~taken
        if level.task == "unlock" and i == 0:
            allowed = allowed & room0  # the key is in the agent's room
        cell = _pick_cell(layout, allowed)
        taken = taken.at[cell[0], cell[1]].set(True)
        cells.append(cell)
    obj_pos = jnp.stack(cells)
    agent_allowed = interior & ~taken
    if level.task == "unlock":
        agent_allowed = agent_allowed & room0
    agent_cell = _pick_cell(layout, agent_allowed)
    agent_pos = agent_cell[::-1].astype(jnp.float32) + 0.5
    agent_dir = layout.integers(0, 4).astype(jnp.float32) * (math.pi / 2)

    # Task: object identities, door colours and states, the instruction.
    heldout_pair = jnp.asarray(HELDOUT_PAIR_MASK)
    pair_is_heldout_split = split == HELDOUT_PAIRS
    n_targets = 2 if level.task in ("putnext", "sequence") else 1
    used = jnp.zeros((NUM_PAIRS,), bool)
    pairs = []
    for i in range(n_obj):
        if i < n_targets:
            allowed = jnp.where(pair_is_heldout_split, heldout_pair, ~heldout_pair)
        else:
            allowed = jnp.where(pair_is_heldout_split, True, ~heldout_pair)
        if level.task == "unlock" and i == 0:
            allowed = allowed & (jnp.arange(NUM_PAIRS) // len(voc.COLOURS) == voc.KEY)
        allowed = allowed & ~used
        pair = episode.choice(allowed)
        used = used.at[pair].set(True)
        pairs.append(pair)
    pair_arr = jnp.stack(pairs)
    obj_type = pair_arr // len(voc.COLOURS)
    obj_colour = pair_arr % len(voc.COLOURS)
    door_colour = episode.permutation(len(voc.COLOURS))[:n_door]
    closed = episode.uniform((n_door,)) < level.door_closed_prob
    door_state = jnp.where(closed | (jnp.arange(n_door) >= n_inner), DOOR_CLOSED, DOOR_OPEN).astype(jnp.int32)
    if level.task == "unlock":
        door_colour = door_colour.at[0].set(obj_colour[0])
        door_state = door_state.at[0].set(DOOR_LOCKED)

    # Stages (instruction clauses): kinds and target entities.
    first_door = episode.integers(0, max(level.num_doors, 1))
    zero = jnp.int32(0)
    if level.task in ("goto", "pickup"):
        kinds = [jnp.int32(voc.GOTO if level.task == "goto" else voc.PICKUP), zero]
        targets_a, targets_b, num_stages = [zero, zero], [zero, zero], 1
    elif level.task == "open":
        kinds = [jnp.int32(voc.OPEN), zero]
        targets_a, targets_b, num_stages = [n_obj + first_door, zero], [zero, zero], 1
    elif level.task == "unlock":
        kinds = [jnp.int32(voc.OPEN), zero]
        targets_a, targets_b, num_stages = [jnp.int32(n_obj), zero], [zero, zero], 1
    elif level.task == "putnext":
        kinds = [jnp.int32(voc.PUTNEXT), zero]
        targets_a, targets_b, num_stages = [zero, zero], [jnp.int32(1), zero], 1
    else:  # sequence: (goto | open) then (goto | pickup | open)
        kind1 = jnp.where(episode.uniform() < 0.5, voc.OPEN, voc.GOTO).astype(jnp.int32)
        kind2 = jnp.array([voc.GOTO, voc.PICKUP, voc.OPEN], jnp.int32)[episode.integers(0, 3)]
        second_door = (first_door + 1 + episode.integers(0, level.num_doors - 1)) % level.num_doors
        a1 = jnp.where(kind1 == voc.OPEN, n_obj + first_door, 0)
        a2 = jnp.where(kind2 == voc.OPEN, n_obj + second_door, 1)
        kinds = [kind1, kind2]
        targets_a, targets_b, num_stages = [a1, a2], [zero, zero], 2
    stage_kind = jnp.stack(kinds).astype(jnp.int32)
    stage_a = jnp.stack(targets_a).astype(jnp.int32)
    stage_b = jnp.stack(targets_b).astype(jnp.int32)
    stage_valid = jnp.arange(NUM_STAGES) < num_stages
    # Doors that must be opened start closed (unless locked).
    opened_doors = jnp.where(stage_valid & (stage_kind == voc.OPEN), stage_a - n_obj, n_door)
    door_state = door_state.at[opened_doors].max(DOOR_CLOSED, mode="drop")

    # Noun synonyms and location phrases per entity.
    n_ent = n_obj + n_door
    synonym = (episode.uniform((n_ent,)) < 0.5).astype(jnp.int32)
    location = jnp.zeros((n_ent,), jnp.int32)
    if level.location_phrases:
        loc = 1 + episode.choice(location_phrases_holding(obj_pos[0], agent_pos, agent_dir))
        location = location.at[0].set(loc.astype(jnp.int32))

    state = EnvState(
        wall=wall,
        door_id=door_id,
        door_pos=door_pos.astype(jnp.int32),
        door_colour=door_colour,
        door_state=door_state,
        door_valid=door_valid,
        obj_pos=obj_pos,
        obj_type=obj_type,
        obj_colour=obj_colour,
        carrying=jnp.int32(-1),
        agent_pos=agent_pos,
        agent_dir=agent_dir,
        start_pos=agent_pos,
        start_dir=agent_dir,
        velocity=jnp.zeros((2,), jnp.float32),
        yaw_rate=jnp.float32(0.0),
        contact=jnp.float32(0.0),
        stage_kind=stage_kind,
        stage_a=stage_a,
        stage_b=stage_b,
        num_stages=jnp.int32(num_stages),
        stage=jnp.int32(0),
        plan_kind=jnp.zeros((MAX_PLAN,), jnp.int32),
        plan_a=jnp.zeros((MAX_PLAN,), jnp.int32),
        plan_b=jnp.zeros((MAX_PLAN,), jnp.int32),
        plan_len=jnp.int32(0),
        stage_plan_offset=jnp.zeros((NUM_STAGES,), jnp.int32),
        entity_synonym=synonym,
        entity_location=location,
        instruction=jnp.zeros((voc.MAX_INSTRUCTION_LENGTH,), jnp.int32),
        time=jnp.int32(0),
        layout_seed=layout_seed.astype(jnp.int32),
        episode_return=jnp.float32(0.0),
        path_length=jnp.float32(0.0),
        optimal_path_length=jnp.float32(0.0),
    )
    state = _with_plan(state)
    instruction = _instruction(state, split, episode)
    return eqx.tree_at(lambda s: s.instruction, state, instruction)


def _instruction(state: EnvState, split: Int32[Array, ""], draws: _Draws) -> Int32[Array, " L"]:
    """Assemble the instruction token ids from templates (training or held-out paraphrases)."""
    tables = voc.token_tables()
    heldout = split == HELDOUT_PARAPHRASES
    types, colours = entity_types(state), entity_colours(state)
    clauses = []
    for t in range(NUM_STAGES):
        kind = state.stage_kind[t]
        n_train = jnp.asarray(tables.clause_num_train)[kind]
        n_held = jnp.asarray(tables.clause_num_heldout)[kind]
        start = jnp.asarray(tables.clause_offset)[kind] + jnp.where(heldout, n_train, 0)
        row = draws.integers(start, start + jnp.where(heldout, n_held, n_train))
        a, b = state.stage_a[t], state.stage_b[t]
        np_a = _noun_phrase(types[a], colours[a], state.entity_synonym[a], state.entity_location[a])
        np_b = _noun_phrase(types[b], colours[b], state.entity_synonym[b], state.entity_location[b])
        clauses.append(
            _fill_template(
                jnp.asarray(tables.clause_segment_kind)[row],
                jnp.asarray(tables.clause_segment_tokens)[row],
                jnp.asarray(tables.clause_segment_length)[row],
                np_a,
                np_b,
                voc.PIECE_WIDTH,
            )
        )
    single, _ = _concat_pieces(clauses[0][0][None], clauses[0][1][None], voc.MAX_INSTRUCTION_LENGTH)
    start = jnp.where(heldout, tables.sequence_num_train, 0)
    count = jnp.where(heldout, tables.sequence_num_heldout, tables.sequence_num_train)
    row = draws.integers(jnp.int32(start), jnp.int32(start) + count)
    sequence, _ = _fill_template(
        jnp.asarray(tables.sequence_segment_kind)[row],
        jnp.asarray(tables.sequence_segment_tokens)[row],
        jnp.asarray(tables.sequence_segment_length)[row],
        clauses[0],
        clauses[1],
        voc.MAX_INSTRUCTION_LENGTH,
    )
    return jnp.where(state.num_stages > 1, sequence, single)


# Clause kinds each task family's instructions are built from: one tuple per clause (see `generate`).
TASK_CLAUSE_KINDS: dict[str, tuple[tuple[int, ...], ...]] = {
    "goto": ((voc.GOTO,),),
    "pickup": ((voc.PICKUP,),),
    "open": ((voc.OPEN,),),
    "unlock": ((voc.OPEN,),),
    "putnext": ((voc.PUTNEXT,),),
    "sequence": ((voc.OPEN, voc.GOTO), (voc.GOTO, voc.PICKUP, voc.OPEN)),
}


def max_instruction_words(level: LevelConfig) -> int:
    """The longest instruction (in word ids) the level's grammar can produce, over every split.

    Exact, from the template tables: an agent that only reads this many leading ids of
    `obs["instruction"]` (instructions are left-aligned, padded with 0) never loses a word.
    """
    tables = voc.token_tables()
    noun = 3 + (int(tables.location_length.max()) if level.location_phrases else 0)  # "the red ball" [+ location]

    def longest(kinds: Int32[np.ndarray, "R K"], lengths: Int32[np.ndarray, "R K"], slot: tuple[int, int]) -> int:
        words = np.where(kinds == 1, slot[0], np.where(kinds == 2, slot[1], lengths)).sum(axis=1)
        return int(words.max())

    def clause(kind: int) -> int:
        rows = slice(int(tables.clause_offset[kind]),
                     int(tables.clause_offset[kind] + tables.clause_num_train[kind] + tables.clause_num_heldout[kind]))
        return longest(tables.clause_segment_kind[rows], tables.clause_segment_length[rows], (noun, noun))

    clauses = [max(clause(kind) for kind in kinds) for kinds in TASK_CLAUSE_KINDS[level.task]]
    if len(clauses) == 1:
        words = clauses[0]
    else:
        words = longest(tables.sequence_segment_kind, tables.sequence_segment_length, (clauses[0], clauses[1]))
    return min(words, voc.MAX_INSTRUCTION_LENGTH)


# --- expert plan (subgoal list) --------------------------------------------------------------------------
SUBGOAL_GOTO, SUBGOAL_PICKUP, SUBGOAL_OPEN, SUBGOAL_PUT = range(4)


def key_for_door(state: EnvState, door_entity: Int32[Array, ""]) -> Int32[Array, ""]:
    """Index of the key object matching a door's colour (0 if none; only used when the door is locked)."""
    colour = entity_colours(state)[door_entity]
    match = (state.obj_type == voc.KEY) & (state.obj_colour == colour)
    return jnp.argmax(match).astype(jnp.int32)


def _stage_plan(
    state: EnvState, t: int
) -> tuple[Int32[Array, "4"], Int32[Array, "4"], Int32[Array, "4"], Int32[Array, ""]]:
    kind, a, b = state.stage_kind[t], state.stage_a[t], state.stage_b[t]
    n_obj = state.obj_type.shape[0]
    locked = (kind == voc.OPEN) & (state.door_state[jnp.clip(a - n_obj, 0)] == DOOR_LOCKED)
    key = key_for_door(state, a)
    g, p, o, u = SUBGOAL_GOTO, SUBGOAL_PICKUP, SUBGOAL_OPEN, SUBGOAL_PUT
    plans_kind = jnp.array([[g, 0, 0, 0], [g, p, 0, 0], [g, o, 0, 0], [g, p, g, u], [g, p, g, o]], jnp.int32)
    plans_len = jnp.array([1, 2, 2, 4, 4], jnp.int32)
    row = jnp.where(locked, 4, kind)
    plan_a = jnp.where(
        row == 4,
        jnp.stack([key, key, a, a]),
        jnp.where(row == 3, jnp.stack([a, a, b, a]), jnp.stack([a, a, a, a])),
    )
    plan_b = jnp.where(row == 3, jnp.stack([b, b, b, b]), jnp.stack([b, b, b, b]))
    length = jnp.where(t < state.num_stages, plans_len[row], 0)
    return plans_kind[row], plan_a.astype(jnp.int32), plan_b.astype(jnp.int32), length


def _with_plan(state: EnvState) -> EnvState:
    parts = [_stage_plan(state, t) for t in range(NUM_STAGES)]
    lengths = jnp.stack([part[3] for part in parts])
    offsets = (jnp.cumsum(lengths) - lengths).astype(jnp.int32)
    fields = []
    for f in range(3):
        out, _ = _concat_pieces(jnp.stack([part[f] for part in parts]), lengths, MAX_PLAN)
        fields.append(out)
    return eqx.tree_at(
        lambda s: (s.plan_kind, s.plan_a, s.plan_b, s.plan_len, s.stage_plan_offset),
        state,
        (fields[0], fields[1], fields[2], jnp.sum(lengths).astype(jnp.int32), offsets),
    )


# --- task progress ---------------------------------------------------------------------------------------
def stage_complete(state: EnvState) -> Bool[Array, ""]:
    """Whether the current instruction clause is satisfied in this state."""
    t = jnp.minimum(state.stage, NUM_STAGES - 1)
    kind, a, b = state.stage_kind[t], state.stage_a[t], state.stage_b[t]
    n_obj = state.obj_type.shape[0]
    reach, _ = entity_in_reach(state)
    goto_done = reach[a]
    pickup_done = state.carrying == a
    open_done = state.door_state[jnp.clip(a - n_obj, 0, state.door_state.shape[0] - 1)] == DOOR_OPEN
    a_obj = jnp.clip(a, 0, n_obj - 1)
    b_obj = jnp.clip(b, 0, n_obj - 1)
    manhattan = jnp.sum(jnp.abs(state.obj_pos[a_obj] - state.obj_pos[b_obj]))
    put_done = (state.carrying != a) & (manhattan == 1)
    done = jnp.stack([goto_done, pickup_done, open_done, put_done])[kind]
    return done & (state.stage < state.num_stages)


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


def physics(state: EnvState, action: Int32[Array, "3"]) -> tuple[EnvState, Bool[Array, ""]]:
    """Hold `action` for its duration at TICK_HZ: interact/drop first, then per-tick motion with collisions.

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
    steps_x = jnp.where(active, (body[0] * cos + body[1] * -sin) * (MOVE_SPEED * dt), 0.0)
    steps_y = jnp.where(active, (body[0] * sin + body[1] * cos) * (MOVE_SPEED * dt), 0.0)
    counts = active & ((steps_x != 0.0) | (steps_y != 0.0))  # ticks whose bumps count as contact

    def tick(t, carry):
        # One array as the carry: the tick then has a single output and XLA fuses it into one kernel.
        x, y, pushed = carry[0], carry[1], carry[2]
        dx, dy = steps_x[t], steps_y[t]
        hit_x = _blocked(row_bits, cols, x + dx, y)
        x = jnp.where(hit_x, x, x + dx)
        hit_y = _blocked(row_bits, cols, x, y + dy)
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
    state = eqx.tree_at(
        lambda s: (s.agent_pos, s.agent_dir, s.velocity, s.yaw_rate, s.contact),
        state,
        (
            pos,
            wrap_angle(angle),
            jnp.stack([precise_dot(moved, forward), precise_dot(moved, right)]),
            jnp.deg2rad(look) / duration,
            contact,
        ),
    )
    return state, failed | (pushed > 0)


def proprio(state: EnvState) -> Float32[Array, " P"]:
    """Velocity (body frame), yaw rate, heading, held object (type and colour one-hot), contact impulse."""
    holding = state.carrying >= 0
    held = jnp.maximum(state.carrying, 0)
    held_type = jax.nn.one_hot(state.obj_type[held], 3) * holding
    held_colour = jax.nn.one_hot(state.obj_colour[held], len(voc.COLOURS)) * holding
    return jnp.concatenate(
        [
            state.velocity / MOVE_SPEED,
            (state.yaw_rate / math.pi)[None],
            jnp.stack([jnp.cos(state.agent_dir), jnp.sin(state.agent_dir)]),
            holding.astype(jnp.float32)[None],
            held_type,
            held_colour,
            state.contact[None],
        ]
    ).astype(jnp.float32)
