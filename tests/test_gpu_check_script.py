"""benchmarks/gpu_check.sh: on a machine without CUDA it must stop with a clear message, not
pass silently; without an output folder it prints its usage."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import HAS_CUDA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the script needs bash and coreutils' timeout")


def run_script(*args):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable})


def test_usage_without_output_folder():
    done = run_script()
    assert done.returncode == 2
    assert "usage: bash benchmarks/gpu_check.sh OUT_DIR" in done.stderr


@pytest.mark.skipif(HAS_CUDA, reason="checks the failure on a machine without CUDA")
def test_fails_clearly_without_cuda(tmp_path):
    out = tmp_path / "results"
    done = run_script(str(out))
    assert done.returncode == 3
    assert "error: no CUDA device" in done.stderr
    assert "no CUDA device" in (out / "summary.txt").read_text()
    assert "error: no CUDA device" in (out / "log.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "summary.txt"]
