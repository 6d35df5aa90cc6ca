"""Constants and state types of the team world: the families, the message channel, `TeamParams`,
`TeamState` (one shared world, a body per agent), and the single-agent view of one agent that lets the
built-in world's physics, senses, renderer and expert act for it.

The base of the package: the other team modules read these.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float32, Int32

from sima2.envs import vocabulary as voc
from sima2.envs.world import DOOR_LOCKED, DOOR_OPEN, MAX_PLAN, NUM_STAGES, EnvState

# Families, each impossible for one agent by construction.
FAMILIES = ("hold_and_pass", "joint_placement", "split_knowledge")
HOLD_AND_PASS, JOINT_PLACEMENT, SPLIT_KNOWLEDGE = range(len(FAMILIES))
# Decision steps before an episode is truncated, per family (the team expert needs at most about half).
FAMILY_MAX_STEPS = (64, 128, 96)
SPLITS = ("train", "heldout_layouts", "heldout_pairs")
TRAIN, HELDOUT_LAYOUTS, HELDOUT_PAIRS = range(len(SPLITS))

MAX_AGENTS = 4
# The message channel: one token per step from this vocabulary (0: silence) as a fourth action factor; each
# agent hears the tokens the others said in the previous step.
MESSAGE_VOCAB = 8
# What the tokens mean where a family gives them a meaning (split knowledge): a colour (token colour + 1),
# and "holding it".
COLOUR_TOKENS = tuple(range(1, len(voc.COLOURS) + 1))
HOLDING_TOKEN = MESSAGE_VOCAB - 1
assert len(voc.COLOURS) < HOLDING_TOKEN, "the message vocabulary must hold a token per colour and 'holding'"
# Door owners: any agent may toggle (an ordinary door), or only while an agent stands on the switch, or
# only agent i (0 <= i < MAX_AGENTS).
OWNER_ANYONE, OWNER_SWITCH = -1, -2

# The layout: three rooms side by side (rows 1-5; columns 1-3, 5-7 and 9-11) between walls at columns 4 and
# 8, each wall with one door (or none).
GRID_ROWS, GRID_COLS = 7, 13
LEFT_ROOM, MIDDLE_ROOM, RIGHT_ROOM = (1, 3), (5, 7), (9, 11)  # first and last column
WALL_COLUMNS = (4, 8)
NUM_OBJECTS = 5  # object slots; a family leaves the ones it does not use empty
INSTRUCTION_LENGTH = voc.MAX_INSTRUCTION_LENGTH


class TeamParams(eqx.Module):
    """Dynamic parameters (can change without recompiling). `family`: index into FAMILIES, or -1 to draw one
    at every reset. `split`: index into SPLITS. `game`: index into `sima2.envs.world.GAMES`, or -1 for a
    training game drawn at every reset. `max_steps`: 0 keeps each family's own limit."""

    max_steps: Int32[Array, ""]
    split: Int32[Array, ""]
    family: Int32[Array, ""]
    game: Int32[Array, ""]


class Bodies(eqx.Module):
    """Every agent's body, stacked along a leading agent axis."""

    pos: Float32[Array, "A 2"]  # (x, y)
    dir: Float32[Array, " A"]
    velocity: Float32[Array, "A 2"]
    yaw_rate: Float32[Array, " A"]
    contact: Float32[Array, " A"]
    contact_direction: Float32[Array, "A 2"]
    contact_kind: Int32[Array, " A"]
    carrying: Int32[Array, " A"]  # object index, -1 when empty-handed


class TeamState(eqx.Module):
    """One team world: the shared grid, doors and objects, a body and an instruction per agent."""

    wall: Bool[Array, "GH GW"]
    door_id: Int32[Array, "GH GW"]
    door_pos: Int32[Array, "D 2"]
    door_colour: Int32[Array, " D"]  # a colour index of the renderer's palette
    door_state: Int32[Array, " D"]
    door_valid: Bool[Array, " D"]
    door_owner: Int32[Array, " D"]  # OWNER_ANYONE, OWNER_SWITCH or an agent index
    obj_pos: Int32[Array, "N 2"]
    obj_type: Int32[Array, " N"]
    obj_colour: Int32[Array, " N"]
    obj_valid: Bool[Array, " N"]
    switch: Int32[Array, "2"]  # (row, col) of the floor switch; (-1, -1) without one
    bodies: Bodies
    said: Int32[Array, " A"]  # each agent's token in the last step
    instruction: Int32[Array, "A L"]
    family: Int32[Array, ""]
    target: Int32[Array, ""]  # the object to reach (hold and pass) or to place (joint placement)
    anchor: Int32[Array, ""]  # the object to place it next to (joint placement), else -1
    time: Int32[Array, ""]
    game: Int32[Array, ""]
    split: Int32[Array, ""]
    layout_seed: Int32[Array, ""]

    @property
    def num_agents(self) -> int:
        return self.bodies.pos.shape[0]


def agent_cells(state: TeamState) -> Int32[Array, "A 2"]:
    """The (row, col) cell of each agent's centre."""
    return jnp.floor(state.bodies.pos).astype(jnp.int32)[:, ::-1]


def on_switch(state: TeamState) -> Bool[Array, " A"]:
    """Whether each agent stands on the switch (never, in a world without one: its cell is (-1, -1))."""
    return jnp.all(agent_cells(state) == state.switch[None, :], axis=-1)


def switch_pressed(state: TeamState) -> Bool[Array, ""]:
    """Whether an agent stands on the switch."""
    return jnp.any(on_switch(state))


def view(state: TeamState, agent: int | Int32[Array, ""], *, others_solid: bool = True) -> EnvState:
    """The world as the built-in world's `EnvState` seen by `agent`: its body is the world's agent, objects
    the others carry are gone, doors it may not toggle are locked (so interacting with them fails and paths
    avoid them while closed), and, with `others_solid`, the other agents' cells are walls (they collide and
    block paths). Fields the world keeps for its own tasks are empty."""
    bodies = state.bodies
    index = jnp.arange(state.num_agents)
    others = index != agent
    carried_by_others = jnp.any(
        (bodies.carrying[None, :] == jnp.arange(state.obj_type.shape[0])[:, None]) & others[None, :], axis=1
    )
    wall = state.wall
    if others_solid:
        cells = agent_cells(state)
        # A body sharing this agent's cell blocks the neighbouring cell on its side instead (this agent's
        # own cell must stay open for its paths).
        offset = bodies.pos - bodies.pos[agent]  # (x, y)
        along_x = jnp.abs(offset[:, 0]) >= jnp.abs(offset[:, 1])
        side = jnp.where(along_x[:, None], jnp.stack([jnp.zeros_like(offset[:, 0]), jnp.sign(offset[:, 0])], 1),
                         jnp.stack([jnp.sign(offset[:, 1]), jnp.zeros_like(offset[:, 1])], 1))  # fmt: skip
        shared = jnp.all(cells == cells[agent], axis=1)[:, None]
        cells = jnp.where(shared, cells + side.astype(jnp.int32), cells)
        wall = wall | jnp.zeros(wall.shape, bool).at[cells[:, 0], cells[:, 1]].max(others, mode="drop")
    foreign = (state.door_owner != OWNER_ANYONE) & (state.door_owner != agent)
    door_state = jnp.where(foreign & (state.door_state != DOOR_OPEN), DOOR_LOCKED, state.door_state)
    n_entities = state.obj_type.shape[0] + state.door_pos.shape[0]
    empty = jnp.zeros((NUM_STAGES,), jnp.int32)
    plan = jnp.zeros((MAX_PLAN,), jnp.int32)
    pick = lambda x: x[agent]  # noqa: E731
    return EnvState(
        wall=wall,
        door_id=state.door_id,
        door_pos=state.door_pos,
        door_colour=state.door_colour,
        door_state=door_state.astype(jnp.int32),
        door_valid=state.door_valid,
        obj_pos=state.obj_pos,
        obj_valid=state.obj_valid & ~carried_by_others,
        obj_type=state.obj_type,
        obj_colour=state.obj_colour,
        carrying=pick(bodies.carrying),
        agent_pos=pick(bodies.pos),
        agent_dir=pick(bodies.dir),
        start_pos=pick(bodies.pos),
        start_dir=pick(bodies.dir),
        velocity=pick(bodies.velocity),
        yaw_rate=pick(bodies.yaw_rate),
        contact=pick(bodies.contact),
        contact_direction=pick(bodies.contact_direction),
        contact_kind=pick(bodies.contact_kind),
        stage_kind=empty,
        stage_a=empty,
        stage_b=empty,
        num_stages=jnp.int32(0),
        stage=jnp.int32(0),
        plan_kind=plan,
        plan_a=plan,
        plan_b=plan,
        plan_len=jnp.int32(0),
        stage_plan_offset=empty,
        entity_synonym=jnp.zeros((n_entities,), jnp.int32),
        entity_location=jnp.zeros((n_entities,), jnp.int32),
        instruction=state.instruction[agent],
        time=state.time,
        layout_seed=state.layout_seed,
        level=jnp.int32(0),
        game=state.game,
        episode_return=jnp.float32(0.0),
        path_length=jnp.float32(0.0),
        optimal_path_length=jnp.float32(0.0),
    )


__all__ = [
    "COLOUR_TOKENS",
    "FAMILIES",
    "FAMILY_MAX_STEPS",
    "HOLDING_TOKEN",
    "HOLD_AND_PASS",
    "JOINT_PLACEMENT",
    "MAX_AGENTS",
    "MESSAGE_VOCAB",
    "OWNER_ANYONE",
    "OWNER_SWITCH",
    "SPLITS",
    "SPLIT_KNOWLEDGE",
    "Bodies",
    "TeamParams",
    "TeamState",
    "agent_cells",
    "on_switch",
    "switch_pressed",
    "view",
]
