"""LanguagePlanner: embeddings for the policy, LoRA adapters, trainable filter, construction."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sima2.planning import CausalLM, LanguagePlanner, TextEncoder

TINY_LLAMA = {
    "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 48, "vocab_size": 60, "max_position_embeddings": 64,
    "eos_token_id": 2,
}
TINY_BERT = {
    "model_type": "bert", "num_hidden_layers": 2, "hidden_size": 24, "num_attention_heads": 4,
    "intermediate_size": 40, "vocab_size": 60, "max_position_embeddings": 32,
}


@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_BERT], ids=["llama", "bert"])
def test_embed_shapes_padding_and_vmap(config):
    planner = LanguagePlanner.from_config(config, key=jax.random.key(0))
    assert isinstance(planner.backbone, CausalLM if config["model_type"] == "llama" else TextEncoder)
    assert planner.hidden_size == config["hidden_size"]
    ids = jnp.array([[5, 9, 13, 7, 0, 0], [5, 9, 13, 7, 21, 4]])
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1] * 6])
    tokens, pooled = jax.jit(jax.vmap(planner.embed))(ids, mask)
    assert tokens.shape == (2, 6, config["hidden_size"]) and pooled.shape == (2, config["hidden_size"])
    assert not jnp.any(tokens[0, 4:])  # padding carries nothing
    np.testing.assert_allclose(pooled[0], tokens[0, :4].mean(0), atol=1e-6)
    # Right padding does not change real tokens' embeddings.
    alone, alone_pooled = eqx.filter_jit(planner.embed)(ids[0, :4], mask[0, :4].astype(bool))
    np.testing.assert_allclose(tokens[0, :4], alone, atol=1e-5)
    np.testing.assert_allclose(pooled[0], alone_pooled, atol=1e-5)
    # Different instructions embed differently.
    assert float(jnp.abs(pooled[0] - pooled[1]).max()) > 1e-4


def test_from_pretrained_picks_backbone_by_model_type(tmp_path):
    for config, cls in ((TINY_LLAMA, CausalLM), (TINY_BERT, TextEncoder)):
        model = cls.from_config(config, key=jax.random.key(1))
        folder = tmp_path / config["model_type"]
        model.save_pretrained(folder)
        planner = LanguagePlanner.from_pretrained(folder)
        assert isinstance(planner.backbone, cls)
        ids = jnp.arange(3, 10)
        embed = eqx.filter_jit(lambda p, i, m: p.embed(i, m))
        np.testing.assert_allclose(
            embed(planner, ids, jnp.ones(7, bool))[0],
            embed(LanguagePlanner(backbone=model, lora=None), ids, jnp.ones(7, bool))[0],
            atol=1e-6,
        )


@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_BERT], ids=["llama", "bert"])
def test_zero_initialised_lora_is_the_base_model(config):
    base = LanguagePlanner.from_config(config, key=jax.random.key(0))
    adapted = base.with_lora(4, key=jax.random.key(1))
    ids, mask = jnp.arange(3, 15), jnp.ones(12, bool)
    tokens_base, pooled_base = eqx.filter_jit(base.embed)(ids, mask)
    tokens, pooled = eqx.filter_jit(adapted.embed)(ids, mask)
    np.testing.assert_array_equal(tokens, tokens_base)
    np.testing.assert_array_equal(pooled, pooled_base)
    # Adapters sit on every attention and MLP projection of every block.
    assert len(adapted.lora) == config["num_hidden_layers"]
    assert len(adapted.lora[0]) == 4


def test_lora_training_moves_only_adapters():
    # Larger init than HF's default: LoRA cannot rescale the frozen output embeddings, and tiny ones cap
    # how far any adapter can move the logits.
    config = dict(TINY_LLAMA, initializer_range=0.2)
    planner = LanguagePlanner.from_config(config, key=jax.random.key(0), lora_rank=4)
    spec = planner.trainable_filter()
    trainable, frozen = eqx.partition(planner, spec)
    n_trainable = sum(x.size for x in jax.tree.leaves(trainable))
    assert n_trainable == sum(x.size for x in jax.tree.leaves(planner.lora))
    assert not jax.tree.leaves(eqx.filter(frozen.lora, eqx.is_array))

    prompt, target, mask = jnp.array([5, 6, 7, 2]), jnp.array([8, 9, 10, 2]), jnp.ones(4, bool)
    optimiser = optax.adam(1e-2)
    state = optimiser.init(trainable)

    @eqx.filter_jit
    def step(trainable, state):
        loss, grads = eqx.filter_value_and_grad(
            lambda t: eqx.combine(t, frozen).plan_loss(prompt, target, mask)
        )(trainable)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(trainable, updates), state, loss

    first = None
    for _ in range(40):
        trainable, state, loss = step(trainable, state)
        first = loss if first is None else first
    assert loss < 0.5 * first
    trained = eqx.combine(trainable, frozen)
    same_base = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), trained.backbone, planner.backbone)
    assert all(jax.tree.leaves(same_base))
    # Folding the adapters in gives a plain backbone with the finetuned behaviour.
    merged = trained.merged_backbone()
    logits = merged(jnp.concatenate([prompt, target]))
    np.testing.assert_allclose(
        logits, trained.backbone.__class__.__call__(merged, jnp.concatenate([prompt, target])), atol=0
    )
    assert not jnp.allclose(logits, planner.backbone(jnp.concatenate([prompt, target])), atol=1e-4)


def test_without_lora_everything_trains_and_bad_input_is_named():
    planner = LanguagePlanner.from_config(TINY_BERT, key=jax.random.key(0))
    spec = planner.trainable_filter()
    assert all(jax.tree.leaves(spec))
    with pytest.raises(TypeError, match="CausalLM"):
        planner.plan_loss(jnp.array([1, 2]), jnp.array([3]), jnp.array([True]))
    with pytest.raises(ValueError, match="rank"):
        planner.with_lora(0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="model_type"):
        LanguagePlanner.from_config({"model_type": "t5"}, key=jax.random.key(0))
