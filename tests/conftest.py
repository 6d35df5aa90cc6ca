"""Shared test set-up: CPU-only JAX, float32 matmuls at full precision, offline Hugging Face."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tests are dominated by compiling many small programs, not by running them: XLA's cheapest CPU backend
# settings compile about 3x faster. (Set SIMA2_TEST_XLA_OPT=1 to test with the optimising backend.)
if os.environ.get("SIMA2_TEST_XLA_OPT") != "1":
    _fast_compile = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_fast_compile}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Many tests compile the same agent and world programs (in both xdist workers, and again in subprocess
# examples): a persistent compilation cache shared by all of them compiles each program once per run.
_cache = os.environ.get("SIMA2_TEST_COMPILATION_CACHE") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-compilation"
)
if _cache != "off":
    jax.config.update("jax_compilation_cache_dir", _cache)
    # Only programs worth sharing: the many sub-second ones (single operations run op by op, small optimiser
    # updates) are not written, as compiling one again costs under a second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def unique_programs_not_cached():
    """For a test whose programs no other test compiles: nothing it compiles is written to the persistent
    compilation cache. Writing serialises the executable, and serialising the big training scan of
    `test_finetuned_planner_reproduces_held_in_plans` has aborted its worker in three full runs of three (the
    crashes below are all in the cache's serialising or loading of an executable); a write no test reads
    back is only that risk and its time."""
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


# XLA:CPU now and then kills a test worker with a native crash while it compiles an executable or the
# persistent compilation cache serialises or loads one (one or two per full run on a slow 2-core machine,
# in the same tests run after run, which pass alone and when run again). A test whose worker crashes runs once
# more on a fresh worker; a second crash fails it, so a test that really crashes still fails.
_CRASH_RERUNS = 1
_crash_counts = pytest.StashKey[dict[str, int]]()


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched) -> None:
    crashes = sched.config.stash.setdefault(_crash_counts, {})
    crashes[crashitem] = crashes.get(crashitem, 0) + 1
    if crashes[crashitem] <= _CRASH_RERUNS:
        sched.mark_test_pending(crashitem)
        report.outcome = "rerun"
