"""Greedy generation speed: sima2 `generate` (one jitted program) vs Hugging Face PyTorch `generate`.

Random models shaped like GPT-2 small and SmolLM-135M, batch 1 and 8, a 16-token prompt, 64 new greedy
tokens. Both run in this process on the same weights; the outputs are checked to be token-identical.
Each new token reads every weight once, so the last column is the memory bound on tokens/s: batch x the
bandwidth of one matrix-vector product over the model's largest weight (the output embedding, timed here in
JAX) / the model's weight bytes.

    python benchmarks/bench_generate.py [--repeats 3] [--models gpt2,smollm] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from sima2.planning import CausalLM, generate  # noqa: E402

PROMPT_LEN = 16
NEW_TOKENS = 64


def hf_models() -> dict[str, callable]:
    return {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config()),  # GPT-2 small: 124M
        "smollm": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(  # SmolLM-135M's shape
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
        )),
    }


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def weight_read_bound(lm: CausalLM) -> tuple[float, float]:
    """(bytes of weights read per decoding step, GB/s of a matrix-vector product over the output embedding)."""
    arrays = [x for x in jax.tree.leaves(eqx.filter(lm, eqx.is_array)) if x is not lm.position_embeddings]
    weight_bytes = sum(x.nbytes for x in arrays)
    head = lm.embed_tokens if lm.lm_head is None else lm.lm_head
    vector = jnp.ones((head.shape[1],), head.dtype)
    matvec = jax.jit(lambda w, v: w @ v)
    matvec(head, vector).block_until_ready()
    seconds = best_time(lambda: matvec(head, vector).block_until_ready(), 20)
    return weight_bytes, head.nbytes / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="gpt2,smollm")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")
    print(f"prompt {PROMPT_LEN} tokens, {NEW_TOKENS} new greedy tokens, best of {args.repeats}")
    print(f"{'model':8} {'batch':>5} {'sima2 tok/s':>12} {'HF tok/s':>10} {'ratio':>6}  identical  "
          f"memory bound tok/s (x HF)")
    factories = hf_models()
    for name in args.models.split(","):
        torch.manual_seed(0)
        hf = factories[name]().eval()
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            lm = CausalLM.from_pretrained(tmp)
        weight_bytes, bandwidth = weight_read_bound(lm)
        for batch in (int(b) for b in args.batches.split(",")):
            prompts = np.random.default_rng(batch).integers(1, 1000, size=(batch, PROMPT_LEN))
            torch_prompts = torch.tensor(prompts)
            jax_prompts = jnp.asarray(prompts, jnp.int32)

            def run_hf(hf=hf, torch_prompts=torch_prompts):
                with torch.inference_mode():
                    return hf.generate(
                        torch_prompts, attention_mask=torch.ones_like(torch_prompts), do_sample=False,
                        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0,
                    )

            def run_sima2(lm=lm, jax_prompts=jax_prompts):
                return generate(lm, jax_prompts, max_new_tokens=NEW_TOKENS).block_until_ready()

            ours, theirs = np.asarray(run_sima2()), run_hf().numpy()  # warm-up (and compile)
            t_sima2 = best_time(run_sima2, args.repeats)
            t_hf = best_time(run_hf, args.repeats)
            tokens = batch * NEW_TOKENS
            identical = "yes" if np.array_equal(ours, theirs) else "NO"
            bound = batch * bandwidth * 1e9 / weight_bytes
            print(f"{name:8} {batch:5d} {tokens / t_sima2:12.1f} {tokens / t_hf:10.1f} "
                  f"{t_hf / t_sima2:5.2f}x  {identical:9}  {bound:7.1f} ({bound * t_hf / tokens:.2f}x)", flush=True)
        print(f"  {name}: {weight_bytes / 1e6:.0f} MB of weights per step, matrix-vector product at "
              f"{bandwidth:.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
