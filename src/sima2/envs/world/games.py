"""The world's "games": visual themes, cameras and movement speeds that the same levels are played in.

A game changes how a world looks and moves, never what its task is: wall, floor and ceiling colours and
the wall pattern, the brightness of the object colours, the size and box shape of the object sprites, the
camera's field of view and eye height, and the agent's speed. Every world carries its game (`EnvState.game`),
so worlds of different games run in one vmapped batch. The last game is held out of training by
construction: only the `heldout_game` split draws it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Game:
    """One game's look and feel.

    Attributes:
        name: the game's name.
        wall, floor, ceiling: base RGB colours (shaded with distance by the renderer).
        wall_pattern: 0 plain walls, 1 bricks (every other wall cell one shade darker).
        object_brightness: scale of the six object colours (their hues stay those the instructions name).
        sprite_scale: object sprite height relative to the classic game's.
        box_exponent: the box sprite's shape, |u|^p + |v|^p < 1 (8: square, 4: rounded).
        field_of_view_degrees: horizontal field of view of the camera.
        eye_height: camera height as a fraction of the wall height (0.5: the horizon halves the walls).
        move_speed: cells per second when moving.
    """

    name: str
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    ceiling: tuple[int, int, int]
    wall_pattern: int = 0
    object_brightness: float = 1.0
    sprite_scale: float = 1.0
    box_exponent: int = 8
    field_of_view_degrees: float = 66.0
    eye_height: float = 0.5
    move_speed: float = 4.0

    def __post_init__(self) -> None:
        if not 40.0 <= self.field_of_view_degrees <= 100.0:
            raise ValueError(f"game {self.name}: field of view must be in [40, 100] degrees")
        if not 0.3 <= self.eye_height <= 0.7:
            raise ValueError(f"game {self.name}: eye height must be in [0.3, 0.7] of the wall height")
        if self.move_speed <= 0 or self.sprite_scale <= 0 or self.object_brightness <= 0:
            raise ValueError(f"game {self.name}: speeds, scales and brightness must be positive")


GAMES: tuple[Game, ...] = (
    Game("classic", wall=(225, 215, 195), floor=(70, 60, 50), ceiling=(40, 50, 75)),
    Game(
        "dungeon", wall=(125, 115, 105), floor=(52, 46, 40), ceiling=(24, 24, 30), wall_pattern=1,
        object_brightness=0.9, field_of_view_degrees=60.0, eye_height=0.45, move_speed=3.5,
    ),
    Game(
        "meadow", wall=(205, 175, 125), floor=(85, 100, 60), ceiling=(120, 165, 215), sprite_scale=1.1,
        box_exponent=4, field_of_view_degrees=72.0, eye_height=0.55, move_speed=4.0,
    ),
    Game(
        "lab", wall=(205, 210, 220), floor=(60, 68, 88), ceiling=(215, 220, 228), object_brightness=1.05,
        sprite_scale=0.9, field_of_view_degrees=80.0, eye_height=0.5, move_speed=4.0,
    ),
    Game(
        "desert", wall=(210, 170, 120), floor=(160, 130, 95), ceiling=(110, 160, 220), wall_pattern=1,
        box_exponent=4, field_of_view_degrees=56.0, eye_height=0.6, move_speed=3.0,
    ),
    # Held out: a dim night palette, bricks, a wide, low camera. (Speeds stay at or below the classic 4 cells/s:
    # faster, a held action overshoots a cell and the scripted expert's drops miss their cell.)
    Game(
        "night", wall=(95, 100, 140), floor=(32, 32, 46), ceiling=(12, 12, 22), wall_pattern=1,
        object_brightness=0.85, sprite_scale=1.05, box_exponent=4, field_of_view_degrees=76.0,
        eye_height=0.42, move_speed=3.5,
    ),
)
GAME_NAMES = tuple(game.name for game in GAMES)
HELDOUT_GAME = len(GAMES) - 1
TRAIN_GAMES = tuple(range(HELDOUT_GAME))

# Per-game tables the renderer, the physics and the expert index with `state.game`.
GAME_FIELD_OF_VIEW = np.radians([g.field_of_view_degrees for g in GAMES]).astype(np.float32)
GAME_EYE_HEIGHT = np.array([g.eye_height for g in GAMES], np.float32)
GAME_MOVE_SPEED = np.array([g.move_speed for g in GAMES], np.float32)
GAME_SPRITE_SCALE = np.array([g.sprite_scale for g in GAMES], np.float32)
GAME_BOX_EXPONENT = np.array([g.box_exponent for g in GAMES], np.int32)
GAME_WALL_PATTERN = np.array([g.wall_pattern for g in GAMES], np.int32)
