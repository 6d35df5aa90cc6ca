"""Perception: the ViT image encoder (HF ViT / CLIP / SigLIP towers), preprocessing and augmentation."""

from sima2.perception.preprocess import (
    ImageProcessorConfig,
    augment,
    gaussian_noise,
    preprocess,
    random_crop_resize,
)
from sima2.perception.vit import VisionConfig, ViTEncoder, num_tokens

__all__ = [
    "ImageProcessorConfig",
    "ViTEncoder",
    "VisionConfig",
    "augment",
    "gaussian_noise",
    "num_tokens",
    "preprocess",
    "random_crop_resize",
]
