"""The tests' persistent compilation cache (set up in conftest.py) for the Python subprocesses tests start."""

from __future__ import annotations

import jax


def compilation_cache_env() -> dict[str, str]:
    """Environment variables that give a subprocess the tests' compilation cache (none when it is off): it
    then compiles a program once even where it rebuilds it (e.g. evaluation, once per split), and reuses the
    programs other tests and subprocesses compiled with the same settings."""
    if not jax.config.jax_compilation_cache_dir:
        return {}
    return {
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(jax.config.jax_persistent_cache_min_compile_time_secs),
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": str(jax.config.jax_persistent_cache_min_entry_size_bytes),
    }
