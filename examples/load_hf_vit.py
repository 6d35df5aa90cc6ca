"""Load a Hugging Face ViT checkpoint into sima2 and check it against transformers.

By default a small random ViT is built with transformers and saved locally (works offline); pass a folder
or Hub repo id (e.g. google/vit-base-patch16-224) to use a real checkpoint:

    python examples/load_hf_vit.py [path_or_repo_id]
"""

from __future__ import annotations

import sys
import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from sima2.perception import ImageProcessorConfig, ViTEncoder, preprocess


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            source = sys.argv[1]
            hf = transformers.AutoModel.from_pretrained(source).eval()
        else:
            torch.manual_seed(0)
            config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                                            intermediate_size=768, image_size=64, patch_size=8)
            hf = transformers.ViTModel(config).eval()
            hf.save_pretrained(tmp)
            source = tmp
        encoder = ViTEncoder.from_pretrained(source)
        print(f"loaded {encoder.config.family} encoder: {len(encoder.blocks)} blocks, "
              f"hidden {encoder.config.hidden_size}, patch {encoder.config.patch_size}")

        size = encoder.config.image_size
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels = preprocess(jnp.asarray(image), ImageProcessorConfig(height=size, width=size))
        tokens = eqx.filter_jit(encoder)(pixels)
        with torch.no_grad():
            ref = hf(pixel_values=torch.from_numpy(np.array(pixels))[None]).last_hidden_state[0].numpy()
        print(f"last_hidden_state {tuple(tokens.shape)}, max |sima2 - transformers| = "
              f"{np.abs(np.asarray(tokens) - ref).max():.2e}")

        # Another resolution: position embeddings are resampled exactly as HF's interpolate_pos_encoding.
        wide = jax.random.normal(jax.random.key(0), (3, size, 2 * size))
        print(f"non-square input {tuple(wide.shape)} -> tokens {tuple(eqx.filter_jit(encoder)(wide).shape)}")

        encoder.save_pretrained(f"{tmp}/exported")
        back = transformers.AutoModel.from_pretrained(f"{tmp}/exported")
        print(f"exported back to transformers as {type(back).__name__}")


if __name__ == "__main__":
    main()
