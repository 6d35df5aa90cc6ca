"""Image preprocessing (uint8 HWC -> normalised float CHW, as HF image processors do) and the training
augmentation (`augment_images`: random crop, brightness and contrast jitter and pixel noise on uint8 batches,
used by behaviour cloning),
pure JAX inside `jit` and `vmap`."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, UInt8

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes used in preprocessor_config.json -> jax.image.resize methods.
_RESAMPLE = {0: "nearest", 2: "linear", 3: "cubic", 1: "lanczos3"}


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """The subset of an HF `preprocessor_config.json` that determines pixel values."""

    height: int = 224
    width: int = 224
    resample: str = "linear"
    shortest_edge: int | None = None  # CLIP-style: resize the short side, then centre-crop to height x width
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, ...] = IMAGENET_STANDARD_STD
    do_resize: bool = True

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageProcessorConfig:
        """Read `preprocessor_config.json` from a checkpoint folder (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no preprocessor_config.json at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ImageProcessorConfig:
        size = raw.get("size", {"height": 224, "width": 224})
        crop = raw.get("crop_size") if raw.get("do_center_crop") else None
        if isinstance(size, int):
            size = {"height": size, "width": size}
        shortest = size.get("shortest_edge")
        target = crop or size
        if isinstance(target, int):
            target = {"height": target, "width": target}
        return cls(
            height=int(target.get("height", shortest or 224)),
            width=int(target.get("width", shortest or 224)),
            resample=_RESAMPLE.get(int(raw.get("resample", 2)), "linear"),
            shortest_edge=int(shortest) if shortest else None,
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)) if raw.get("do_rescale", True) else 1.0,
            image_mean=tuple(raw.get("image_mean", IMAGENET_STANDARD_MEAN)) if raw.get("do_normalize", True)
            else (0.0, 0.0, 0.0),
            image_std=tuple(raw.get("image_std", IMAGENET_STANDARD_STD)) if raw.get("do_normalize", True)
            else (1.0, 1.0, 1.0),
            do_resize=bool(raw.get("do_resize", True)),
        )


def preprocess(
    image: UInt8[Array, "H W C"], config: ImageProcessorConfig | None = None
) -> Float[Array, "C h w"]:
    """uint8 HWC image -> resized, rescaled, normalised float32 CHW, like the HF image processors.

    Resizing rounds back to uint8 as PIL does; on images already at the target size the result equals
    the HF processor's exactly.
    """
    config = config or ImageProcessorConfig()
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an HWC image with 1, 3 or 4 channels, got shape {image.shape}")
    x = image[..., :3].astype(jnp.float32) if image.shape[-1] != 1 else jnp.repeat(image, 3, -1).astype(jnp.float32)
    if config.do_resize:
        h, w = image.shape[:2]
        if config.shortest_edge is not None:
            scale = config.shortest_edge / min(h, w)
            rh, rw = max(round(h * scale), 1), max(round(w * scale), 1)
        else:
            rh, rw = config.height, config.width
        if (rh, rw) != (h, w):
            x = jnp.clip(jnp.round(jax.image.resize(x, (rh, rw, 3), method=config.resample)), 0, 255)
        if config.shortest_edge is not None:  # centre crop as HF does
            top, left = (rh - config.height) // 2, (rw - config.width) // 2
            x = x[top : top + config.height, left : left + config.width]
    x = x * config.rescale_factor
    mean = jnp.asarray(config.image_mean, jnp.float32)
    std = jnp.asarray(config.image_std, jnp.float32)
    return jnp.transpose((x - mean) / std, (2, 0, 1))


# Standard-normal quantiles of 256 equal-probability bins (rescaled to unit variance): one random byte per
# value gives Gaussian noise at 256 levels, clipped at +-2.9 sigma, plenty for pixel noise.
_NORMAL_LEVELS = np.asarray([statistics.NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)
_NORMAL_LEVELS /= _NORMAL_LEVELS.std()


def _pixel_noise(key: PRNGKeyArray, shape: tuple[int, ...]) -> jax.Array:
    """Standard-normal noise of `shape` (..., C <= 4) from one random 32-bit word per pixel, a byte per
    channel: a third of the random bits of `jax.random.normal`, whose draws cost more than the rest of an
    augmented training step's image work on CPU."""
    if shape[-1] > 4:
        return jax.random.normal(key, shape)
    levels = jax.lax.bitcast_convert_type(jax.random.bits(key, shape[:-1], jnp.uint32), jnp.uint8)  # (..., 4)
    return jnp.asarray(_NORMAL_LEVELS)[levels[..., : shape[-1]]]


def augment_images(
    key: PRNGKeyArray,
    images: UInt8[Array, "B H W C"],
    *,
    crop_padding: int,
    noise_std: float,
    brightness: float = 0.0,
    contrast: float = 0.0,
) -> UInt8[Array, "B H W C"]:
    """Random crop (edge-pad by `crop_padding`, crop back), brightness and contrast jitter and pixel noise,
    per image; stays uint8.

    Brightness scales an image by a factor drawn from [1 - brightness, 1 + brightness]; contrast moves its
    pixels away from or toward the image's mean grey by a factor from [1 - contrast, 1 + contrast]. Both act
    on every channel alike, so colours keep the hue an instruction names ("the red ball") while the scene
    gets lighter or darker, as it does between games.
    """
    if brightness < 0 or contrast < 0 or not brightness < 1 or not contrast < 1:
        raise ValueError(f"brightness and contrast must be in [0, 1), got {brightness} and {contrast}")
    batch, height, width, _ = images.shape
    crop_key, noise_key, brightness_key, contrast_key = jax.random.split(key, 4)
    out = images.astype(jnp.float32)
    if crop_padding > 0:
        padded = jnp.pad(out, ((0, 0), (crop_padding, crop_padding), (crop_padding, crop_padding), (0, 0)), mode="edge")
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * crop_padding + 1)

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

        out = jax.vmap(crop)(padded, offsets)
    if brightness > 0:
        out = out * jax.random.uniform(brightness_key, (batch, 1, 1, 1), minval=1 - brightness, maxval=1 + brightness)
    if contrast > 0:
        grey = out.mean(axis=(1, 2, 3), keepdims=True)
        factor = jax.random.uniform(contrast_key, (batch, 1, 1, 1), minval=1 - contrast, maxval=1 + contrast)
        out = grey + (out - grey) * factor
    if noise_std > 0:
        out = out + noise_std * 255.0 * _pixel_noise(noise_key, out.shape)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
