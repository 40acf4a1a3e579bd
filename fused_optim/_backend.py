"""Backend choice: which implementation runs an op on which tensors.

``reference`` (plain PyTorch) runs anywhere; ``cpp`` runs CPU tensors through the C++ extension;
``triton`` runs CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``, for tests).
``auto`` picks triton for CUDA, cpp for CPU, and falls back to reference with one warning.
"""

import dataclasses
import os
import warnings

import torch

from . import _cpp

BACKENDS = ("reference", "cpp", "triton")
CHOICES = ("auto",) + BACKENDS
ENV_VAR = "FUSED_OPTIM_BACKEND"

_warned = set()
_triton_reason = None
_triton_checked = False


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str

    def __str__(self):
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def validate_name(name):
    """The backend a caller asked for: an explicit name, else $FUSED_OPTIM_BACKEND, else 'auto'."""
    source = "backend"
    if name is None:
        name = os.environ.get(ENV_VAR) or "auto"
        source = ENV_VAR
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"unknown {source} {name!r}: choose one of {', '.join(repr(c) for c in CHOICES)}")
    return name


def triton_interpret():
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _triton_import_reason():
    global _triton_checked, _triton_reason
    if not _triton_checked:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception as error:  # triton is optional off Linux x86-64
            _triton_reason = f"triton cannot be imported ({type(error).__name__}: {error})"
        _triton_checked = True
    return _triton_reason


def unavailable_reason(backend, device_type=None):
    """None when ``backend`` can run tensors of ``device_type`` (any device when None), else why not."""
    if backend == "reference":
        return None
    if backend == "cpp":
        reason = _cpp.unavailable_reason()
        if reason:
            return f"the C++ extension is unavailable: {reason}"
        if device_type not in (None, "cpu"):
            return f"the cpp backend runs CPU tensors, not {device_type} tensors"
        return None
    if backend == "triton":
        reason = _triton_import_reason()
        if reason:
            return reason
        if device_type == "cuda" or (device_type is None and torch.cuda.is_available()):
            return None
        if device_type in (None, "cpu") and triton_interpret():
            return None
        if device_type in (None, "cpu"):
            return "the triton backend runs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
        return f"the triton backend runs CUDA tensors, not {device_type} tensors"
    raise ValueError(f"unknown backend {backend!r}")


def resolve(name, device):
    """The concrete backend that runs tensors on ``device`` for a validated backend ``name``.

    An explicit backend that cannot run here is a RuntimeError; ``auto`` falls back to the
    reference with one warning per reason.
    """
    device_type = torch.device(device).type
    if name != "auto":
        reason = unavailable_reason(name, device_type)
        if reason:
            raise RuntimeError(f"fused_optim backend {name!r} cannot run {device_type} tensors here: {reason}")
        return name
    preferred = "triton" if device_type == "cuda" else "cpp" if device_type == "cpu" else None
    if preferred is None:
        return "reference"
    reason = unavailable_reason(preferred, device_type)
    if reason is None:
        return preferred
    key = (preferred, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"fused_optim: using the reference backend for {device_type} tensors: {reason}", RuntimeWarning, stacklevel=3)
    return "reference"


def available_backends():
    """What works on this machine: ``{name: BackendInfo}`` with the reason for each."""
    result = {}
    for backend in BACKENDS:
        reason = unavailable_reason(backend)
        if reason is None:
            detail = {
                "reference": "plain PyTorch, any device",
                "cpp": "C++ extension for CPU tensors",
                "triton": "CUDA tensors" if torch.cuda.is_available() else "CPU tensors under TRITON_INTERPRET=1",
            }[backend]
            result[backend] = BackendInfo(backend, True, detail)
        else:
            result[backend] = BackendInfo(backend, False, reason)
    return result
