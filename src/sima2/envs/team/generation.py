"""A fresh team world: the three-room layout, the family's doors, switch and objects, the agents' start
poses and their instruction, drawn from a layout seed (held-out layouts: seeds divisible by 5) and the
split's colour-object pairs (the built-in world's held-out pairs never occur in training).

- hold and pass: the right room's door is open only while an agent stands on the switch, three cells from
  the door in the middle room; the goal object lies beyond the door ("pick up the X"). One agent must hold
  the switch while another walks through.
- joint placement: the left room's door opens only for agent 0, the right room's only for agent 1; "put
  the X next to the Y" with X in the left room and Y in the right one.
- split knowledge: only agent 0 is told "put the X next to the Y" (the others' instructions are empty);
  both lie among five objects of five different colours in the right room, whose door opens only for agent
  1. A colour names each object there, so the message channel can carry the task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int32, PRNGKeyArray

from sima2.envs import vocabulary as voc
from sima2.envs.expert import UNREACHABLE, distances_at
from sima2.envs.render import AGENT_COLOURS, SWITCH_COLOUR
from sima2.envs.team.state import (
    FAMILIES,
    GRID_COLS,
    GRID_ROWS,
    HELDOUT_LAYOUTS,
    HELDOUT_PAIRS,
    HOLD_AND_PASS,
    INSTRUCTION_LENGTH,
    JOINT_PLACEMENT,
    LEFT_ROOM,
    MIDDLE_ROOM,
    NUM_OBJECTS,
    OWNER_SWITCH,
    RIGHT_ROOM,
    SPLIT_KNOWLEDGE,
    WALL_COLUMNS,
    Bodies,
    TeamParams,
    TeamState,
)
from sima2.envs.world import DOOR_CLOSED, HELDOUT_PAIR_MASK, NUM_PAIRS, TRAIN_GAMES

_PLACEMENT_TRIES = 4
_LAYOUT_STREAM, _GAME_STREAM, _FAMILY_STREAM, _PAIR_STREAM = 0x7EA1, 0x7EA2, 0x7EA3, 0x7EA4


def _room_cells(first_col: int, last_col: int) -> np.ndarray:
    return np.array([(r, c) for r in range(1, GRID_ROWS - 1) for c in range(first_col, last_col + 1)], np.int32)


_LEFT, _MIDDLE, _RIGHT = _room_cells(*LEFT_ROOM), _room_cells(*MIDDLE_ROOM), _room_cells(*RIGHT_ROOM)


def _draw_cells(key: PRNGKeyArray, cells: np.ndarray, count: int, avoid: Int32[Array, "K 2"]) -> Int32[Array, "C 2"]:
    """`count` distinct cells of `cells` in random order, none of them in `avoid`."""
    allowed = ~jnp.any(jnp.all(jnp.asarray(cells)[:, None, :] == avoid[None, :, :], axis=-1), axis=1)
    priority = jax.random.uniform(key, (cells.shape[0],)) + jnp.where(allowed, 0.0, 2.0)
    return jnp.asarray(cells)[jnp.argsort(priority)[:count]]


def _approachable(
    wall: Bool[Array, "GH GW"],
    cells: Int32[Array, "N 2"],
    valid: Bool[Array, " N"],
    entrances: Int32[Array, "2 2"],
    family: Int32[Array, ""],
) -> Bool[Array, ""]:
    """Whether the target (object 0) and the anchor (object 1, where there is one) each have a free neighbour
    reachable from a doorway, and the target does not lie next to the anchor already. (One search from both
    doorways: it runs for every placement tried at every reset.)"""
    free = ~wall.at[cells[:, 0], cells[:, 1]].max(valid)
    steps = jnp.array(((-1, 0), (1, 0), (0, -1), (0, 1)), jnp.int32)
    near = jnp.concatenate([cells[0][None] + steps, cells[1][None] + steps])
    doorways = jnp.zeros_like(wall).at[entrances[:, 0], entrances[:, 1]].set(True)
    reached = (distances_at(doorways, free, near) < UNREACHABLE).reshape(2, 4).any(axis=1)
    apart = jnp.sum(jnp.abs(cells[0] - cells[1])) > 1
    return reached[0] & ((family == HOLD_AND_PASS) | (reached[1] & apart))


def _pairs(key: PRNGKeyArray, split: Int32[Array, ""]) -> Int32[Array, " N"]:
    """NUM_OBJECTS distinct colour-object pairs (type * colours + colour); the first is the target. Training
    worlds hold no held-out pair; in heldout_pairs the target is one and the others are not."""
    held_out = jnp.asarray(HELDOUT_PAIR_MASK)
    k_target, k_rest = jax.random.split(key)
    target_allowed = jnp.where(split == HELDOUT_PAIRS, held_out, ~held_out)
    target = jax.random.choice(k_target, NUM_PAIRS, p=target_allowed / target_allowed.sum())
    rest_allowed = ~held_out & (jnp.arange(NUM_PAIRS) != target)
    priority = jax.random.uniform(k_rest, (NUM_PAIRS,)) + jnp.where(rest_allowed, 0.0, 2.0)
    return jnp.concatenate([target[None], jnp.argsort(priority)[: NUM_OBJECTS - 1]]).astype(jnp.int32)


def _distinct_colour_pairs(key: PRNGKeyArray, split: Int32[Array, ""]) -> Int32[Array, " N"]:
    """As `_pairs`, every object of another colour (so a colour names each): the target as `_pairs` draws it,
    then the other colours in random order, each with an object type that makes no held-out pair."""
    held_out = jnp.asarray(HELDOUT_PAIR_MASK).reshape(-1, len(voc.COLOURS))  # [type, colour]
    k_target, k_colours, k_types = jax.random.split(key, 3)
    target = _pairs(k_target, split)[0]
    colours = jnp.arange(len(voc.COLOURS))
    priority = jax.random.uniform(k_colours, colours.shape) + jnp.where(colours == target % len(voc.COLOURS), 2.0, 0.0)
    others = jnp.argsort(priority)[: NUM_OBJECTS - 1]
    type_priority = jax.random.uniform(k_types, (NUM_OBJECTS - 1, held_out.shape[0])) - held_out[:, others].T
    types = jnp.argmax(type_priority, axis=1)
    return jnp.concatenate([target[None], types * len(voc.COLOURS) + others]).astype(jnp.int32)


def _noun_phrase(pair: Int32[Array, ""]) -> Int32[Array, "3"]:
    tables = voc.token_tables()
    obj_type, colour = pair // len(voc.COLOURS), pair % len(voc.COLOURS)
    return jnp.stack(
        [jnp.int32(tables.the_id), jnp.asarray(tables.colour_ids)[colour], jnp.asarray(tables.noun_ids)[obj_type, 0]]
    )


def _instruction(family: Int32[Array, ""], target: Int32[Array, ""], anchor: Int32[Array, ""]) -> Int32[Array, " L"]:
    words = voc.word_to_id()
    pick_up = jnp.concatenate([jnp.array([words["pick"], words["up"]], jnp.int32), _noun_phrase(target)])
    put = jnp.concatenate([
        jnp.array([words["put"]], jnp.int32), _noun_phrase(target),
        jnp.array([words["next"], words["to"]], jnp.int32), _noun_phrase(anchor),
    ])  # fmt: skip
    pad = lambda ids: jnp.pad(ids, (0, INSTRUCTION_LENGTH - ids.shape[0]))  # noqa: E731
    return jnp.where(family == HOLD_AND_PASS, pad(pick_up), pad(put)).astype(jnp.int32)


def generate(key: PRNGKeyArray, params: TeamParams, num_agents: int) -> TeamState:
    """A fresh world of the params' family (or one drawn), split and game (or a training game drawn)."""
    drawn_family = jax.random.randint(jax.random.fold_in(key, _FAMILY_STREAM), (), 0, len(FAMILIES))
    family = jnp.where(params.family >= 0, params.family, drawn_family).astype(jnp.int32)
    drawn_game = jnp.asarray(TRAIN_GAMES)[
        jax.random.randint(jax.random.fold_in(key, _GAME_STREAM), (), 0, len(TRAIN_GAMES))
    ]
    game = jnp.where(params.game >= 0, params.game, drawn_game).astype(jnp.int32)
    # Layout seeds divisible by 5 are the held-out layouts.
    k_seed, k_offset = jax.random.split(jax.random.fold_in(key, _LAYOUT_STREAM))
    base = 5 * jax.random.randint(k_seed, (), 0, 1 << 22)
    offset = jnp.where(params.split == HELDOUT_LAYOUTS, 0, jax.random.randint(k_offset, (), 1, 5))
    layout_seed = (base + offset).astype(jnp.int32)
    k_doors, k_switch, k_objects, k_agents, k_dirs = jax.random.split(jax.random.key(layout_seed), 5)

    door_rows = jax.random.randint(k_doors, (2,), 1, GRID_ROWS - 1)
    door_pos = jnp.stack([door_rows, jnp.asarray(WALL_COLUMNS)], axis=1).astype(jnp.int32)
    hold = family == HOLD_AND_PASS
    door_valid = jnp.stack([family == JOINT_PLACEMENT, jnp.bool_(True)])  # only joint placement's left room
    wall = np.zeros((GRID_ROWS, GRID_COLS), bool)
    wall[0, :] = wall[-1, :] = wall[:, 0] = wall[:, -1] = True
    wall[:, list(WALL_COLUMNS)] = True
    wall = jnp.asarray(wall).at[door_pos[:, 0], door_pos[:, 1]].set(~door_valid)
    door_id = jnp.full((GRID_ROWS, GRID_COLS), -1, jnp.int32)
    door_id = door_id.at[door_pos[:, 0], door_pos[:, 1]].set(jnp.where(door_valid, jnp.arange(2), -1))
    door_owner = jnp.where(hold, jnp.array([0, OWNER_SWITCH]), jnp.array([0, 1])).astype(jnp.int32)
    door_colour = jnp.where(
        hold, jnp.array([AGENT_COLOURS[0], SWITCH_COLOUR]), jnp.array([AGENT_COLOURS[0], AGENT_COLOURS[1]])
    ).astype(jnp.int32)

    # The switch: in the middle room's first column, three cells from the right door.
    switch_row = jax.random.randint(k_switch, (), 1, GRID_ROWS - 1)
    switch = jnp.where(hold, jnp.stack([switch_row, jnp.int32(MIDDLE_ROOM[0])]), -1).astype(jnp.int32)
    # Objects away from the doorways: the target (and the anchor) and distractors.
    entrances = jnp.stack([door_pos[0] + jnp.array([0, -1]), door_pos[1] + jnp.array([0, 1])])
    obj_valid = jnp.arange(NUM_OBJECTS) < jnp.asarray((3, 4, 5))[family]

    def objects(key: PRNGKeyArray) -> Int32[Array, "N 2"]:
        # hold and pass: target and two distractors in the right room; joint placement: target and a
        # distractor on the left, anchor and a distractor on the right; split knowledge: all five on the
        # right. The slots a family leaves empty are marked invalid.
        k_left, k_right = jax.random.split(key)
        left, right = _draw_cells(k_left, _LEFT, 2, entrances), _draw_cells(k_right, _RIGHT, 5, entrances)
        # Split knowledge's anchor: the first of the others that is not next to the target.
        far = 1 + jnp.argmax(jnp.sum(jnp.abs(right[1:] - right[0]), axis=1) > 1)
        by_family = jnp.stack([
            jnp.stack([right[0], right[1], right[2], left[0], left[1]]),
            jnp.stack([left[0], right[0], left[1], right[1], right[2]]),
            right.at[1].set(right[far]).at[far].set(right[1]),
        ])  # fmt: skip
        return by_family[family]

    # Objects can wall one another in: of a few drawn placements, the first where the target and the anchor
    # can be walked up to from their room's doorway.
    candidates = jax.vmap(objects)(jax.random.split(k_objects, _PLACEMENT_TRIES))
    valid = jax.vmap(lambda cells: _approachable(wall, cells, obj_valid, entrances, family))(candidates)
    obj_pos = candidates[jnp.argmax(valid)]
    k_pairs = jax.random.fold_in(key, _PAIR_STREAM)
    split_knowledge = family == SPLIT_KNOWLEDGE
    pairs = jnp.where(split_knowledge, _distinct_colour_pairs(k_pairs, params.split), _pairs(k_pairs, params.split))
    target, anchor = jnp.int32(0), jnp.where(hold, -1, 1).astype(jnp.int32)
    told = jnp.where(split_knowledge, jnp.arange(num_agents) == 0, True)  # who is told the instruction
    instruction = jnp.where(told[:, None], _instruction(family, pairs[0], pairs[1])[None], voc.PAD_ID)

    # Agents start in the middle room, off the switch and the doorways' approach cells.
    approach = jnp.stack([door_pos[0] + jnp.array([0, 1]), door_pos[1] + jnp.array([0, -1]), switch])
    cells = _draw_cells(k_agents, _MIDDLE, num_agents, approach)
    quarter = jax.random.randint(k_dirs, (num_agents,), 0, 4).astype(jnp.float32)
    zeros = jnp.zeros((num_agents,), jnp.float32)
    bodies = Bodies(
        pos=cells[:, ::-1].astype(jnp.float32) + 0.5,
        dir=quarter * (jnp.pi / 2),
        velocity=jnp.zeros((num_agents, 2), jnp.float32),
        yaw_rate=zeros,
        contact=zeros,
        contact_direction=jnp.zeros((num_agents, 2), jnp.float32),
        contact_kind=jnp.zeros((num_agents,), jnp.int32),
        carrying=jnp.full((num_agents,), -1, jnp.int32),
    )
    return TeamState(
        wall=wall,
        door_id=door_id,
        door_pos=door_pos,
        door_colour=door_colour,
        door_state=jnp.full((2,), DOOR_CLOSED, jnp.int32),
        door_valid=door_valid,
        door_owner=door_owner,
        obj_pos=obj_pos.astype(jnp.int32),
        obj_type=pairs // len(voc.COLOURS),
        obj_colour=pairs % len(voc.COLOURS),
        obj_valid=obj_valid,
        switch=switch,
        bodies=bodies,
        said=jnp.zeros((num_agents,), jnp.int32),
        instruction=instruction.astype(jnp.int32),
        family=family,
        target=target,
        anchor=anchor,
        time=jnp.int32(0),
        game=game,
        split=params.split.astype(jnp.int32),
        layout_seed=layout_seed,
    )


__all__ = ["generate"]
