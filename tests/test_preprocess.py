"""Preprocessing parity with HF image processors."""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sima2.perception import ImageProcessorConfig, preprocess  # noqa: E402


def hf_pixels(processor, image: np.ndarray) -> np.ndarray:
    return processor(image, return_tensors="np")["pixel_values"][0]


def test_exact_at_target_size_vit_processor():
    processor = transformers.ViTImageProcessor()
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    config = ImageProcessorConfig.from_dict(processor.to_dict())
    out = np.asarray(preprocess(jnp.asarray(image), config))
    np.testing.assert_allclose(out, hf_pixels(processor, image), atol=1e-6)


@pytest.mark.parametrize("shape", [(97, 130), (300, 260)])
def test_resize_within_one_grey_level(shape):
    processor = transformers.ViTImageProcessor()
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    image = np.asarray(jax.image.resize(image.astype(np.float32), (*shape, 3), "linear")).astype(np.uint8)
    config = ImageProcessorConfig.from_dict(processor.to_dict())
    out = np.asarray(preprocess(jnp.asarray(image), config))
    ref = hf_pixels(processor, image)
    # PIL and XLA resample with slightly different filters; a couple of grey levels apart at most.
    assert out.shape == ref.shape
    assert np.abs(out - ref).mean() < 2 / 255 / 0.5


def test_clip_processor_shortest_edge_and_centre_crop():
    processor = transformers.CLIPImageProcessor()
    image = np.full((240, 320, 3), 128, np.uint8)
    image[:, :160] = 30
    config = ImageProcessorConfig.from_dict(processor.to_dict())
    assert config.shortest_edge == 224 and (config.height, config.width) == (224, 224)
    out = np.asarray(preprocess(jnp.asarray(image), config))
    ref = hf_pixels(processor, image)
    assert out.shape == ref.shape == (3, 224, 224)
    assert np.mean(np.abs(out - ref) < 0.05) > 0.97


def test_bad_image_shape_is_named():
    with pytest.raises(ValueError, match="HWC"):
        preprocess(jnp.zeros((3, 32, 32), jnp.uint8).transpose(1, 2, 0)[..., :2])
