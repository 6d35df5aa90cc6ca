"""Procedural generation of one world and task (`generate`) and its layout helpers.

Draws the layout from the layout seed and the task from the episode's stream, then attaches the expert plan
and the instruction: the top of the package, importing every other module but physics.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int32, PRNGKeyArray

from sima2.envs import vocabulary as voc
from sima2.envs.levels import LevelConfig
from sima2.envs.world.geometry import location_phrases_holding
from sima2.envs.world.language import _instruction
from sima2.envs.world.plans import _with_plan
from sima2.envs.world.state import (
    _LAYOUT_ROOT,
    CONTACT_NONE,
    DOOR_CLOSED,
    DOOR_LOCKED,
    DOOR_OPEN,
    HELDOUT_COMPOSITION_MASK,
    HELDOUT_COMPOSITIONS,
    HELDOUT_LAYOUTS,
    HELDOUT_PAIR_MASK,
    HELDOUT_PAIRS,
    LAYOUT_SEED_SPACE,
    MAX_PLAN,
    NUM_PAIRS,
    NUM_STAGES,
    SEQUENCE_FIRST_KINDS,
    SEQUENCE_SECOND_KINDS,
    EnvState,
)
from sima2.envs.world.streams import _Draws, _mix32


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
    else:  # sequence: (goto | open) then (goto | pickup | open), the held-out combinations in their split only
        heldout = jnp.asarray(HELDOUT_COMPOSITION_MASK)
        combination = episode.choice(jnp.where(split == HELDOUT_COMPOSITIONS, heldout, ~heldout))
        second_kinds = len(SEQUENCE_SECOND_KINDS)
        kind1 = jnp.asarray(SEQUENCE_FIRST_KINDS, jnp.int32)[combination // second_kinds]
        kind2 = jnp.asarray(SEQUENCE_SECOND_KINDS, jnp.int32)[combination % second_kinds]
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
        obj_valid=jnp.ones((n_obj,), bool),
        carrying=jnp.int32(-1),
        agent_pos=agent_pos,
        agent_dir=agent_dir,
        start_pos=agent_pos,
        start_dir=agent_dir,
        velocity=jnp.zeros((2,), jnp.float32),
        yaw_rate=jnp.float32(0.0),
        contact=jnp.float32(0.0),
        contact_direction=jnp.zeros((2,), jnp.float32),
        contact_kind=jnp.int32(CONTACT_NONE),
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
        level=jnp.int32(0),
        game=jnp.int32(0),
        episode_return=jnp.float32(0.0),
        path_length=jnp.float32(0.0),
        optimal_path_length=jnp.float32(0.0),
    )
    state = _with_plan(state)
    instruction = _instruction(state, split, episode)
    return eqx.tree_at(lambda s: s.instruction, state, instruction)


def pad_world(state: EnvState, grid_shape: tuple[int, int], num_objects: int, num_doors: int) -> EnvState:
    """`state` grown to a larger grid and more object and door slots, so that worlds of different levels
    share one shape (and so one vmapped batch). The added cells are walls; the added objects and doors are
    invalid and sit off the grid; entity indices (object slots first, then doors) move with the doors."""
    rows, cols = state.wall.shape
    n_obj, n_door = state.obj_type.shape[0], state.door_pos.shape[0]
    if (grid_shape[0] < rows or grid_shape[1] < cols or num_objects < n_obj or num_doors < n_door):
        raise ValueError(
            f"cannot pad a world of grid {(rows, cols)}, {n_obj} objects and {n_door} doors to grid "
            f"{grid_shape}, {num_objects} objects and {num_doors} doors"
        )
    extra_obj, extra_door = num_objects - n_obj, num_doors - n_door
    grow = ((0, grid_shape[0] - rows), (0, grid_shape[1] - cols))
    off_grid = jnp.array(grid_shape, jnp.int32)

    def entity(index: Int32[Array, "*s"]) -> Int32[Array, "*s"]:
        return jnp.where(index >= n_obj, index + extra_obj, index)

    def split_entities(values: Int32[Array, " E"]) -> Int32[Array, " E2"]:
        objects, doors = values[:n_obj], values[n_obj:]
        return jnp.concatenate([objects, jnp.zeros((extra_obj,), values.dtype), doors,
                                jnp.zeros((extra_door,), values.dtype)])

    def more(values: Array, count: int, fill) -> Array:
        return jnp.concatenate([values, jnp.full((count, *values.shape[1:]), fill, values.dtype)])

    return eqx.tree_at(
        lambda s: (s.wall, s.door_id, s.door_pos, s.door_colour, s.door_state, s.door_valid, s.obj_pos,
                   s.obj_type, s.obj_colour, s.obj_valid, s.stage_a, s.stage_b, s.plan_a, s.plan_b,
                   s.entity_synonym, s.entity_location),
        state,
        (
            jnp.pad(state.wall, grow, constant_values=True),
            jnp.pad(state.door_id, grow, constant_values=-1),
            jnp.where(
                more(state.door_valid, extra_door, False)[:, None], more(state.door_pos, extra_door, 0), off_grid
            ),
            more(state.door_colour, extra_door, 0),
            more(state.door_state, extra_door, DOOR_OPEN),
            more(state.door_valid, extra_door, False),
            more(state.obj_pos, extra_obj, 0).at[n_obj:].set(off_grid),
            more(state.obj_type, extra_obj, 0),
            more(state.obj_colour, extra_obj, 0),
            more(state.obj_valid, extra_obj, False),
            entity(state.stage_a),
            entity(state.stage_b),
            entity(state.plan_a),
            entity(state.plan_b),
            split_entities(state.entity_synonym),
            split_entities(state.entity_location),
        ),
    )
