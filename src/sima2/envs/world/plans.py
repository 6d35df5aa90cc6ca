"""Expert plans and task progress: the subgoal list each instruction clause expands to, and whether the
current clause is satisfied.

The plan is stored in the state at generation (`_with_plan`); the expert and the env read it.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int32

from sima2.envs import vocabulary as voc
from sima2.envs.world.geometry import entity_colours, entity_in_reach
from sima2.envs.world.language import _concat_pieces
from sima2.envs.world.state import DOOR_LOCKED, DOOR_OPEN, MAX_PLAN, NUM_STAGES, EnvState

# --- expert plan (subgoal list) --------------------------------------------------------------------------
SUBGOAL_GOTO, SUBGOAL_PICKUP, SUBGOAL_OPEN, SUBGOAL_PUT = range(4)


def key_for_door(state: EnvState, door_entity: Int32[Array, ""]) -> Int32[Array, ""]:
    """Index of the key object matching a door's colour (0 if none; only used when the door is locked)."""
    colour = entity_colours(state)[door_entity]
    match = (state.obj_type == voc.KEY) & (state.obj_colour == colour) & state.obj_valid
    return jnp.argmax(match).astype(jnp.int32)


def _stage_plan(
    state: EnvState, t: int
) -> tuple[Int32[Array, "4"], Int32[Array, "4"], Int32[Array, "4"], Int32[Array, ""]]:
    kind, a, b = state.stage_kind[t], state.stage_a[t], state.stage_b[t]
    n_obj = state.obj_type.shape[0]
    locked = (kind == voc.OPEN) & (state.door_state[jnp.clip(a - n_obj, 0)] == DOOR_LOCKED)
    key = key_for_door(state, a)
    g, p, o, u = SUBGOAL_GOTO, SUBGOAL_PICKUP, SUBGOAL_OPEN, SUBGOAL_PUT
    plans_kind = jnp.array([[g, 0, 0, 0], [g, p, 0, 0], [g, o, 0, 0], [g, p, g, u], [g, p, g, o]], jnp.int32)
    plans_len = jnp.array([1, 2, 2, 4, 4], jnp.int32)
    row = jnp.where(locked, 4, kind)
    plan_a = jnp.where(
        row == 4,
        jnp.stack([key, key, a, a]),
        jnp.where(row == 3, jnp.stack([a, a, b, a]), jnp.stack([a, a, a, a])),
    )
    plan_b = jnp.where(row == 3, jnp.stack([b, b, b, b]), jnp.stack([b, b, b, b]))
    length = jnp.where(t < state.num_stages, plans_len[row], 0)
    return plans_kind[row], plan_a.astype(jnp.int32), plan_b.astype(jnp.int32), length


def _with_plan(state: EnvState) -> EnvState:
    parts = [_stage_plan(state, t) for t in range(NUM_STAGES)]
    lengths = jnp.stack([part[3] for part in parts])
    offsets = (jnp.cumsum(lengths) - lengths).astype(jnp.int32)
    fields = []
    for f in range(3):
        out, _ = _concat_pieces(jnp.stack([part[f] for part in parts]), lengths, MAX_PLAN)
        fields.append(out)
    return eqx.tree_at(
        lambda s: (s.plan_kind, s.plan_a, s.plan_b, s.plan_len, s.stage_plan_offset),
        state,
        (fields[0], fields[1], fields[2], jnp.sum(lengths).astype(jnp.int32), offsets),
    )


# --- task progress ---------------------------------------------------------------------------------------
def stage_complete(state: EnvState) -> Bool[Array, ""]:
    """Whether the current instruction clause is satisfied in this state."""
    t = jnp.minimum(state.stage, NUM_STAGES - 1)
    kind, a, b = state.stage_kind[t], state.stage_a[t], state.stage_b[t]
    n_obj = state.obj_type.shape[0]
    reach, _ = entity_in_reach(state)
    goto_done = reach[a]
    pickup_done = state.carrying == a
    open_done = state.door_state[jnp.clip(a - n_obj, 0, state.door_state.shape[0] - 1)] == DOOR_OPEN
    a_obj = jnp.clip(a, 0, n_obj - 1)
    b_obj = jnp.clip(b, 0, n_obj - 1)
    manhattan = jnp.sum(jnp.abs(state.obj_pos[a_obj] - state.obj_pos[b_obj]))
    put_done = (state.carrying != a) & (manhattan == 1)
    done = jnp.stack([goto_done, pickup_done, open_done, put_done])[kind]
    return done & (state.stage < state.num_stages)
