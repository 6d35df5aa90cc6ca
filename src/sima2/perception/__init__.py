"""sima2.perception."""
