"""`sima2 train` as a user runs it, for the learning tests: a subprocess with XLA's optimising settings (the
tests' cheap-compile flags would slow the training itself down), offline, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def train_as_a_user(arguments: list[str], out: Path) -> dict[str, Any]:
    """Runs `sima2 train --out OUT --no-report ARGUMENTS...`; returns the run's eval.json."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "-m", "sima2.cli", "train", "--out", str(out), "--no-report", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "eval.json").read_text())
