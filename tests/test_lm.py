"""CausalLM (GPT-2, Llama, Qwen2) against transformers: logits parity, padding, loading and saving."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sima2.interop import KeyMismatchError, PickleRefusedError  # noqa: E402
from sima2.planning import CausalLM, model_class_for  # noqa: E402

VOCAB = 97


def _gpt2(**kw):
    return transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=1, eos_token_id=2, **kw
    )


def _llama(**kw):
    base = dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )
    base.update(kw)
    return transformers.LlamaConfig(**base)


def _qwen2(**kw):
    base = dict(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, intermediate_size=48,
        vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )
    base.update(kw)
    return transformers.Qwen2Config(**base)


CONFIGS = {
    "gpt2-tied": (lambda: _gpt2(), transformers.GPT2LMHeadModel),
    "llama-gqa-untied": (lambda: _llama(tie_word_embeddings=False), transformers.LlamaForCausalLM),
    "llama-tied-bias": (
        lambda: _llama(tie_word_embeddings=True, attention_bias=True, mlp_bias=True, num_key_value_heads=4),
        transformers.LlamaForCausalLM,
    ),
    "llama3-rope": (
        lambda: _llama(
            rope_theta=500000.0, head_dim=16, num_attention_heads=2, num_key_value_heads=1,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        ),
        transformers.LlamaForCausalLM,
    ),
    "qwen2-qkv-bias": (lambda: _qwen2(tie_word_embeddings=True), transformers.Qwen2ForCausalLM),
}


def _hf_model(name: str, seed: int = 0):
    make_config, cls = CONFIGS[name]
    torch.manual_seed(seed)
    model = cls(make_config()).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so every parameter matters
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln_" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    hf = _hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return request.param, hf, CausalLM.from_pretrained(folder), folder


def _hf_logits(hf, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = torch.tensor(mask)
            kwargs["position_ids"] = torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))
        return hf(torch.tensor(ids), **kwargs).logits.numpy()


def test_logits_match_transformers(pair):
    _, hf, lm, _ = pair
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(2, 40))
    expected = _hf_logits(hf, ids)
    ours = jax.vmap(lm)(jnp.asarray(ids))
    assert ours.shape == (2, 40, VOCAB)
    assert np.max(np.abs(np.asarray(ours) - expected)) <= 1e-4


def test_left_padded_batch_equals_singles(pair):
    _, hf, lm, _ = pair
    rng = np.random.default_rng(1)
    lengths = [9, 5, 1]
    width = max(lengths)
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = rng.integers(3, VOCAB, size=n)
        mask[row, width - n :] = 1
    batch = np.asarray(jax.vmap(lambda i, m: lm(i, attention_mask=m))(jnp.asarray(ids), jnp.asarray(mask)))
    hf_batch = _hf_logits(hf, ids, mask)
    for row, n in enumerate(lengths):
        single = np.asarray(lm(jnp.asarray(ids[row, width - n :])))
        np.testing.assert_allclose(batch[row, width - n :], single, atol=1e-5)
        np.testing.assert_allclose(batch[row, width - n :], hf_batch[row, width - n :], atol=1e-4)


def test_save_pretrained_round_trips_into_transformers(pair, tmp_path):
    name, hf, lm, _ = pair
    lm.save_pretrained(tmp_path)
    reloaded, info = type(hf).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for (k, a), b in zip(hf.state_dict().items(), reloaded.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    again = CausalLM.from_pretrained(tmp_path)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), lm, again))


def test_pickle_weights_need_opt_in(tmp_path):
    hf = _hf_model("llama-gqa-untied")
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError):
        CausalLM.from_pretrained(tmp_path)
    lm = CausalLM.from_pretrained(tmp_path, allow_pickle=True)
    ids = np.arange(3, 20)[None]
    assert np.max(np.abs(np.asarray(lm(jnp.asarray(ids[0]))) - _hf_logits(hf, ids)[0])) <= 1e-4


def test_legacy_gpt2_names_and_buffers_load(tmp_path):
    """Old Hub GPT-2 files: base-model names without `transformer.`, plus causal-mask buffers."""
    from safetensors.numpy import save_file

    hf = _hf_model("gpt2-tied")
    state = {k.removeprefix("transformer."): v.numpy().copy() for k, v in hf.state_dict().items()
             if k != "lm_head.weight"}
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        state[f"h.{i}.attn.masked_bias"] = np.asarray(-1e4, np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    lm = CausalLM.from_pretrained(tmp_path)
    ids = np.arange(3, 30)[None]
    assert np.max(np.abs(np.asarray(lm(jnp.asarray(ids[0]))) - _hf_logits(hf, ids)[0])) <= 1e-4


def test_missing_and_unexpected_keys_are_named(tmp_path):
    from safetensors.numpy import save_file

    hf = _hf_model("qwen2-qkv-bias")
    state = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.extra.weight"] = np.zeros((2,), np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(KeyMismatchError, match=r"up_proj(.|\n)*self_attn\.extra"):
        CausalLM.from_pretrained(tmp_path)


def test_bfloat16_load_and_model_class_dispatch(pair):
    name, _, _, folder = pair
    lm = CausalLM.from_pretrained(folder, dtype="bfloat16")
    assert lm.embed_tokens.dtype == jnp.bfloat16
    assert jnp.isfinite(lm(jnp.arange(3, 12)).astype(jnp.float32)).all()
    model_type = name.split("-")[0].replace("llama3", "llama")
    assert model_class_for(model_type) is CausalLM
    from sima2.interop.convert import model_class_for as convert_dispatch

    assert convert_dispatch(model_type) is CausalLM


def test_unsupported_configs_are_rejected():
    with pytest.raises(ValueError, match="rope_type"):
        CausalLM.from_config(
            _llama(rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}),
            key=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="model_type"):
        CausalLM.from_config({"model_type": "bert"}, key=jax.random.key(0))
    assert model_class_for("t5") is None
