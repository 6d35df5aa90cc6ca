"""Export a sima2 agent's Hugging Face-backed parts back to PyTorch and run them in transformers.

The agent's vision encoder and its language model (with any LoRA adapters folded into the weights) are
written with `save_pretrained` as `config.json` + `model.safetensors` under Hugging Face's own names, then
loaded with `transformers.AutoModel` / `AutoModelForCausalLM` and run on the same inputs as sima2: the
printed differences are float rounding. The exported language folder also gets a tokenizer: the pretrained
model's (it was bridged to) or the world's word-level one.

    python examples/export_to_pytorch.py [--agent runs/cpu-small/final] [--out runs/exported]

Without `--agent` a fresh `tiny` agent stands in for a trained one (parity does not depend on training).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from sima2.envs import encode_words, get_tokenizer, make
from sima2.planning import CausalLM
from sima2.policy import Agent


def _load_tokenizer(name: str) -> transformers.PreTrainedTokenizerBase | None:
    try:
        return transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        print(f"tokenizer {name!r} not shipped with the export: {error}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default=None, help="a folder written by Agent.save_pretrained (e.g. a run's final/)")
    parser.add_argument("--out", default="runs/exported")
    parser.add_argument("--instruction", default="pick up the red ball , then go to the blue door")
    args = parser.parse_args()

    if args.agent:
        agent = Agent.from_pretrained(args.agent)
    else:  # a fresh agent sized for the built-in world
        agent = Agent.from_preset("tiny", make("sima2/GoTo-v0")[0].spec, key=jax.random.key(0))
    out = Path(args.out)

    # 1. Export: each part alone, as transformers expects it.
    agent.vision.save_pretrained(out / "vision")
    language = agent.planner.merged_backbone()  # LoRA adapters folded in
    language.save_pretrained(out / "language")
    bridge = agent.config.text_bridge
    # Ship a tokenizer with the language model: the world's word-level one if it reads world ids, else the
    # pretrained one it was bridged to (when that can still be loaded from where it came from).
    tokenizer = get_tokenizer() if bridge is None else _load_tokenizer(bridge.tokenizer_name)
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "language")
    print(f"wrote {out / 'vision'} and {out / 'language'}")

    # 2. Vision: the same screenshot through sima2 and through transformers.
    # transformers' ViTModel takes "no pooler" as an argument, not from config.json.
    config = agent.vision.config
    no_pooler = {"add_pooling_layer": False} if config.family == "vit" and not config.use_pooler else {}
    hf_vision = transformers.AutoModel.from_pretrained(out / "vision", **no_pooler).eval()
    size = agent.vision.config.image_size
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels = agent.preprocess_image(jnp.asarray(image))
    ours = np.asarray(eqx.filter_jit(agent.vision)(pixels))
    with torch.no_grad():
        theirs = hf_vision(pixel_values=torch.from_numpy(np.array(pixels))[None]).last_hidden_state[0].numpy()
    print(f"vision   {type(hf_vision).__name__:24s} tokens {ours.shape}: max |sima2 - transformers| "
          f"{np.abs(ours - theirs).max():.1e}")

    # 3. Language: the instruction's ids (through the agent's token bridge when it has one).
    world_ids = jnp.asarray(encode_words(args.instruction), jnp.int32)
    ids, mask = bridge(world_ids) if bridge is not None else (world_ids, world_ids != 0)
    inputs = {"input_ids": torch.from_numpy(np.array(ids))[None],
              "attention_mask": torch.from_numpy(np.array(mask, np.int64))[None]}
    if isinstance(language, CausalLM):
        hf_language = transformers.AutoModelForCausalLM.from_pretrained(out / "language").eval()
        ours = np.asarray(eqx.filter_jit(lambda m, i, v: m(i, attention_mask=v))(language, ids, mask))
        with torch.no_grad():
            theirs = hf_language(**inputs).logits[0].numpy()
        what = "logits"
    else:
        hf_language = transformers.AutoModel.from_pretrained(out / "language").eval()
        ours = np.asarray(eqx.filter_jit(lambda m, i, v: m(i, v))(language, ids, mask))
        with torch.no_grad():
            theirs = hf_language(**inputs).last_hidden_state[0].numpy()
        what = "hidden states"
    valid = np.asarray(mask)
    print(f"language {type(hf_language).__name__:24s} {what} {ours[valid].shape}: max |sima2 - transformers| "
          f"{np.abs(ours[valid] - theirs[valid]).max():.1e}")


if __name__ == "__main__":
    main()
