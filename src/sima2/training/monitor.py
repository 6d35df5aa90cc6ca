"""Training monitoring: metrics to a tqdm bar, JSONL and TensorBoard; memory use; profiler traces.

Every logged record also carries host memory (and device memory where the backend reports it), with a
warning event when either passes `memory_warning_fraction`. A `jax.profiler` trace is written to
`out/profile` for `profile_steps` steps starting at `profile_start`, or on demand: create a file named
`PROFILE` in the output folder while the run is going and the next steps are traced.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import psutil

from sima2.training.config import MonitorConfig

log = logging.getLogger("sima2.training")


def memory_stats() -> dict[str, float]:
    """Host memory fraction and RSS, and device memory fraction for backends that report it."""
    virtual = psutil.virtual_memory()
    stats = {
        "host_memory_fraction": virtual.percent / 100.0,
        "host_rss_gb": psutil.Process().memory_info().rss / 2**30,
    }
    fractions = []
    for device in jax.local_devices():
        device_stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if device_stats and device_stats.get("bytes_limit"):
            fractions.append(device_stats.get("bytes_in_use", 0) / device_stats["bytes_limit"])
    if fractions:
        stats["device_memory_fraction"] = max(fractions)
    return stats


class MetricsLogger:
    """Writes metrics to `out/metrics.jsonl`, TensorBoard (`out/tb`) and a tqdm progress bar."""

    def __init__(
        self, out_dir: str | os.PathLike, config: MonitorConfig, *, is_main: bool | None = None, desc: str = "train"
    ):
        self.config = config
        self.desc = desc  # the progress bar's label
        self.out_dir = Path(out_dir)
        self.is_main = jax.process_index() == 0 if is_main is None else is_main
        self._jsonl = None
        self._tb = None
        self._bar = None
        self._profiling_until: int | None = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if config.jsonl:
                self._jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if config.tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))

    def start(self, step: int, total: int) -> None:
        if self.is_main and self.config.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=step, desc=self.desc, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record one set of scalar metrics (plus memory use) at `step`."""
        metrics = dict(metrics, **memory_stats())
        for name in ("host_memory_fraction", "device_memory_fraction"):
            if metrics.get(name, 0.0) > self.config.memory_warning_fraction:
                self.event(step, "warning", f"{name} is {metrics[name]:.0%}")
        if not self.is_main:
            return
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(name, value, step)
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "return", "steps_per_s")}
            self._bar.set_postfix(shown, refresh=False)

    def event(self, step: int, kind: str, message: str) -> None:
        """A notable event (warning, halt reason, resume) to the Python log and the JSONL file."""
        (log.error if kind == "halt" else log.warning)("step %d: %s: %s", step, kind, message)
        if self.is_main and self._jsonl is not None:
            self._jsonl.write(
                json.dumps({"step": step, "time": time.time(), "event": kind, "message": message}) + "\n"
            )
            self._jsonl.flush()

    def maybe_profile(self, step: int) -> None:
        """Start or stop a `jax.profiler` trace around configured or requested steps."""
        if self._profiling_until is not None and step >= self._profiling_until:
            self.stop_profile()
        if self._profiling_until is not None:
            return
        request = self.out_dir / "PROFILE"
        if step == self.config.profile_start or (self.is_main and request.exists()):
            if request.exists():
                request.unlink()
            jax.profiler.start_trace(str(self.out_dir / "profile"))
            self._profiling_until = step + self.config.profile_steps
            self.event(step, "profile", f"tracing steps {step}..{self._profiling_until - 1}")

    def is_profile_boundary(self, step: int) -> bool:
        """Whether a configured or running trace starts or ends at `step` (the loop stops there)."""
        return step == self.config.profile_start or step == self._profiling_until

    def stop_profile(self) -> None:
        if self._profiling_until is not None:
            jax.profiler.stop_trace()
            self._profiling_until = None

    def close(self) -> None:
        self.stop_profile()
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
