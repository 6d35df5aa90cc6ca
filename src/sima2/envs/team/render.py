"""Rendering a team world with the built-in world's renderer: each agent's first-person view, with the other
agents (in their colours) and the floor switch drawn as sprites, and the shared top-down map with every
agent's body and heading.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int32, UInt8

from sima2.envs.render import (
    AGENT_COLOURS,
    AGENT_SPRITE,
    PALETTES,
    SHADE_LEVELS,
    SWITCH_COLOUR,
    SWITCH_SPRITE,
    render_first_person,
    render_topdown,
)
from sima2.envs.team.state import TeamState, view
from sima2.envs.world import heading_vectors


def render_agent(state: TeamState, agent: int | Int32[Array, ""], height: int, width: int) -> UInt8[Array, "H W 3"]:
    """What `agent` sees: the world's first-person view from its body, the others and the switch as sprites
    appended to the objects (drawn only: the physics never sees them)."""
    seen = view(state, agent, others_solid=False)
    others = jnp.arange(state.num_agents) != agent
    agent_cells = jnp.floor(state.bodies.pos).astype(jnp.int32)[:, ::-1]
    has_switch = state.switch[0] >= 0
    seen = eqx.tree_at(
        lambda s: (s.obj_pos, s.obj_type, s.obj_colour, s.obj_valid),
        seen,
        (
            jnp.concatenate([seen.obj_pos, agent_cells, jnp.maximum(state.switch, 0)[None]]),
            jnp.concatenate([seen.obj_type, jnp.full((state.num_agents,), AGENT_SPRITE), jnp.array([SWITCH_SPRITE])]),
            jnp.concatenate(
                [seen.obj_colour, jnp.asarray(AGENT_COLOURS[: state.num_agents]), jnp.array([SWITCH_COLOUR])]
            ),
            jnp.concatenate([seen.obj_valid, others, has_switch[None]]),
        ),
    )
    # Bodies are drawn where they stand, not at their cells' centres.
    centres = jnp.concatenate([
        seen.obj_pos[: state.obj_type.shape[0], ::-1].astype(jnp.float32) + 0.5,
        state.bodies.pos,
        jnp.maximum(state.switch, 0)[None, ::-1].astype(jnp.float32) + 0.5,
    ])  # fmt: skip
    return render_first_person(seen, height, width, sprite_centres=centres)


def render_team_topdown(state: TeamState, cell_px: int = 8) -> UInt8[Array, "h w 3"]:
    """The shared top-down map: the world's map seen from agent 0, the switch as a white square, and every
    agent as a disc of its colour with a dark nose in its heading."""
    image = render_topdown(view(state, 0, others_solid=False), cell_px)
    h, w = image.shape[:2]
    y = (np.arange(h, dtype=np.float32) + 0.5) / cell_px
    x = (np.arange(w, dtype=np.float32) + 0.5) / cell_px
    yy, xx = np.meshgrid(y, x, indexing="ij")
    px, py = jnp.asarray(xx), jnp.asarray(yy)
    palette = jnp.asarray(PALETTES)[state.game]
    switch = (jnp.floor(py) == state.switch[0]) & (jnp.floor(px) == state.switch[1])
    plate = switch & (jnp.abs(py - jnp.floor(py) - 0.5) < 0.3) & (jnp.abs(px - jnp.floor(px) - 0.5) < 0.3)
    image = jnp.where(plate[..., None], palette[SWITCH_COLOUR * SHADE_LEVELS], image)
    for agent in range(state.num_agents):
        pos = state.bodies.pos[agent]
        forward, _ = heading_vectors(state.bodies.dir[agent])
        body = (px - pos[0]) ** 2 + (py - pos[1]) ** 2 < 0.3**2
        nose_at = pos + 0.3 * forward
        nose = (px - nose_at[0]) ** 2 + (py - nose_at[1]) ** 2 < 0.12**2
        image = jnp.where(body[..., None], palette[AGENT_COLOURS[agent] * SHADE_LEVELS], image)
        image = jnp.where(nose[..., None], jnp.array([0, 0, 0], jnp.uint8), image)
    return image


__all__ = ["render_agent", "render_team_topdown"]
