"""Shared test setup: which (backend, device) pairs run here.

Without CUDA, the Triton kernels run on the CPU under TRITON_INTERPRET=1 (set here, before any
kernel is defined); with CUDA they run on the GPU. A backend that should work here but does not
(the C++ extension failed to build, say) fails the tests rather than skipping them.
"""

import os
import platform

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fused_optim  # noqa: E402
from fused_optim import _backend  # noqa: E402

# Property tests draw the same examples on every run (a CI run must not fail on an example no
# earlier run drew); `pytest --hypothesis-profile=explore` draws new ones, to look for trouble.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("repeatable", derandomize=True)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile("repeatable")

TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"

# (backend, device) pairs every op is tested on.
BACKEND_DEVICES = [("reference", "cpu"), ("cpp", "cpu"), ("triton", TRITON_DEVICE)]
if HAS_CUDA:
    BACKEND_DEVICES.append(("reference", "cuda"))


def backend_device_id(pair):
    return f"{pair[0]}-{pair[1]}"


def require_backend(backend, device):
    reason = _backend.unavailable_reason(backend, torch.device(device).type)
    if reason is None:
        return
    if backend == "triton" and not (platform.system() == "Linux" and platform.machine() == "x86_64"):
        pytest.skip(reason)  # triton is a dependency on Linux x86-64 only
    pytest.fail(f"backend {backend} should run {device} tensors here but cannot: {reason}")


@pytest.fixture(params=BACKEND_DEVICES, ids=backend_device_id)
def backend_device(request):
    backend, device = request.param
    require_backend(backend, device)
    return backend, device


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; a developer's FUSED_OPTIM_BACKEND must not leak in."""
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)


def pytest_report_header(config):
    lines = [f"torch {torch.__version__}, fused_optim {fused_optim.__version__}, CUDA: {HAS_CUDA}"]
    lines += [f"  {info}" for info in fused_optim.available_backends().values()]
    return lines


@pytest.fixture
def one_thread():
    """Tiny models: one thread keeps them fast on a shared machine (no OpenMP oversubscription).
    Modules of such tests say ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
