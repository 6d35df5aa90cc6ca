"""Perception: the ViT image encoder (HF ViT / CLIP / SigLIP towers), preprocessing and augmentation."""

from sima2.perception.preprocess import (
    ImageProcessorConfig,
    augment_images,
    preprocess,
)
from sima2.perception.vit import VisionConfig, ViTEncoder, num_tokens

__all__ = [
    "ImageProcessorConfig",
    "ViTEncoder",
    "VisionConfig",
    "augment_images",
    "num_tokens",
    "preprocess",
]
