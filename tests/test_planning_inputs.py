"""Bad inputs to the language models fail loudly with the argument named, instead of NaN or garbage."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sima2.planning import CausalLM, LMConfig, TextEncoder, TextEncoderConfig, generate

LLAMA = {
    "model_type": "llama", "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 48, "vocab_size": 97, "max_position_embeddings": 64,
}
GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 4, "vocab_size": 97, "n_positions": 8}
BERT = {
    "model_type": "bert", "num_hidden_layers": 1, "hidden_size": 24, "num_attention_heads": 4,
    "intermediate_size": 40, "vocab_size": 60, "max_position_embeddings": 32,
}


@pytest.fixture(scope="module")
def llama():
    return CausalLM.from_config(LLAMA, key=jax.random.key(0))


def test_out_of_range_token_ids_are_named(llama):
    with pytest.raises(ValueError, match=r"500 at position 1.*vocab_size=97"):
        llama(jnp.array([5, 500]))
    with pytest.raises(ValueError, match=r"-1 at position 0"):
        llama.hidden_states(jnp.array([-1, 5]))
    with pytest.raises(ValueError, match=r"prompt_ids has 97 at position \(1, 0\)"):
        generate(llama, jnp.array([[5, 6], [97, 6]]), max_new_tokens=1)
    bert = TextEncoder.from_config(BERT, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"input_ids has 60 .*vocab_size=60"):
        bert(jnp.array([1, 60]))
    with pytest.raises(ValueError, match=r"token_type_ids has 2 .*type_vocab_size=2"):
        bert(jnp.array([1, 2]), token_type_ids=jnp.array([0, 2]))
    # Traced ids cannot be checked (no host callback in compiled code): nothing raises under jit.
    assert eqx.filter_jit(llama)(jnp.array([5, 500])).shape == (2, 97)


def test_gpt2_sequence_longer_than_its_positions_raises():
    gpt2 = CausalLM.from_config(GPT2, key=jax.random.key(0))
    assert jnp.all(jnp.isfinite(gpt2(jnp.arange(8))))
    with pytest.raises(ValueError, match="9 tokens exceed the model's 8 learned positions"):
        gpt2(jnp.arange(9))
    with pytest.raises(ValueError, match="9 tokens exceed"):
        eqx.filter_jit(gpt2.hidden_states)(jnp.arange(9))


def test_generate_coerces_integer_like_options(llama):
    prompt = jnp.array([[5, 6, 7]])
    expected = generate(llama, prompt, max_new_tokens=2, eos_token_id=2)
    for kwargs in ({"max_new_tokens": np.int64(2), "eos_token_id": np.int64(2)},
                   {"max_new_tokens": 2, "eos_token_id": jnp.array(2)}):
        np.testing.assert_array_equal(generate(llama, prompt, **kwargs), expected)
    lists = generate(llama, [[5, 6, 7]], max_new_tokens=2, eos_token_id=[2], attention_mask=[[1, 1, 1]])
    np.testing.assert_array_equal(lists, expected)
    sampled = generate(llama, prompt, max_new_tokens=2, temperature=1.0, top_k=np.int64(2), key=jax.random.key(1))
    assert sampled.shape == (1, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 2.5, "temperature": 1.0}, TypeError, "top_k"),
        ({"max_new_tokens": 2.0}, TypeError, "max_new_tokens"),
        ({"eos_token_id": "12"}, TypeError, "eos_token_id"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"attention_mask": jnp.array([[1, 1, 0]])}, ValueError, "left padding"),
    ],
)
def test_generate_rejects_bad_options(llama, kwargs, error, match):
    kwargs = {"max_new_tokens": 2, "key": jax.random.key(0), **kwargs}
    with pytest.raises(error, match=match):
        generate(llama, jnp.array([[5, 6, 7]]), **kwargs)


def test_bad_configs_fail_at_config_time():
    with pytest.raises(ValueError, match="n_embd=32 is not divisible by n_head=5"):
        CausalLM.from_config({**GPT2, "n_head": 5}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="hidden_size=32 is not divisible by num_attention_heads=5"):
        LMConfig.from_hf({**LLAMA, "model_type": "qwen2", "num_attention_heads": 5, "num_key_value_heads": 5})
    with pytest.raises(ValueError, match=r"hidden_act='foo' is not supported; supported: \[.*'silu'"):
        CausalLM.from_config({**LLAMA, "hidden_act": "foo"}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="activation_function='foo'"):
        LMConfig.from_hf({**GPT2, "activation_function": "foo"})
    with pytest.raises(ValueError, match="hidden_act='foo'"):
        TextEncoderConfig.from_hf({**BERT, "hidden_act": "foo"})
    with pytest.raises(ValueError, match="hidden_size=24 is not divisible by num_attention_heads=5"):
        TextEncoder.from_config({**BERT, "num_attention_heads": 5}, key=jax.random.key(0))
