"""ViT-B/16 forward (fp32: 224x224 at batch 1 and 8, 512x512 at batch 1): sima2 jitted vs HF PyTorch eager, in one
run.

Also times `from_pretrained` for both and measures each loader's peak RSS growth in a fresh subprocess.
Usage: python benchmarks/bench_vit.py [--repeats 20] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

LOAD_SCRIPT = textwrap.dedent("""
    import sys, time
    which, folder = sys.argv[1], sys.argv[2]
    def status(field):
        for line in open('/proc/self/status'):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    if which == "sima2":
        import jax
        from sima2.perception import ViTEncoder
        jax.block_until_ready(ViTEncoder.from_pretrained(sys.argv[3]))  # warm imports on a tiny model
        load = lambda: jax.block_until_ready(ViTEncoder.from_pretrained(folder))
    else:
        import torch, transformers
        transformers.ViTModel.from_pretrained(sys.argv[3])
        load = lambda: transformers.ViTModel.from_pretrained(folder)
    open('/proc/self/clear_refs', 'w').write('5')
    before = status('VmRSS')
    start = time.perf_counter()
    load()
    print(time.perf_counter() - start, status('VmHWM') - before)
""")


def median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import equinox as eqx
    import jax
    import torch
    import transformers

    from sima2.perception import ViTEncoder

    torch.set_num_threads(args.threads)
    config = transformers.ViTConfig()  # ViT-B/16, 224x224
    torch.manual_seed(0)
    hf = transformers.ViTModel(config, add_pooling_layer=False).eval()
    tiny = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=32, image_size=32, patch_size=16))
    with tempfile.TemporaryDirectory() as tmp:
        folder, tiny_folder = os.path.join(tmp, "vit-b16"), os.path.join(tmp, "tiny")
        hf.save_pretrained(folder)
        tiny.save_pretrained(tiny_folder)
        weights_mb = os.path.getsize(os.path.join(folder, "model.safetensors")) / 2**20
        encoder = ViTEncoder.from_pretrained(folder)
        forward = jax.jit(jax.vmap(encoder))

        print(f"ViT-B/16 fp32 | jax {jax.__version__} on {jax.devices()[0].platform} | "
              f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
        print(f"{'size':>5} {'batch':>5} {'sima2 ms':>9} {'torch ms':>9} {'ratio':>6}  max|diff|")
        # 512x512 is the seed's render size: position embeddings resampled (HF: interpolate_pos_encoding).
        for size, batch in ((224, 1), (224, 8), (512, 1)):
            pixels = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
            x_jax, x_torch = jax.device_put(pixels), torch.from_numpy(pixels)
            resample = size != config.image_size
            ours = median_ms(lambda: forward(x_jax).block_until_ready(), args.repeats)  # noqa: B023
            with torch.inference_mode():
                run = lambda: hf(pixel_values=x_torch, interpolate_pos_encoding=resample)  # noqa: B023, E731
                theirs = median_ms(run, args.repeats)
                ref = run().last_hidden_state.numpy()
            diff = np.abs(np.asarray(forward(x_jax)) - ref).max()
            print(f"{size:>5} {batch:>5} {ours:>9.1f} {theirs:>9.1f} {ours / theirs:>6.2f}  {diff:.1e}")

        # bf16 weights and activations (XLA:CPU as configured) vs PyTorch's bf16, and their error against fp32.
        bf16 = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16) if eqx.is_inexact_array(x) else x, encoder)
        forward16 = jax.jit(jax.vmap(bf16))
        hf16 = transformers.ViTModel(config, add_pooling_layer=False).eval()
        hf16.load_state_dict(hf.state_dict())
        hf16 = hf16.to(torch.bfloat16)
        print(f"\nbf16 {'size':>5} {'batch':>5} {'sima2 ms':>9} {'torch ms':>9} {'ratio':>6} {'vs fp32':>8}  rel.err")
        for size, batch in ((224, 1), (224, 8)):
            pixels = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
            x16, t16 = jax.device_put(pixels).astype(jax.numpy.bfloat16), torch.from_numpy(pixels).to(torch.bfloat16)
            ours = median_ms(lambda: forward16(x16).block_until_ready(), args.repeats)  # noqa: B023
            fp32 = median_ms(lambda: forward(jax.device_put(pixels)).block_until_ready(), args.repeats)  # noqa: B023
            with torch.inference_mode():
                theirs = median_ms(lambda: hf16(pixel_values=t16), args.repeats)  # noqa: B023
            exact = np.asarray(forward(jax.device_put(pixels)))
            error = np.linalg.norm(np.asarray(forward16(x16), np.float32) - exact) / np.linalg.norm(exact)
            print(f"     {size:>5} {batch:>5} {ours:>9.1f} {theirs:>9.1f} {ours / theirs:>6.2f} {ours / fp32:>7.2f}x  "
                  f"{error:.1e}")

        print(f"\nfrom_pretrained ({weights_mb:.0f} MiB of weights), each in a fresh process:")
        results = {}
        for which in ("sima2", "transformers"):
            out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, which, folder, tiny_folder],
                                 capture_output=True, text=True, check=True)
            seconds, growth = out.stdout.split()[-2:]
            results[which] = (float(seconds), int(growth) / 2**20)
            print(f"  {which:>12}: {float(seconds):6.2f} s, peak RSS +{results[which][1]:.0f} MiB "
                  f"({results[which][1] / weights_mb:.2f}x weights)")
        print(f"  load-time ratio sima2/transformers: {results['sima2'][0] / results['transformers'][0]:.2f}")


if __name__ == "__main__":
    main()
