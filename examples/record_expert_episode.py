"""Record the shortest-path expert solving one episode of a level as an annotated GIF.

python examples/record_expert_episode.py --level sima2/Sequence-v0 --out docs/expert_sequence.gif
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import sima2.envs as envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--level", default="sima2/Sequence-v0")
    parser.add_argument("--out", default="docs/expert_sequence.gif")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--size", type=int, default=96, help="first-person image size")
    args = parser.parse_args()

    env, params = envs.make(args.level, image_size=args.size)
    reset, step = jax.jit(env.reset), jax.jit(env.step_no_reset)
    expert = jax.jit(env.expert_action)
    topdown = jax.jit(env.render_topdown, static_argnums=1)
    obs, state = reset(jax.random.key(args.seed), params)
    instruction = env.instruction_text(state)
    plan = env.plan_text(state)
    frames, captions = [], []
    for _ in range(int(params.max_steps)):
        subgoal = plan[int(env.subgoal_index(state))]
        frames.append(envs.side_by_side(np.asarray(obs["image"]), np.asarray(topdown(state, 12))))
        captions.append(f"{instruction}  |  now: {subgoal}")
        obs, state, reward, done, info = step(jax.random.key(0), state, expert(state, params), params)
        terminated = info.terminated
        if bool(done):
            frames.append(envs.side_by_side(np.asarray(obs["image"]), np.asarray(topdown(state, 12))))
            captions.append(f"{instruction}  |  {'success!' if bool(terminated) else 'time out'}")
            break
    path = envs.write_episode(frames, args.out, captions, fps=4, scale=3)
    print(f"wrote {path} ({len(frames)} frames): {instruction}")


if __name__ == "__main__":
    main()
