"""World state, procedural generation, physics and task logic of the built-in 3D world (pure JAX).

Coordinates: the world is a grid of unit cells, `grid[row, col]`. The agent has a continuous position
(x, y) = (col, row) in cell units and a heading angle (0 = +x, increasing clockwise on the top-down map
because y points down). Objects and doors sit at cell centres and block their cell.

Everything works on ONE world; callers `jax.vmap`. There is no Python control flow on traced values.

The package, one concern per module (imports point down this list, never up):

- `state`: constants (time, actions, splits, door states), `EnvParams`, `EnvState`;
- `games`: the games (visual themes, cameras, speeds) worlds are played in, and the held-out one;
- `geometry`: headings, entity tables, per-cell grids, reach;
- `streams`: the counter-based random streams of generation;
- `language`: the instruction language (templates to token ids);
- `plans`: the expert's subgoal plan per clause and clause completion;
- `generation`: `generate`, a fresh world and task; `pad_world`, one shape for worlds of several levels;
- `dynamics`: `physics` (one held action), `proprio` and `touch`.

This module re-exports the public names of all of them.
"""

from sima2.envs.world.dynamics import physics, proprio, touch
from sima2.envs.world.games import GAME_NAMES, GAMES, HELDOUT_GAME, TRAIN_GAMES, Game
from sima2.envs.world.generation import generate, pad_world
from sima2.envs.world.geometry import (
    door_state_grid,
    entity_colours,
    entity_in_reach,
    entity_positions,
    entity_types,
    heading_vectors,
    location_phrases_holding,
    object_grid,
    precise_dot,
    row_masks,
    solid_grid,
    wrap_angle,
)
from sima2.envs.world.language import TASK_CLAUSE_KINDS, max_instruction_words
from sima2.envs.world.plans import SUBGOAL_GOTO, SUBGOAL_OPEN, SUBGOAL_PICKUP, SUBGOAL_PUT, key_for_door, stage_complete
from sima2.envs.world.state import (
    ACTION_NVEC,
    AGENT_RADIUS,
    BACK,
    DOOR_CLOSED,
    DOOR_LOCKED,
    DOOR_OPEN,
    DROP,
    DURATION_TICKS,
    FORWARD,
    HELDOUT_COMPOSITION_KINDS,
    HELDOUT_COMPOSITIONS,
    HELDOUT_GAME_SPLIT,
    HELDOUT_LAYOUTS,
    HELDOUT_PAIR_MASK,
    HELDOUT_PAIRS,
    HELDOUT_PARAPHRASES,
    HELDOUT_WORDING,
    INTERACT,
    KEY_NAMES,
    LAYOUT_SEED_SPACE,
    LOOK_CENTRE,
    LOOK_DEGREES,
    MAX_PLAN,
    MOVE_SPEED,
    NOOP,
    NUM_PAIRS,
    NUM_STAGES,
    PROPRIO_SIZE,
    REACH_ANGLE,
    REACH_DISTANCE,
    SPLITS,
    STRAFE_LEFT,
    STRAFE_RIGHT,
    TICK_HZ,
    TOUCH_SIZE,
    TRAIN,
    EnvParams,
    EnvState,
)

__all__ = [
    "GAMES",
    "GAME_NAMES",
    "Game",
    "HELDOUT_GAME",
    "HELDOUT_GAME_SPLIT",
    "TRAIN_GAMES",
    "ACTION_NVEC",
    "AGENT_RADIUS",
    "BACK",
    "DOOR_CLOSED",
    "DOOR_LOCKED",
    "DOOR_OPEN",
    "DROP",
    "DURATION_TICKS",
    "EnvParams",
    "EnvState",
    "FORWARD",
    "HELDOUT_LAYOUTS",
    "HELDOUT_COMPOSITION_KINDS",
    "HELDOUT_COMPOSITIONS",
    "HELDOUT_PAIRS",
    "HELDOUT_PAIR_MASK",
    "HELDOUT_PARAPHRASES",
    "HELDOUT_WORDING",
    "INTERACT",
    "KEY_NAMES",
    "LAYOUT_SEED_SPACE",
    "LOOK_CENTRE",
    "LOOK_DEGREES",
    "MAX_PLAN",
    "MOVE_SPEED",
    "NOOP",
    "NUM_PAIRS",
    "NUM_STAGES",
    "PROPRIO_SIZE",
    "REACH_ANGLE",
    "REACH_DISTANCE",
    "SPLITS",
    "STRAFE_LEFT",
    "STRAFE_RIGHT",
    "SUBGOAL_GOTO",
    "SUBGOAL_OPEN",
    "SUBGOAL_PICKUP",
    "SUBGOAL_PUT",
    "TASK_CLAUSE_KINDS",
    "TICK_HZ",
    "TOUCH_SIZE",
    "TRAIN",
    "door_state_grid",
    "entity_colours",
    "entity_in_reach",
    "entity_positions",
    "entity_types",
    "generate",
    "heading_vectors",
    "key_for_door",
    "location_phrases_holding",
    "max_instruction_words",
    "object_grid",
    "pad_world",
    "physics",
    "precise_dot",
    "proprio",
    "row_masks",
    "solid_grid",
    "stage_complete",
    "touch",
    "wrap_angle",
]
