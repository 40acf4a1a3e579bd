"""Which implementation of a norm or clip op suits the tensors of one call.

The C++ and Triton kernels read raw memory: they may only see plain dense tensors with real
storage. Every call is routed here first, before any pointer is touched:

- ``FAST``: plain tensors in eager mode: the kernels, through a lean autograd.Function;
- ``OP``: the call is being traced (torch.compile, torch.export, make_fx), or sees FakeTensors,
  FunctionalTensors, meta tensors or an active dispatch mode: the registered ``torch.ops.fused_optim``
  op, whose fake implementation the tracer uses and whose real implementation runs the kernels;
- ``COMPOSITE``: DTensors, torch.func-wrapped tensors (vmap, grad) and any other subclass: the math
  written in differentiable torch ops, so the subclass's own dispatch (DTensor sharding
  propagation, functorch batching rules) computes it correctly.
"""

import sys

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from .. import _backend, _cpp

FAST = "fast"
OP = "op"
COMPOSITE = "composite"

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_TRACED = (FakeTensor, FunctionalTensor)
# One C++ check for "not a plain tensor": a Python subclass, a functorch or legacy batched
# wrapper, a sparse tensor, or any tensor while a dispatch mode is active.
_subclass_like = torch._C._dispatch_isTensorSubclassLike
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_legacy_batched = torch._C._functorch.is_legacy_batchedtensor
_dispatch_modes = torch._C._len_torch_dispatch_stack


def is_dtensor(t):
    """A DTensor (or a subclass of it): one can exist only once its module has been imported, so
    the check imports nothing."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _is_batched_or_wrapped(t):
    return _is_wrapped(t) or _is_legacy_batched(t)


def route(*tensors):
    """FAST, OP or COMPOSITE for a call on ``tensors`` (None entries are skipped)."""
    if torch.compiler.is_compiling():
        return COMPOSITE if any(is_dtensor(t) for t in tensors if t is not None) else OP
    path = FAST
    for t in tensors:
        if t is None:
            continue
        if not _subclass_like(t):
            if t.is_meta:
                path = OP
            continue
        cls = type(t)
        if cls in _PLAIN:
            if _is_batched_or_wrapped(t):
                return COMPOSITE
            path = OP  # a dispatch mode is active, or a sparse tensor (which the op rejects)
        elif issubclass(cls, _TRACED):
            path = OP
        else:
            return COMPOSITE
    return path


def is_plain(t):
    """True for a tensor a kernel may read: no subclass, no batched wrapper, real storage, no mode."""
    return not _subclass_like(t) and not t.is_meta


def resolve_eager(name, device):
    """``_backend.resolve`` for a FAST call (never a trace): "auto" and "cpp" on CPU resolve to
    "cpp" without the general lookup once the extension is loaded, which it stays."""
    if (name == "cpp" or name == "auto") and device.type == "cpu" and _cpp.unavailable_reason() is None:
        return "cpp"
    return _backend.resolve(name, device)
