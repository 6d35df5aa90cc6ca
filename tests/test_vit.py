"""ViTEncoder parity with transformers (ViT, CLIP vision, SigLIP vision), dtypes and HF round trips."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sima2.perception import ViTEncoder  # noqa: E402

FAMILIES = {
    "vit": (transformers.ViTConfig, transformers.ViTModel),
    "clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel),
    "siglip": (transformers.SiglipVisionConfig, transformers.SiglipVisionModel),
}

# Several shapes per family: widths, depths, head counts, patch sizes, activations, eps, biases.
CONFIGS = [
    ("vit", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 image_size=32, patch_size=8)),
    ("vit", dict(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=64,
                 image_size=24, patch_size=4, qkv_bias=False, hidden_act="gelu_new", layer_norm_eps=1e-6,
                 num_channels=1)),
    ("clip", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                  image_size=32, patch_size=8)),
    ("clip", dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=6, intermediate_size=48,
                  image_size=20, patch_size=5, hidden_act="gelu")),
    ("siglip", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    image_size=32, patch_size=8)),
    ("siglip", dict(hidden_size=40, num_hidden_layers=1, num_attention_heads=5, intermediate_size=16,
                    image_size=28, patch_size=7, vision_use_head=False)),
]


def make_hf(family: str, kwargs: dict, seed: int = 0):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    # Random init leaves LayerNorms at 1/0 and some biases at 0: perturb so every weight matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def hf_forward(model, pixels: np.ndarray):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels), interpolate_pos_encoding=True)
    return out.last_hidden_state.numpy(), out.pooler_output.numpy() if out.pooler_output is not None else None


@pytest.fixture(scope="module", params=range(len(CONFIGS)), ids=[f"{f}-{i}" for i, (f, _) in enumerate(CONFIGS)])
def saved(request, tmp_path_factory):
    family, kwargs = CONFIGS[request.param]
    model = make_hf(family, kwargs, seed=request.param)
    folder = tmp_path_factory.mktemp(f"{family}{request.param}")
    model.save_pretrained(folder)
    return family, kwargs, model, folder


def test_parity_native_size(saved):
    family, kwargs, model, folder = saved
    encoder = ViTEncoder.from_pretrained(folder)
    c, s = kwargs.get("num_channels", 3), kwargs["image_size"]
    pixels = np.random.default_rng(0).normal(size=(2, c, s, s)).astype(np.float32)
    ref, ref_pooled = hf_forward(model, pixels)
    out = jax.vmap(encoder)(jnp.asarray(pixels))
    assert out.shape == ref.shape
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5
    if ref_pooled is not None:
        pooled = jax.vmap(encoder.pool)(out)
        assert np.abs(np.asarray(pooled) - ref_pooled).max() <= 1e-5


@pytest.mark.parametrize("scale", [(1.5, 1.0), (0.75, 1.25), (2.0, 2.0)])
def test_parity_interpolated_position_embeddings(saved, scale):
    family, kwargs, model, folder = saved
    encoder = ViTEncoder.from_pretrained(folder)
    p, s, c = kwargs["patch_size"], kwargs["image_size"], kwargs.get("num_channels", 3)
    h, w = int(s * scale[0]) // p * p, int(s * scale[1]) // p * p
    pixels = np.random.default_rng(1).normal(size=(1, c, h, w)).astype(np.float32)
    ref, _ = hf_forward(model, pixels)
    out = np.asarray(jax.jit(encoder.__call__)(jnp.asarray(pixels[0])))
    assert out.shape == ref[0].shape
    assert np.abs(out - ref[0]).max() <= 1e-4


def test_bfloat16_within_one_percent(saved):
    family, kwargs, model, folder = saved
    encoder = ViTEncoder.from_pretrained(folder, dtype="bfloat16")
    assert encoder.patch_weight.dtype == jnp.bfloat16
    assert all(b.fc1.weight.dtype == jnp.bfloat16 for b in encoder.blocks)
    c, s = kwargs.get("num_channels", 3), kwargs["image_size"]
    pixels = np.random.default_rng(2).normal(size=(1, c, s, s)).astype(np.float32)
    ref, _ = hf_forward(model, pixels)
    out = np.asarray(encoder(jnp.asarray(pixels[0], jnp.bfloat16)).astype(jnp.float32))
    assert np.linalg.norm(out - ref[0]) / np.linalg.norm(ref[0]) <= 1e-2


def test_round_trip_to_transformers_is_bit_identical(saved, tmp_path):
    family, kwargs, model, folder = saved
    encoder = ViTEncoder.from_pretrained(folder)
    encoder.save_pretrained(tmp_path)
    _, model_cls = FAMILIES[family]
    reloaded, info = model_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    original = model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    c, s = kwargs.get("num_channels", 3), kwargs["image_size"]
    pixels = np.random.default_rng(3).normal(size=(1, c, s, s)).astype(np.float32)
    np.testing.assert_array_equal(hf_forward(reloaded.eval(), pixels)[0], hf_forward(model, pixels)[0])


def test_vmap_equals_singles_and_from_config():
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=16, patch_size=4)
    encoder = ViTEncoder.from_config(config, key=jax.random.key(0))
    pixels = jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
    batched = jax.jit(jax.vmap(encoder))(pixels)
    singles = jnp.stack([encoder(x) for x in pixels])
    np.testing.assert_allclose(batched, singles, atol=1e-6)
    assert batched.shape == (3, 17, 16)


def test_wrong_channel_count_is_a_clear_error():
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=16, patch_size=4)
    encoder = ViTEncoder.from_config(config, key=jax.random.key(0))
    with pytest.raises(ValueError, match="channels"):
        encoder(jnp.zeros((4, 16, 16)))


def test_full_clip_and_classification_checkpoints_load_their_vision_tower(tmp_path):
    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                  image_size=16, patch_size=8)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=vision,
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
    )).eval()
    clip.save_pretrained(tmp_path / "clip")
    encoder = ViTEncoder.from_pretrained(tmp_path / "clip")
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref = clip.vision_model(pixel_values=pixels).last_hidden_state[0].numpy()
    assert np.abs(np.asarray(encoder(jnp.asarray(pixels[0].numpy()))) - ref).max() <= 1e-5

    classifier = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=3, **vision)).eval()
    classifier.save_pretrained(tmp_path / "cls")
    encoder = ViTEncoder.from_pretrained(tmp_path / "cls")
    with torch.no_grad():
        ref = classifier.vit(pixel_values=pixels).last_hidden_state[0].numpy()
    assert np.abs(np.asarray(encoder(jnp.asarray(pixels[0].numpy()))) - ref).max() <= 1e-5


def test_in_memory_transformers5_key_names_load(tmp_path):
    """transformers 5 names ViT layers `layers.N.attention.q_proj` in memory (files keep the older names);
    a state dict dumped from memory must load too, under a task prefix such as `vit.`."""
    from safetensors.torch import save_file

    model = make_hf("vit", CONFIGS[0][1])
    state = {"vit." + k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(".q_proj." in k for k in state)
    model.config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    encoder = ViTEncoder.from_pretrained(tmp_path)
    pixels = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    ref, _ = hf_forward(model, pixels)
    assert np.abs(np.asarray(encoder(jnp.asarray(pixels[0]))) - ref[0]).max() <= 1e-5
