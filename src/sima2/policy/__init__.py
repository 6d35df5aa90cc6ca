"""sima2.policy."""
