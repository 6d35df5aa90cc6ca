"""sima2.planning."""
