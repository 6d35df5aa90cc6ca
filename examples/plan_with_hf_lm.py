"""Finetune a language planner on (instruction, plan) pairs and let it plan.

With `--model` (a local folder or Hub id of a GPT-2 / Llama / Qwen2 checkpoint, e.g.
`HuggingFaceTB/SmolLM2-135M`), the pretrained LM is finetuned through rank-8 LoRA adapters with its base
weights frozen, using its own tokenizer. Without it, a tiny random Llama and a word-level tokenizer are
built on the spot, so the example runs offline in a minute.

    python examples/plan_with_hf_lm.py [--model PATH_OR_REPO_ID] [--steps 300]
"""

from __future__ import annotations

import argparse
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from sima2.planning import LanguagePlanner, encode_plan_pairs, load_tokenizer

COLORS = ("red", "green", "blue", "purple")
OBJECTS = ("ball", "key", "box")


def expert_plan(instruction: str) -> list[str]:
    """BabyAI-style decomposition: walk to each object before acting on it."""
    plan = []
    for part in instruction.split(" then "):
        if part.startswith("pick up"):
            plan.append("go to " + part.removeprefix("pick up "))
        plan.append(part)
    return plan


def dataset() -> list[tuple[str, list[str]]]:
    things = [f"the {c} {o}" for c, o in itertools.product(COLORS, OBJECTS)]
    texts = [f"pick up {t}" for t in things[:6]]
    texts += [f"go to {a} then pick up {b}" for a, b in zip(things[6:], things[:6], strict=True)]
    return [(t, expert_plan(t)) for t in texts]


def word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["go", "to", "the", "pick", "up", "then", *COLORS, *OBJECTS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])},
                                      unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF checkpoint folder or Hub id (default: tiny random)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    if args.model:
        tokenizer = load_tokenizer(args.model)
        planner = LanguagePlanner.from_pretrained(args.model, lora_rank=8, key=jax.random.key(0))
    else:
        tokenizer = word_level_tokenizer()
        config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": len(tokenizer),
                  "max_position_embeddings": 64, "tie_word_embeddings": True}
        planner = LanguagePlanner.from_config(config, key=jax.random.key(0))

    pairs = dataset()
    batch = {k: jnp.asarray(v) for k, v in encode_plan_pairs(tokenizer, pairs).items()}
    params, static = eqx.partition(planner, planner.trainable_filter())
    optimiser = optax.adam(args.lr)
    state = optimiser.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(params):
            model = eqx.combine(params, static)
            losses = jax.vmap(lambda p, pm, t, tm: model.plan_loss(p, t, tm, prompt_mask=pm))(
                batch["prompt_ids"], batch["prompt_mask"], batch["target_ids"], batch["target_mask"]
            )
            return losses.mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimiser.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    for i in range(args.steps):
        params, state, loss = step(params, state)
        if i % 50 == 0 or i == args.steps - 1:
            print(f"step {i:4d}  plan loss {float(loss):.4f}")

    planner = eqx.combine(params, static)
    for instruction, plan in pairs[:4]:
        print(f"{instruction!r} -> {planner.plan(tokenizer, instruction, max_new_tokens=32)} (expert: {plan})")
    tokens, pooled = planner.embed(batch["prompt_ids"][0], batch["prompt_mask"][0])
    print(f"instruction embedding for the policy: tokens {tokens.shape}, pooled {pooled.shape}")


if __name__ == "__main__":
    main()
