"""Constants and state types of the built-in world: the action space (keys, mouse-look, durations), the
splits, door states, `EnvParams` and `EnvState`.

The base of the package: every other module reads these, and this one imports none of them.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float32, Int32

from sima2.envs import vocabulary as voc

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
PROPRIO_SIZE = 14
# Touch (`dynamics.touch`): contact strength, its direction in the body frame (forward, right), what was
# touched (wall, door, object), whether an object is held, and whether an object / a door is within reach.
TOUCH_SIZE = 9
CONTACT_NONE, CONTACT_WALL, CONTACT_DOOR, CONTACT_OBJECT = range(4)
MAX_PLAN = 8  # subgoals in the expert plan
NUM_STAGES = 2  # clauses of an instruction ("X, then Y")

# Splits: layout seeds, colour-object pairs and paraphrase templates are partitioned by construction.
# heldout_game: worlds of the game no training world is drawn in (`games.HELDOUT_GAME`). heldout_wording:
# instructions in templates and colour and object words no training instruction uses (`vocabulary`).
# heldout_compositions: two-clause instructions whose combination of clause kinds no training instruction
# has (only levels with multi-step instructions have it).
SPLITS = (
    "train", "heldout_layouts", "heldout_pairs", "heldout_paraphrases", "heldout_game", "heldout_wording",
    "heldout_compositions",
)
TRAIN, HELDOUT_LAYOUTS, HELDOUT_PAIRS, HELDOUT_PARAPHRASES, HELDOUT_GAME_SPLIT, HELDOUT_WORDING, \
    HELDOUT_COMPOSITIONS = range(len(SPLITS))
# Clause kinds of a two-step instruction: first (go to | open), then (go to | pick up | open). Held out by
# construction: "open X, then pick up Y" and "go to X, then open Y"; each kind still occurs in training in
# the same position, only these combinations never do.
SEQUENCE_FIRST_KINDS = (voc.GOTO, voc.OPEN)
SEQUENCE_SECOND_KINDS = (voc.GOTO, voc.PICKUP, voc.OPEN)
HELDOUT_COMPOSITION_KINDS = ((voc.OPEN, voc.PICKUP), (voc.GOTO, voc.OPEN))
HELDOUT_COMPOSITION_MASK = np.array(
    [(a, b) in HELDOUT_COMPOSITION_KINDS for a in SEQUENCE_FIRST_KINDS for b in SEQUENCE_SECOND_KINDS]
)
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
    """Dynamic environment parameters (can change without recompiling).

    `max_steps`: decision steps before an episode is truncated; 0 keeps each level's own limit.
    `split`: index into SPLITS. `level`: index into the env's levels, or -1 to draw one uniformly at
    every reset (a world of several levels trains on their mixture). `game`: index into `games.GAMES`, or -1
    to draw one at every reset (a training game; the held-out one in the heldout_game split).
    """

    max_steps: Int32[Array, ""]
    split: Int32[Array, ""]
    level: Int32[Array, ""] = eqx.field(default_factory=lambda: jnp.int32(0))
    game: Int32[Array, ""] = eqx.field(default_factory=lambda: jnp.int32(-1))


class EnvState(eqx.Module):
    """Full state of one world. Entities: objects 0..N-1, then doors N..N+D-1."""

    wall: Bool[Array, "GH GW"]
    door_id: Int32[Array, "GH GW"]  # index of the door in each cell, -1 where none
    door_pos: Int32[Array, "D 2"]  # (row, col)
    door_colour: Int32[Array, " D"]
    door_state: Int32[Array, " D"]
    door_valid: Bool[Array, " D"]
    obj_pos: Int32[Array, "N 2"]  # (row, col)
    obj_valid: Bool[Array, " N"]  # False for the padding of a level with fewer objects than its env's others
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
    contact_direction: Float32[Array, "2"]  # unit direction of that push in the body frame (forward, right)
    contact_kind: Int32[Array, ""]  # what it pushed against: CONTACT_NONE / _WALL / _DOOR / _OBJECT
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
    level: Int32[Array, ""]  # index of this world's level in its env's levels
    game: Int32[Array, ""]  # index of this world's game in `games.GAMES` (look, camera, speed)
    episode_return: Float32[Array, ""]
    # Navigation efficiency: cells travelled since reset, and the sum of each subgoal's shortest path (BFS
    # cells) from where the agent stood when that subgoal became current.
    path_length: Float32[Array, ""]
    optimal_path_length: Float32[Array, ""]
