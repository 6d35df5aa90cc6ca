"""Recorded episodes and their GIFs: an agent's first episode in each of a batch of worlds, recorded through
the one rollout (without auto-reset, so each world stops where its episode ends), with what it saw, the
top-down map, its outcome and, for an agent that writes plans, its plan and the subgoal it acted on at each
step; `write_episode_gif` draws them above every frame.

    episodes = record_episodes(agent, env, params, key, num_episodes=4, max_steps=64, use_plan=True)
    write_episode_gifs(episodes, "gifs", ["a", "b", "c", "d"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree, UInt8

from sima2.contract import AbstractAgent, Transition
from sima2.training.rollout import AgentActor, PlanningActor, rollout, state_from_reset


@dataclasses.dataclass(frozen=True)
class Episode:
    """One recorded episode: the agent's views and top-down maps (first frame = the reset), its instruction,
    whether it succeeded, and how it ended ("success", "timeout", "failed" when the env ended it without success,
or "cut" when `max_steps` ran out first).
    For an agent that followed its own plan: the plan's subgoals as text and, per decision, the index of the
    subgoal it acted on (empty otherwise)."""

    frames: UInt8[np.ndarray, "T H W 3"]
    topdown: UInt8[np.ndarray, "T h w 3"]
    instruction: str
    success: bool
    length: int
    outcome: str
    plan: tuple[str, ...] = ()
    subgoal_per_step: tuple[int, ...] = ()


@eqx.filter_jit
def _record(
    agent: AbstractAgent, env: Any, params: PyTree, obs: PyTree, state: PyTree, key: PRNGKeyArray,
    max_steps: int, deterministic: bool, use_plan: bool,
) -> tuple:
    """The first episode of each world (one rollout without auto-reset, one step more than `max_steps` so
    that the frame an episode ends in is recorded too): agent views, top-down maps, per step whether the
    episode ended with success, with a time-out, at all, and (with `use_plan`) the plan and current subgoal."""
    if use_plan:
        actor = PlanningActor.of(agent, deterministic=deterministic)
    else:
        actor = AgentActor(agent, deterministic=deterministic)

    def keep(step: Transition, world: PyTree) -> tuple:
        plan = (step.instruction.plan, step.agent.subgoal) if use_plan else None
        return step.obs["image"], jax.vmap(env.render_topdown)(world), step.done & step.info.success, \
            step.done & step.info.truncated, step.done, plan

    start = state_from_reset(actor, obs, state)
    _, (images, maps, success, timeout, done, plan) = rollout(
        actor, env, params, start, key, max_steps + 1, auto_reset=False, keep=keep, params_per_world=True,
        keep_instruction=use_plan,
    )
    return images, maps, success[:max_steps], timeout[:max_steps], done[:max_steps], plan


@eqx.filter_jit
def _reset_and_record(agent, env, params, key, max_steps: int, deterministic: bool, use_plan: bool):
    reset_key, run_key = jax.random.split(key)
    num = params.split.shape[0]
    obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, num), params)
    # The world's own word ids (captions), whatever tokenizer the observations use.
    return state.instruction, _record(agent, env, params, obs, state, run_key, max_steps, deterministic, use_plan)


def _episodes(agent: Any, instructions: np.ndarray, outs: tuple) -> list[Episode]:
    from sima2.envs.vocabulary import decode_ids
    from sima2.policy.plans import instruction_tokenizer, plan_tokens

    *arrays, plan = jax.device_get(outs)
    images, maps, success, timeout, done = (np.asarray(x) for x in arrays)
    tokenizer, pad = (instruction_tokenizer(agent), plan_tokens(agent).pad) if plan is not None else (None, None)
    episodes = []
    for world in range(images.shape[1]):
        ended = np.flatnonzero(done[:, world])
        length = int(ended[0]) + 1 if ended.size else done.shape[0]
        won = bool(success[:, world].any())
        outcome = "success" if won else "timeout" if timeout[:, world].any() else "cut"
        texts, per_step = (), ()
        if plan is not None:
            written, current = plan
            count = int(written.count[0, world])
            texts = tuple(tokenizer.decode([int(i) for i in written.subgoals[0, world, k] if i != pad],
                                           skip_special_tokens=True) for k in range(count))
            per_step = tuple(int(i) for i in current[:length, world])
        episodes.append(Episode(
            frames=images[: length + 1, world], topdown=maps[: length + 1, world],
            instruction=decode_ids(instructions[world]), success=won, length=length, outcome=outcome,
            plan=texts, subgoal_per_step=per_step,
        ))
    return episodes


def _batched(params: PyTree, num: int) -> PyTree:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), params)


def record_episodes(
    agent: Any, env: Any, params: PyTree, key: PRNGKeyArray, num_episodes: int, max_steps: int,
    *, deterministic: bool = True, use_plan: bool = False,
) -> list[Episode]:
    """`num_episodes` fresh episodes of at most `max_steps` decisions of a `Sima2Env`, in one jitted call.

    `params` is one `EnvParams` for every world or has a leading axis of `num_episodes` (e.g. one split per
    world). `deterministic` takes the agent's most likely action (greedy) instead of sampling; `use_plan`:
    the agent writes and follows its own plan (`sima2.training.rollout.PlanningActor`), recorded too.
    """
    if num_episodes < 1 or max_steps < 1:
        raise ValueError(f"num_episodes and max_steps must be positive, got {num_episodes} and {max_steps}")
    if jnp.ndim(params.split) == 0:
        params = _batched(params, num_episodes)
    elif params.split.shape[0] != num_episodes:
        raise ValueError(f"params has a leading axis of {params.split.shape[0]}, expected {num_episodes}")
    instructions, outs = _reset_and_record(agent, env, params, key, max_steps, deterministic, use_plan)
    return _episodes(agent, np.asarray(instructions), outs)


def play_episode(
    agent: Any, env: Any, params: PyTree, obs: PyTree, state: PyTree, key: PRNGKeyArray, max_steps: int,
    *, deterministic: bool = True, use_plan: bool = False,
) -> Episode:
    """One episode from a given world (e.g. `sima2.envs.instruct.find_world`'s), jitted like `record_episodes`."""
    add_axis = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[None], tree)  # noqa: E731
    outs = _record(agent, env, add_axis(params), add_axis(obs), add_axis(state), key, max_steps, deterministic,
                   use_plan)
    return _episodes(agent, np.asarray(state.instruction)[None], outs)[0]


def _caption(episode: Episode, t: int) -> str:
    """The instruction, then the plan with the subgoal acted on at decision `t` marked, then the step."""
    lines = [episode.instruction]
    if episode.plan:
        now = episode.subgoal_per_step[min(t, len(episode.subgoal_per_step) - 1)]
        lines.append("plan: " + " > ".join(f"[{s}]" if k == now else s for k, s in enumerate(episode.plan)))
    elif episode.subgoal_per_step:
        lines.append("plan: (none written)")
    lines.append(f"step {t}/{episode.length}")
    return "\n".join(lines)


def write_episode_gif(episode: Episode, path: str | Path, *, topdown: bool = True, fps: int = 4) -> Path:
    """A GIF of the episode with the instruction, the plan (the current subgoal in brackets), the step and
    the outcome drawn above every frame."""
    from sima2.envs.video import side_by_side, write_episode

    frames = [side_by_side(f, m) if topdown else f for f, m in zip(episode.frames, episode.topdown, strict=True)]
    last = {"success": "SUCCESS", "timeout": "FAILED (time limit)", "failed": "FAILED", "cut": "not finished"}[
        episode.outcome]
    captions = [_caption(episode, t) for t in range(len(frames))]
    captions[-1] = f"{_caption(episode, episode.length)}: {last}"
    hold = 3  # repeat the final frame so the outcome stays on screen
    frames += [frames[-1]] * hold
    captions += [captions[-1]] * hold
    scale = max(1, 256 // episode.frames.shape[1])
    return write_episode(frames, path, captions, fps=fps, scale=scale, caption_lines=5 if episode.plan else 3)


def write_episode_gifs(
    episodes: Sequence[Episode], folder: str | Path, names: Sequence[str], *, topdown: bool = True
) -> list[Path]:
    """`write_episode_gif` for each episode, as `folder/<name>.gif`."""
    if len(names) != len(episodes):
        raise ValueError(f"got {len(names)} names for {len(episodes)} episodes")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_episode_gif(e, folder / f"{n}.gif", topdown=topdown) for e, n in zip(episodes, names, strict=True)]


__all__ = ["Episode", "play_episode", "record_episodes", "write_episode_gif", "write_episode_gifs"]
