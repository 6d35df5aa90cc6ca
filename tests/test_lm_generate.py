"""generate(): greedy decoding token-identical to transformers, padding, early stop, sampling options."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sima2.planning import CausalLM, generate  # noqa: E402

VOCAB = 101
FAMILIES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2)),
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, intermediate_size=48,
        vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = FAMILIES[request.param]().eval()
    with torch.no_grad():  # sharper logits than HF's tiny init, so greedy paths are not near ties
        hf.get_input_embeddings().weight.mul_(10)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, CausalLM.from_pretrained(folder)


@pytest.fixture(scope="module")
def llama_lm(tmp_path_factory):
    torch.manual_seed(1)
    hf = FAMILIES["llama"]()
    folder = tmp_path_factory.mktemp("llama-sampling")
    hf.save_pretrained(folder)
    return CausalLM.from_pretrained(folder)


def test_greedy_matches_transformers_for_32_tokens(pair):
    hf, lm = pair
    prompts = np.random.default_rng(0).integers(3, VOCAB, size=(2, 7))
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor(prompts), attention_mask=torch.ones(2, 7, dtype=torch.long), do_sample=False,
            max_new_tokens=32, min_new_tokens=32, eos_token_id=None, pad_token_id=0,
        ).numpy()
    ours = np.asarray(generate(lm, jnp.asarray(prompts), max_new_tokens=32))
    assert ours.shape == (2, 39)
    np.testing.assert_array_equal(ours, expected)


def test_left_padded_batch_equals_singles(pair):
    _, lm = pair
    rng = np.random.default_rng(1)
    lengths, width = [6, 2, 4], 6
    ids = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = rng.integers(3, VOCAB, size=n)
        mask[row, width - n :] = True
    batch = np.asarray(generate(lm, jnp.asarray(ids), attention_mask=jnp.asarray(mask), max_new_tokens=10))
    for row, n in enumerate(lengths):
        single = np.asarray(generate(lm, jnp.asarray(ids[row : row + 1, width - n :]), max_new_tokens=10))
        np.testing.assert_array_equal(batch[row, width - n :], single[0])


def test_eos_stops_a_row_and_pads_the_rest(pair):
    _, lm = pair
    prompts = jnp.asarray(np.random.default_rng(2).integers(3, VOCAB, size=(2, 5)))
    free = np.asarray(generate(lm, prompts, max_new_tokens=12))
    eos = int(free[0, 5 + 3])  # pretend the 4th new token of row 0 is end-of-sequence
    out = np.asarray(generate(lm, prompts, max_new_tokens=12, eos_token_id=[eos, 9999], pad_token_id=0))
    for row in range(2):
        new = free[row, 5:]
        hits = np.flatnonzero(new == eos)
        stop = hits[0] + 1 if hits.size else 12
        np.testing.assert_array_equal(out[row, 5 : 5 + stop], new[:stop])
        assert (out[row, 5 + stop :] == 0).all()


def test_sampling_is_keyed_and_top_k_1_is_greedy(llama_lm):
    lm = llama_lm
    prompts = jnp.asarray(np.random.default_rng(3).integers(3, VOCAB, size=(2, 4)))
    greedy = generate(lm, prompts, max_new_tokens=8)
    top1 = generate(lm, prompts, max_new_tokens=8, temperature=0.7, top_k=1, key=jax.random.key(0))
    np.testing.assert_array_equal(top1, greedy)
    nucleus = generate(lm, prompts, max_new_tokens=8, temperature=1.0, top_p=1e-6, key=jax.random.key(0))
    np.testing.assert_array_equal(nucleus, greedy)
    a = generate(lm, prompts, max_new_tokens=8, temperature=5.0, key=jax.random.key(1))
    b = generate(lm, prompts, max_new_tokens=8, temperature=5.0, key=jax.random.key(1))
    c = generate(lm, prompts, max_new_tokens=8, temperature=5.0, key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments_are_named(llama_lm):
    lm = llama_lm
    prompts = jnp.ones((1, 3), jnp.int32)
    with pytest.raises(ValueError, match="key"):
        generate(lm, prompts, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(lm, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(lm, prompts, max_new_tokens=2, temperature=1.0, top_p=1.5, key=jax.random.key(0))
