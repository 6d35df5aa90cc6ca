"""Perception: the ViT image encoder (HF ViT / CLIP / SigLIP towers), preprocessing and augmentation."""

from sima2.perception.vit import ViTEncoder, VisionConfig, num_tokens

__all__ = ["ViTEncoder", "VisionConfig", "num_tokens"]
