"""The level registry: static configurations of the built-in world, ordered by difficulty.

A level fixes the room layout (rooms on a grid, each `room_size` x `room_size` cells inside), the number of
objects and doors, the task family and the decision-step limit. Each level is exposed as the gymnasium id
`sima2/<name>-v0`. The first five levels are small single rooms with few distractors so that an agent can
learn them from 64x64 pixels on a laptop CPU; the others are harder variants (more rooms, closed doors,
locked doors, location phrases, more distractors).
"""

from __future__ import annotations

from dataclasses import dataclass

from sima2.envs.vocabulary import COLOURS

TASK_FAMILIES = ("goto", "pickup", "open", "putnext", "sequence", "unlock")


@dataclass(frozen=True)
class LevelConfig:
    """Static description of one level.

    Attributes:
        name: level name; gymnasium id is `sima2/<name>-v0`.
        task: task family, one of TASK_FAMILIES.
        rooms: (rows, cols) of rooms; rooms are joined by one door per shared wall.
        room_size: interior cells per room side.
        num_objects: free objects (balls, boxes, keys) in the world, targets included.
        num_outer_doors: doors on the outer walls (single-room levels only; they lead nowhere).
        door_closed_prob: probability that a door between rooms starts closed (else open).
        location_phrases: add BabyAI location phrases ("in front of you") to the target's description.
        max_steps: decision steps before the episode is truncated.
        difficulty: rank used to order the registry.
    """

    name: str
    task: str
    rooms: tuple[int, int] = (1, 1)
    room_size: int = 5
    num_objects: int = 3
    num_outer_doors: int = 0
    door_closed_prob: float = 0.0
    location_phrases: bool = False
    max_steps: int = 48
    difficulty: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASK_FAMILIES:
            raise ValueError(f"unknown task family {self.task!r}; expected one of {TASK_FAMILIES}")
        if self.room_size < 3:
            raise ValueError(f"room_size must be >= 3, got {self.room_size}")
        if self.num_outer_doors and self.rooms != (1, 1):
            raise ValueError("outer doors are only supported for single-room levels")
        if not 0 <= self.num_outer_doors <= 4:
            raise ValueError(f"num_outer_doors must be in [0, 4], got {self.num_outer_doors}")
        if self.task in ("open", "sequence") and self.num_doors < 2:
            raise ValueError(f"task {self.task!r} needs at least two doors")
        if self.task == "unlock" and self.rooms != (1, 2):
            raise ValueError("the unlock task needs rooms=(1, 2)")
        min_objects = 2 if self.task in ("putnext", "sequence") else 1
        if self.num_objects < min_objects:
            raise ValueError(f"task {self.task!r} needs at least {min_objects} objects")
        if self.num_doors > len(COLOURS):  # every door has its own colour (and key)
            raise ValueError(
                f"level {self.name}: at most {len(COLOURS)} doors (one per colour), got {self.num_doors}"
            )
        if max(self.grid_shape) > 31:  # rows and columns of cells are 32-bit masks in the renderer and physics
            raise ValueError(f"level {self.name}: grids larger than 31 cells are not supported, got {self.grid_shape}")
        # Objects sit on a lattice of every other cell; keep at least that many lattice cells per room.
        lattice_per_room = (self.room_size // 2) ** 2
        if self.num_objects > lattice_per_room * self.rooms[0] * self.rooms[1] - 1:
            raise ValueError(f"too many objects ({self.num_objects}) for the rooms of level {self.name}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        rows, cols = self.rooms
        return rows * (self.room_size + 1) + 1, cols * (self.room_size + 1) + 1

    @property
    def num_inner_doors(self) -> int:
        rows, cols = self.rooms
        return rows * (cols - 1) + (rows - 1) * cols

    @property
    def num_doors(self) -> int:
        return self.num_inner_doors + self.num_outer_doors

    @property
    def gym_id(self) -> str:
        return f"sima2/{self.name}-v0"


LEVELS: dict[str, LevelConfig] = {
    level.name: level
    for level in sorted(
        [
            # Default, learnable levels: one 5x5 room, few distractors.
            LevelConfig("GoTo", "goto", num_objects=3, max_steps=32, difficulty=0),
            LevelConfig("Pickup", "pickup", num_objects=3, max_steps=32, difficulty=1),
            LevelConfig("Open", "open", num_objects=2, num_outer_doors=2, max_steps=32, difficulty=2),
            LevelConfig("PutNext", "putnext", num_objects=3, max_steps=48, difficulty=3),
            LevelConfig("Sequence", "sequence", num_objects=3, num_outer_doors=2, max_steps=64, difficulty=4),
            # Harder levels.
            LevelConfig(
                "GoToLoc",
                "goto",
                room_size=6,
                num_objects=5,
                location_phrases=True,
                max_steps=48,
                difficulty=5,
            ),
            LevelConfig("PutNextLarge", "putnext", room_size=6, num_objects=6, max_steps=64, difficulty=6),
            LevelConfig(
                "Unlock", "unlock", rooms=(1, 2), room_size=4, num_objects=3, max_steps=64, difficulty=7
            ),
            LevelConfig(
                "GoToMultiRoom",
                "goto",
                rooms=(2, 2),
                room_size=4,
                num_objects=6,
                door_closed_prob=0.5,
                max_steps=96,
                difficulty=8,
            ),
            LevelConfig(
                "SequenceMultiRoom",
                "sequence",
                rooms=(2, 2),
                room_size=4,
                num_objects=6,
                door_closed_prob=0.5,
                max_steps=128,
                difficulty=9,
            ),
        ],
        key=lambda level: level.difficulty,
    )
}


def level_has_split(level: LevelConfig, split: str) -> bool:
    """Whether a level generates tasks of `split`: heldout_compositions holds two-step instructions, so only
    the sequence family has it; every other split applies to every level."""
    return split != "heldout_compositions" or level.task == "sequence"


# Registered mixtures of levels: one env whose worlds each draw one of these levels at reset.
MIXTURES: dict[str, tuple[str, ...]] = {
    # Every task family, with the location-phrase and multi-room forms: the generalist's curriculum.
    "AllFamilies": tuple(LEVELS),
}


def _bare_name(env_id: str) -> str:
    name = env_id.strip()
    if name.startswith("sima2/"):
        name = name[len("sima2/") :]
    if name.endswith("-v0"):
        name = name[: -len("-v0")]
    return name


def levels_from_id(env_id: str) -> tuple[LevelConfig, ...]:
    """The levels of an env id: one level (`sima2/GoTo-v0`), a registered mixture (`sima2/AllFamilies-v0`)
    or level ids joined by commas (`sima2/GoTo-v0,sima2/Pickup-v0`)."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a level id string like 'sima2/GoTo-v0', got {env_id!r}")
    if _bare_name(env_id) in MIXTURES:
        return tuple(LEVELS[name] for name in MIXTURES[_bare_name(env_id)])
    levels = tuple(level_from_id(part) for part in env_id.split(","))
    names = [level.name for level in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"{env_id!r} names a level more than once")
    return levels


def level_from_id(env_id: str) -> LevelConfig:
    """Look up a level by gymnasium id (`sima2/GoTo-v0`) or bare name (`GoTo`)."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a level id string like 'sima2/GoTo-v0', got {env_id!r}")
    name = _bare_name(env_id)
    if name in MIXTURES:
        raise ValueError(f"{env_id!r} is a mixture of {len(MIXTURES[name])} levels, not one level: "
                         "sima2.envs.make builds its env (levels_from_id lists them)")
    if name not in LEVELS:
        known = ", ".join([level.gym_id for level in LEVELS.values()] + [f"sima2/{m}-v0" for m in MIXTURES])
        raise ValueError(f"unknown level {env_id!r}; known levels: {known} (or level ids joined by commas)")
    return LEVELS[name]
