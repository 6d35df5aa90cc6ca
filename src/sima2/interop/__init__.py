"""sima2.interop."""
