"""sima2.training."""
