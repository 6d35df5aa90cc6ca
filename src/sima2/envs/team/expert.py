"""The team expert: a central planner that gives every agent its role and subgoal from the whole state and
moves each along a shortest path with the built-in world's `navigate` (on that agent's view, where the
others are solid and doors it may not open are locked).

- hold and pass: agent 0 holds the switch (agent 1 does if it already stands on it); the other walks
  through the door and picks up the target (waiting by the door while it is shut). Any further agents
  stay put.
- joint placement: agent 1 opens the right room's door and then stands aside in the middle room; agent 0
  waits facing that door, and once it is open, opens the left room's door, picks up the target, and drops
  it next to the anchor. Any further agents stay put.

- split knowledge: agent 0, the one told the task, stays where it is and speaks; agent 1 acts on what it
  hears only (so alone it waits). The speaker says the target's colour until it hears "holding", then the
  anchor's colour. The listener opens its door and, empty-handed, fetches the object of the colour it
  hears; holding it, it says "holding" and drops it next to the object of the colour it hears (after the
  colour of what it holds, which it still hears for one step). Any further agents stay put.

Only split knowledge speaks; in the other families every agent is silent.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int32

from sima2.envs.expert import (
    UNREACHABLE,
    adjacent,
    distances_at,
    drop_face_point,
    navigate,
    passable_grid,
    stand_cells_for_drop,
)
from sima2.envs.team.state import (
    COLOUR_TOKENS,
    GRID_ROWS,
    HOLDING_TOKEN,
    MIDDLE_ROOM,
    TeamState,
    agent_cells,
    on_switch,
    view,
)
from sima2.envs.world import DOOR_OPEN, DROP, INTERACT, LOOK_CENTRE, NOOP, EnvState

_STAY = jnp.array([NOOP, LOOK_CENTRE, 0], jnp.int32)
_MIDDLE_CELLS = np.array([(r, c) for r in range(1, GRID_ROWS - 1) for c in range(MIDDLE_ROOM[0], MIDDLE_ROOM[1] + 1)])


def _cell_mask(shape: tuple[int, int], cell: Int32[Array, "2"]) -> Bool[Array, "GH GW"]:
    return jnp.zeros(shape, bool).at[cell[0], cell[1]].set(True, mode="drop")


def _centre(cell: Int32[Array, "2"]) -> jax.Array:
    return cell[::-1].astype(jnp.float32) + 0.5


def _reachable(seen: EnvState, goal: Bool[Array, "GH GW"]) -> Bool[Array, ""]:
    cell = jnp.floor(seen.agent_pos).astype(jnp.int32)[::-1]
    return distances_at(goal, passable_grid(seen), cell[None])[0] < UNREACHABLE


def _go_to(seen: EnvState, cell: Int32[Array, "2"], act_key: int) -> Int32[Array, "3"]:
    """Go next to `cell` (an entity's or a door's), face it and press `act_key`."""
    goal = adjacent(_cell_mask(seen.wall.shape, cell)) & passable_grid(seen)
    return navigate(seen, goal, _centre(cell), jnp.int32(act_key))


def _place_next_to(seen: EnvState, obj: Int32[Array, ""]) -> Int32[Array, "3"]:
    """Carry what is held next to object `obj` and drop it there."""
    return navigate(
        seen, stand_cells_for_drop(seen, obj), drop_face_point(seen, obj), jnp.int32(DROP), recentre_tolerance=0.2
    )


def _stand_on(seen: EnvState, cell: Int32[Array, "2"]) -> Int32[Array, "3"]:
    return navigate(seen, _cell_mask(seen.wall.shape, cell), _centre(cell) + 1.0, jnp.int32(NOOP))


def _wait_by_door(seen: EnvState, door: Int32[Array, "2"]) -> Int32[Array, "3"]:
    return _go_to(seen, door, NOOP)


def _hold_and_pass(state: TeamState) -> Int32[Array, "A 3"]:
    # Roles by index (a shared policy reads its index), unless the partner already stands on the switch.
    standing = on_switch(state)
    holder = jnp.where(standing[1] & ~standing[0], 1, 0)
    passer = 1 - holder
    door = state.door_pos[1]
    target = state.obj_pos[state.target]

    def act(agent: int) -> Int32[Array, "3"]:
        seen = view(state, agent)
        hold = _stand_on(seen, state.switch)
        pass_through = jnp.where(
            (state.door_state[1] == DOOR_OPEN) | _reachable(seen, adjacent(_cell_mask(seen.wall.shape, target))),
            _go_to(seen, target, INTERACT),
            _wait_by_door(seen, door),
        )
        role = jnp.where(agent == holder, hold, jnp.where(agent == passer, pass_through, _STAY))
        return role.astype(jnp.int32)

    return jnp.stack([act(a) for a in range(state.num_agents)])


def _joint_placement(state: TeamState) -> Int32[Array, "A 3"]:
    right_door = state.door_pos[1]
    target = state.obj_pos[state.target]
    right_open = state.door_state[1] == DOOR_OPEN

    def placer() -> Int32[Array, "3"]:
        seen = view(state, 0)
        carrying = state.bodies.carrying[0] == state.target
        fetch = _go_to(seen, target, INTERACT)  # opens its own door on the way
        place = _place_next_to(seen, jnp.maximum(state.anchor, 0))
        # The opener goes first: the placer waits where it stands until the right room is open (two bodies
        # moving at once in a room three cells wide can block each other for good), turned to the right door,
        # so that what it waits for is in its view (a policy cloned from it cannot see the door behind it).
        cell = agent_cells(state)[0]
        watch = navigate(seen, _cell_mask(seen.wall.shape, cell), _centre(right_door), jnp.int32(NOOP),
                         skip_recentre=True)  # fmt: skip
        return jnp.where(right_open, jnp.where(carrying, place, fetch), watch)

    def opener() -> Int32[Array, "3"]:
        seen = view(state, 1)
        # Then stand aside in the middle room, off both doors' approach cells (one body cannot cut a room
        # three cells wide, so the placer's way stays open), as far from them as it can.
        cells = jnp.asarray(_MIDDLE_CELLS)
        approaches = jnp.stack([state.door_pos[0] + jnp.array([0, 1]), right_door + jnp.array([0, -1])])
        distance = jnp.min(jnp.sum(jnp.abs(cells[:, None, :] - approaches[None]), axis=-1), axis=1)
        corner = cells[jnp.argmax(distance)]
        aside = _stand_on(seen, corner)
        # Once the door is open the placer goes first: next to it, the opener stands still (unless it is on a
        # doorway's approach, which it clears).
        cell = agent_cells(state)[1]
        near_placer = jnp.max(jnp.abs(agent_cells(state)[0] - cell)) <= 1
        on_approach = jnp.any(jnp.all(approaches == cell[None], axis=-1))
        aside = jnp.where(near_placer & ~on_approach, _STAY, aside)
        return jnp.where(right_open, aside, _go_to(seen, right_door, INTERACT))

    roles = [placer(), opener()] + [_STAY] * (state.num_agents - 2)
    return jnp.stack(roles).astype(jnp.int32)


def _split_knowledge(state: TeamState) -> Int32[Array, "A 4"]:
    colour_token = lambda obj: jnp.asarray(COLOUR_TOKENS)[state.obj_colour[obj]]  # noqa: E731
    anchor = jnp.maximum(state.anchor, 0)
    speaker_says = jnp.where(state.said[1] == HOLDING_TOKEN, colour_token(anchor), colour_token(state.target))

    seen = view(state, 1)
    heard = state.said[0]
    named = state.obj_valid & (jnp.asarray(COLOUR_TOKENS)[state.obj_colour] == heard)
    obj = jnp.argmax(named)
    carrying = state.bodies.carrying[1]
    door = state.door_pos[1]
    fetch = _go_to(seen, state.obj_pos[obj], INTERACT)
    place = _place_next_to(seen, obj)
    empty_handed = jnp.where(
        state.door_state[1] != DOOR_OPEN, _go_to(seen, door, INTERACT), jnp.where(jnp.any(named), fetch, _STAY)
    )
    holding = jnp.where(jnp.any(named) & (obj != carrying), place, _STAY)
    listener = jnp.where(carrying >= 0, holding, empty_handed)
    listener_says = jnp.where(carrying >= 0, HOLDING_TOKEN, 0)

    moves = jnp.stack([_STAY, listener] + [_STAY] * (state.num_agents - 2))
    says = jnp.zeros((state.num_agents,), jnp.int32).at[:2].set(jnp.stack([speaker_says, listener_says]))
    return jnp.concatenate([moves, says[:, None]], axis=1).astype(jnp.int32)


def _silent(moves: Callable[[TeamState], Int32[Array, "A 3"]]) -> Callable[[TeamState], Int32[Array, "A 4"]]:
    return lambda state: jnp.concatenate([moves(state), jnp.zeros((state.num_agents, 1), jnp.int32)], axis=1)


def team_expert_actions(state: TeamState) -> Int32[Array, "A 4"]:
    """Every agent's expert action (key, look, duration, message) in this state."""
    families = [_silent(_hold_and_pass), _silent(_joint_placement), _split_knowledge]  # in FAMILIES' order
    return jax.lax.switch(state.family, families, state)


__all__ = ["team_expert_actions"]
