"""One decision step of a team world: every agent's held action in turn (index order) through the built-in
world's physics on that agent's view, the switch's door, the messages, and the team's success.

Bodies collide (a move may not push into another body); the switch's door is
open exactly while an agent stands on the switch (or in the doorway, where it cannot close on a body); a
door owned by one agent keeps its state whatever the others do.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int32

from sima2.envs.team.state import (
    HOLD_AND_PASS,
    JOINT_PLACEMENT,
    MESSAGE_VOCAB,
    OWNER_ANYONE,
    OWNER_SWITCH,
    Bodies,
    TeamState,
    switch_pressed,
    view,
)
from sima2.envs.world import AGENT_RADIUS, DOOR_CLOSED, DOOR_OPEN, entity_in_reach, physics


def _switch_doors(state: TeamState) -> TeamState:
    """The switch's door open while an agent stands on the switch or overlaps the doorway, else closed."""
    pos = state.bodies.pos
    centres = state.door_pos[:, ::-1].astype(jnp.float32) + 0.5  # (x, y)
    overlap = jnp.all(jnp.abs(pos[None, :, :] - centres[:, None, :]) < 0.5 + AGENT_RADIUS, axis=-1)  # [D, A]
    held_open = switch_pressed(state) | jnp.any(overlap, axis=1)
    switched = state.door_owner == OWNER_SWITCH
    door_state = jnp.where(switched, jnp.where(held_open, DOOR_OPEN, DOOR_CLOSED), state.door_state)
    return eqx.tree_at(lambda s: s.door_state, state, door_state.astype(jnp.int32))


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


def team_success(state: TeamState) -> Bool[Array, ""]:
    """Hold and pass: an agent has the target within reach (as "go to" in the built-in world). Joint
    placement: the target lies next to the anchor, held by nobody."""
    reached = jax.vmap(lambda agent: entity_in_reach(view(state, agent, others_solid=False))[0][state.target])(
        jnp.arange(state.num_agents)
    )
    target, anchor = state.target, jnp.maximum(state.anchor, 0)
    lying = ~jnp.any(state.bodies.carrying == target)
    adjacent = jnp.sum(jnp.abs(state.obj_pos[target] - state.obj_pos[anchor])) == 1
    placed = lying & adjacent
    return jnp.where(state.family == HOLD_AND_PASS, jnp.any(reached), (state.family == JOINT_PLACEMENT) & placed)


__all__ = ["team_physics", "team_success"]
