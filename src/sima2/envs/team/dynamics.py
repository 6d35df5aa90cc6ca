"""One decision step of a team world: every agent's held action in turn (index order) through the built-in
world's physics on that agent's view, the switch's door, the messages, and the team's success or failure.

Bodies collide (a move may not push into another body); the switch's door is
open exactly while an agent stands on the switch, and closing pushes a body out of its frame; a
door owned by one agent keeps its state whatever the others do.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int32

from sima2.envs.team.state import (
    HOLD_AND_PASS,
    MESSAGE_VOCAB,
    OWNER_ANYONE,
    OWNER_SWITCH,
    SPLIT_KNOWLEDGE,
    Bodies,
    TeamState,
    switch_pressed,
    view,
)
from sima2.envs.world import AGENT_RADIUS, DOOR_CLOSED, DOOR_OPEN, physics


def _switch_doors(state: TeamState) -> TeamState:
    """The switch's door open exactly while an agent stands on the switch. A door that closes pushes a body in
    its frame back out to the side its centre is on (the team layout's doors sit in walls that run along y),
    so a passer must be through while the switch is held: a moment's press is not enough."""
    pressed = switch_pressed(state)
    switched = (state.door_owner == OWNER_SWITCH) & state.door_valid
    door_state = jnp.where(switched, jnp.where(pressed, DOOR_OPEN, DOOR_CLOSED), state.door_state)
    pos = state.bodies.pos
    for door in range(state.door_pos.shape[0]):
        row, col = state.door_pos[door, 0].astype(jnp.float32), state.door_pos[door, 1].astype(jnp.float32)
        in_frame = (jnp.abs(pos[:, 0] - (col + 0.5)) < 0.5 + AGENT_RADIUS) & (
            jnp.abs(pos[:, 1] - (row + 0.5)) < 0.5 + AGENT_RADIUS
        )
        push = switched[door] & ~pressed & in_frame
        out_x = jnp.where(pos[:, 0] < col + 0.5, col - AGENT_RADIUS - 0.01, col + 1.0 + AGENT_RADIUS + 0.01)
        out_y = jnp.clip(pos[:, 1], row + AGENT_RADIUS + 0.01, row + 1.0 - AGENT_RADIUS - 0.01)
        pos = jnp.where(push[:, None], jnp.stack([out_x, out_y], axis=1), pos)
    return eqx.tree_at(lambda s: (s.door_state, s.bodies.pos), state, (door_state.astype(jnp.int32), pos))


def _act(state: TeamState, agent: Int32[Array, ""], action: Int32[Array, "4"]) -> tuple[TeamState, Bool[Array, ""]]:
    """Agent `agent` holds its (key, look, duration) action; returns the new state and whether it was invalid."""
    before = view(state, agent, others_solid=False)
    # The others' bodies as obstacles; the agent itself is moved far away from its own position.
    others = jnp.where((jnp.arange(state.num_agents) == agent)[:, None], -100.0, state.bodies.pos)
    after, invalid = physics(before, action[:3], others)
    own = (state.door_owner == OWNER_ANYONE) | (state.door_owner == agent)
    door_state = jnp.where(own, after.door_state, state.door_state)
    put = lambda field, value: getattr(state.bodies, field).at[agent].set(value)  # noqa: E731
    bodies = Bodies(
        pos=put("pos", after.agent_pos),
        dir=put("dir", after.agent_dir),
        velocity=put("velocity", after.velocity),
        yaw_rate=put("yaw_rate", after.yaw_rate),
        contact=put("contact", after.contact),
        contact_direction=put("contact_direction", after.contact_direction),
        contact_kind=put("contact_kind", after.contact_kind),
        carrying=put("carrying", after.carrying),
    )
    state = eqx.tree_at(
        lambda s: (s.door_state, s.obj_pos, s.bodies), state, (door_state.astype(jnp.int32), after.obj_pos, bodies)
    )
    return _switch_doors(state), invalid


def team_physics(state: TeamState, actions: Int32[Array, "A 4"]) -> tuple[TeamState, Bool[Array, " A"]]:
    """Every agent's action in index order, then the messages; returns the new state and which actions were
    invalid."""

    def one(state: TeamState, agent_action: tuple) -> tuple[TeamState, Bool[Array, ""]]:
        agent, action = agent_action
        return _act(state, agent, action)

    agents = jnp.arange(state.num_agents, dtype=jnp.int32)
    state, invalid = jax.lax.scan(one, _switch_doors(state), (agents, actions))
    said = jnp.clip(actions[:, 3], 0, MESSAGE_VOCAB - 1).astype(jnp.int32)
    return eqx.tree_at(lambda s: (s.said, s.time), state, (said, state.time + 1)), invalid


def team_success(before: TeamState, after: TeamState) -> Bool[Array, ""]:
    """Whether a step completed the task. Hold and pass: an agent holds the target. Joint placement and split
    knowledge: the target was dropped next to the anchor in this step."""
    target, anchor = after.target, jnp.maximum(after.anchor, 0)
    held = jnp.any(after.bodies.carrying == target)
    dropped = jnp.any(before.bodies.carrying == target) & ~held
    placed = dropped & (jnp.sum(jnp.abs(after.obj_pos[target] - after.obj_pos[anchor])) == 1)
    return jnp.where(after.family == HOLD_AND_PASS, held, placed)


def team_failure(before: TeamState, after: TeamState, success: Bool[Array, ""]) -> Bool[Array, ""]:
    """Split knowledge ends in failure when an agent picks up any object but the target, or drops the target
    anywhere but next to the anchor (a drop without the step's `success`): a listener that guesses succeeds
    at most once in 5 x 4 = 20 episodes."""
    carrying = after.bodies.carrying
    wrong_pick = jnp.any((carrying >= 0) & (carrying != after.target))
    dropped = jnp.any(before.bodies.carrying == before.target) & ~jnp.any(carrying == after.target)
    return (after.family == SPLIT_KNOWLEDGE) & (wrong_pick | (dropped & ~success))


__all__ = ["team_failure", "team_physics", "team_success"]
