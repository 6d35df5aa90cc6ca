"""Plans: the text format over a word-level tokenizer, and a tiny planner finetuned on BabyAI-style plans."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sima2.planning import LanguagePlanner, encode_plan_pairs, load_tokenizer, plan_target_ids, split_plan

COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
OBJECTS = ("ball", "key", "box")


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["go", "to", "the", "pick", "up", "open", "door", "then", *COLORS, *OBJECTS]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def expert_plan(instruction: str) -> list[str]:
    """The world expert's decomposition of a BabyAI-style instruction."""
    plan = []
    for part in instruction.split(" then "):
        words = part.split()
        target = " ".join(words[-3:]) if words[0] != "open" else f"the {words[-2]} door"
        if words[0] != "go":
            plan.append(f"go to {target}")
        plan.append(part)
    return plan


def instructions(rng: np.random.Generator, n: int) -> list[str]:
    things = [f"the {c} {o}" for c, o in itertools.product(COLORS, OBJECTS)]
    out = set()
    while len(out) < n:
        kind = rng.integers(4)
        a, b = rng.choice(things, 2, replace=False)
        if kind == 0:
            out.add(f"go to {a}")
        elif kind == 1:
            out.add(f"pick up {a}")
        elif kind == 2:
            out.add(f"open the {rng.choice(COLORS)} door")
        else:
            out.add(f"go to {a} then pick up {b}")
    return sorted(out)


def test_word_level_tokenizer_saves_and_loads_through_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    plan = ["go to the red ball", "pick up the red ball"]
    assert plan_target_ids(loaded, plan) == plan_target_ids(tokenizer, plan)
    assert split_plan(loaded, plan_target_ids(loaded, plan)) == plan


def test_plan_format_round_trip(tokenizer):
    plan = expert_plan("go to the red ball then pick up the blue key")
    assert plan == ["go to the red ball", "go to the blue key", "pick up the blue key"]
    ids = plan_target_ids(tokenizer, plan)
    assert ids[-1] == tokenizer.eos_token_id
    assert split_plan(tokenizer, ids + [7, 8]) == plan  # everything after <eos> is ignored
    batch = encode_plan_pairs(tokenizer, [("go to the red ball", ["go to the red ball"]), ("open the red door", plan)])
    assert batch["prompt_ids"].shape[0] == 2 and batch["prompt_mask"][:, -1].all()  # left-padded prompts
    assert batch["target_mask"][:, 0].all() and not batch["target_mask"][0, -1]  # right-padded targets
    with pytest.raises(ValueError, match="separator"):
        plan_target_ids(tokenizer, ["go to the red ball then open the red door"])
    with pytest.raises(ValueError, match="separator"):
        split_plan(tokenizer, ids, separator="and")
    with pytest.raises(ValueError, match="non-empty"):
        plan_target_ids(tokenizer, [])


@pytest.mark.usefixtures("unique_programs_not_cached")
def test_finetuned_planner_reproduces_held_in_plans(tokenizer):
    pairs = [(text, expert_plan(text)) for text in instructions(np.random.default_rng(0), 24)]
    batch = {k: jnp.asarray(v) for k, v in encode_plan_pairs(tokenizer, pairs).items()}
    config = {
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": len(tokenizer),
        "max_position_embeddings": 64, "eos_token_id": tokenizer.eos_token_id, "tie_word_embeddings": True,
    }
    planner = LanguagePlanner.from_config(config, key=jax.random.key(0))
    optimiser = optax.adamw(3e-3, weight_decay=0.0)
    params, static = eqx.partition(planner, planner.trainable_filter())
    state = optimiser.init(params)

    def loss_fn(params):
        model = eqx.combine(params, static)
        losses = jax.vmap(lambda p, pm, t, tm: model.plan_loss(p, t, tm, prompt_mask=pm))(
            batch["prompt_ids"], batch["prompt_mask"], batch["target_ids"], batch["target_mask"]
        )
        return losses.mean()

    @jax.jit
    def train(params, state):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = optimiser.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, state), losses = jax.lax.scan(step, (params, state), None, length=300)
        return params, state, losses

    params, state, losses = train(params, state)
    assert losses[-1] < 0.05 * losses[0]
    planner = eqx.combine(params, static)
    for instruction, plan in pairs:
        assert planner.plan(tokenizer, instruction, max_new_tokens=24) == plan
