"""Image preprocessing (uint8 HWC -> normalised float CHW, as HF image processors do) and pure-JAX
augmentations (random crop + resize, Gaussian noise) that run inside `jit` and `vmap`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
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


def random_crop_resize(
    key: PRNGKeyArray,
    image: Float[Array, "C H W"],
    *,
    scale: tuple[float, float] = (0.8, 1.0),
) -> Float[Array, "C H W"]:
    """Crop a random square-ish window covering `scale` of each side, resized back to the input size.

    Crop size and offset are traced values: one compiled program serves every draw.
    """
    c, h, w = image.shape
    k_size, k_y, k_x = jax.random.split(key, 3)
    frac = jax.random.uniform(k_size, (), minval=scale[0], maxval=scale[1])
    crop_h, crop_w = frac * h, frac * w
    top = jax.random.uniform(k_y, ()) * (h - crop_h)
    left = jax.random.uniform(k_x, ()) * (w - crop_w)
    zoom = jnp.stack([1.0, 1.0 / frac, 1.0 / frac])
    shift = jnp.stack([0.0, -top / frac, -left / frac])
    return jax.image.scale_and_translate(
        image, (c, h, w), (0, 1, 2), zoom, shift, method="linear", antialias=False
    )


def gaussian_noise(key: PRNGKeyArray, image: Float[Array, "C H W"], *, std: float = 0.02) -> Float[Array, "C H W"]:
    """Add i.i.d. Gaussian noise of standard deviation `std` (in the image's own units)."""
    return image + std * jax.random.normal(key, image.shape, image.dtype)


def augment(
    key: PRNGKeyArray,
    image: Float[Array, "C H W"],
    *,
    crop_scale: tuple[float, float] = (0.8, 1.0),
    noise_std: float = 0.02,
) -> Float[Array, "C H W"]:
    """Random crop + resize, then Gaussian noise."""
    k_crop, k_noise = jax.random.split(key)
    return gaussian_noise(k_noise, random_crop_resize(k_crop, image, scale=crop_scale), std=noise_std)
