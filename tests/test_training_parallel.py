"""Data-parallel tests: 4 forced CPU devices give the same results as one, and two processes on
localhost (jax.distributed) train together. Runs happen in subprocesses so the XLA device flag applies."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
SRC = HERE.parent / "src"


def _start(*args):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{HERE}")
    return subprocess.Popen(
        [sys.executable, str(HERE / "_training_run.py"), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process):
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


def _assert_close(a, b, exact=False):
    assert list(a) == list(b)
    for name in a:
        if exact:
            np.testing.assert_array_equal(a[name], b[name])
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stage", ["ppo", "bc"])
def test_four_devices_match_one_device(tmp_path, stage):
    one = _start(stage, tmp_path / "one", 4)
    _finish(one)
    four = _start(stage, tmp_path / "four", 4, "--devices", 4, "--mesh")
    assert "done 4" in _finish(four)
    one_params = np.load(tmp_path / "one" / "final_params.npz")
    four_params = np.load(tmp_path / "four" / "final_params.npz")
    _assert_close(one_params, four_params)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_train_together(tmp_path):
    port = _free_port()
    workers = [
        _start(
            "ppo",
            tmp_path / "multi",
            3,
            "--mesh",
            "--num-processes",
            2,
            "--process-id",
            i,
            "--coordinator",
            f"localhost:{port}",
        )
        for i in range(2)
    ]
    for worker in workers:
        assert "done 2" in _finish(worker)
    _finish(_start("ppo", tmp_path / "single", 3, "--devices", 2, "--mesh"))
    first = np.load(tmp_path / "multi" / "final_params_0.npz")
    second = np.load(tmp_path / "multi" / "final_params_1.npz")
    _assert_close(first, second, exact=True)
    _assert_close(first, np.load(tmp_path / "single" / "final_params.npz"))
