"""sima2.envs."""
