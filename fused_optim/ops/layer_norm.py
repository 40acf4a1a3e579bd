"""layer_norm: the backend-neutral entry point, its autograd and its torch.library ops.

Every backend sees the input as contiguous rows (M, N), N the product of ``normalized_shape``,
weight and bias as flat tensors in the compute dtype (float32, float64 for float64 inputs), and
returns float32 (float64) per-row ``mean`` and ``rstd`` that the backward takes back. Gradients of
weight and bias come back in the compute dtype and are cast once to the parameters' dtype here.

A call takes one of three paths (see ``_route``): plain eager tensors go straight to the kernels
through ``LayerNormFunction``; traced calls (torch.compile, torch.export) and FakeTensors go
through ``torch.ops.fused_optim.layer_norm_forward`` / ``layer_norm_backward``, whose fake
implementations give the tracer the shapes (traced CUDA calls on the triton backend take the
triton_ops ``fused_optim::layer_norm_forward_triton`` / ``_backward_triton`` instead, whose kernel
launches the trace records); DTensors, torch.func-wrapped tensors and other subclasses take
``layer_norm_composite``, the same math in differentiable torch ops.

A backward whose graph is being built (``create_graph=True``) or whose gradient is batched
(``is_grads_batched=True``) is computed with differentiable torch ops from the saved input, so
double backward and batched gradients give torch's results; a plain backward runs the kernels.
"""

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import _backend, _cpp
from ..reference import norm as reference
from . import _route


def _backend_functions(backend):
    """(forward, backward) of a concrete backend."""
    if backend == "reference":
        return reference.layer_norm_forward, reference.layer_norm_backward
    if backend == "cpp":
        extension = _cpp.get()
        return extension.layer_norm_forward, extension.layer_norm_backward
    from ..triton import layer_norm as triton_layer_norm

    return triton_layer_norm.layer_norm_forward, triton_layer_norm.layer_norm_backward


# The common cases skip the calls that would change nothing: each costs a dispatcher round trip.

def _flat_compute(t, dtype):
    if t is None or (t.dim() == 1 and t.dtype == dtype and t.is_contiguous()):
        return t
    return t.reshape(-1).to(dtype).contiguous()


def _rows_of(x, normalized_ndim):
    """x as contiguous rows (M, N), N the product of its last ``normalized_ndim`` sizes."""
    if x.dim() == 2 and normalized_ndim == 1:
        return x.contiguous()
    return x.reshape(-1, math.prod(x.shape[x.dim() - normalized_ndim:])).contiguous()


def _shaped_like(t, x):
    """A rows tensor (M, N) in x's shape."""
    return t if x.dim() == 2 and t.shape[1] == x.shape[1] else t.reshape(x.shape)


def _kernel_forward(x, weight, bias, normalized_ndim, eps, backend):
    """(rows, weight_c, y, mean, rstd) on a concrete backend; empty inputs take the reference,
    which defines the shapes (and NaN statistics of empty rows) as torch does."""
    forward, _ = _backend_functions(backend if x.numel() > 0 else "reference")
    compute = reference.compute_dtype(x.dtype)
    rows = _rows_of(x, normalized_ndim)
    weight_c = _flat_compute(weight, compute)
    y, mean, rstd = forward(rows, weight_c, _flat_compute(bias, compute), eps)
    return rows, weight_c, _shaped_like(y, x), mean, rstd


def _kernel_backward(dy, rows, weight_c, mean, rstd, need, backend):
    """(dx as rows, dweight, dbias in the compute dtype, flat), None where not needed."""
    _, backward = _backend_functions(backend if rows.numel() > 0 else "reference")
    dy_rows = dy.contiguous() if dy.dim() == 2 else dy.reshape(rows.shape).contiguous()
    return backward(dy_rows, rows, weight_c, mean, rstd, *need)


def layer_norm_composite(x, normalized_ndim, weight, bias, eps):
    """The forward in differentiable torch ops over the trailing ``normalized_ndim`` dims."""
    c = reference.compute_dtype(x.dtype)
    dims = tuple(range(-normalized_ndim, 0))
    xf = x.to(c)
    mean = xf.mean(dims, keepdim=True)
    centered = xf - mean
    # Biased variance, from the centered values (never E[x^2] - E[x]^2, which cancels).
    y = centered * torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(c)
    if bias is not None:
        y = y + bias.to(c)
    return y.to(x.dtype)


def _composite_backward(dy, x, weight, bias, normalized_ndim, eps, need):
    """(dx, dweight, dbias) in differentiable torch ops, statistics recomputed from x: the
    backward of a graph being built, and of batched gradients."""
    c = reference.compute_dtype(x.dtype)
    dims = tuple(range(-normalized_ndim, 0))
    leading = tuple(range(dy.dim() - normalized_ndim))
    xf, dyf = x.to(c), dy.to(c)
    mean = xf.mean(dims, keepdim=True)
    centered = xf - mean
    rstd = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    xhat = centered * rstd
    dx = dweight = dbias = None
    if need[0]:
        g = dyf * weight.to(c) if weight is not None else dyf
        dx = (rstd * (g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True))).to(x.dtype)
    if need[1]:
        dweight = (dyf * xhat).sum(leading).to(weight.dtype)
    if need[2]:
        dbias = dyf.sum(leading).to(bias.dtype)
    return dx, dweight, dbias


def _backward_path(dy):
    """COMPOSITE when the backward must be built from differentiable ops (a graph being built, or
    batched gradients), else the path for dy: FAST for plain tensors, OP in a trace."""
    return _route.COMPOSITE if torch.is_grad_enabled() else _route.route(dy)


def _to_parameter(grad, parameter):
    if grad is None or (parameter.dim() == 1 and grad.dtype == parameter.dtype):
        return grad
    return grad.reshape(parameter.shape).to(parameter.dtype)


class LayerNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias over the trailing ``normalized_ndim`` dims of x."""

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_ndim, eps, backend):
        rows, weight_c, y, mean, rstd = _kernel_forward(x, weight, bias, normalized_ndim, eps, backend)
        ctx.save_for_backward(rows, weight_c, mean, rstd, x, weight, bias)
        ctx.backend, ctx.normalized_ndim, ctx.eps = backend, normalized_ndim, eps
        return y

    @staticmethod
    def backward(ctx, dy):
        rows, weight_c, mean, rstd, x, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        path = _backward_path(dy)
        if path != _route.FAST:
            return _backward_on_path(path, dy, x, weight, bias, mean, rstd, ctx.normalized_ndim, ctx.eps, need,
                                     ctx.backend) + (None, None, None)
        dx, dweight, dbias = _kernel_backward(dy, rows, weight_c, mean, rstd, need, ctx.backend)
        dx = None if dx is None else _shaped_like(dx, x)
        return dx, _to_parameter(dweight, weight), _to_parameter(dbias, bias), None, None, None


# torch.library ops: what torch.compile, torch.export and fake tensors see. The backend name is
# resolved inside the real implementation, at run time, so nothing is loaded while tracing.

@torch.library.custom_op("fused_optim::layer_norm_forward", mutates_args=())
def layer_norm_forward_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], normalized_ndim: int, eps: float,
                          backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): y shaped and contiguous like x, mean and rstd one per row (compute dtype)."""
    concrete = _backend.resolve(backend, x.device)
    _, _, y, mean, rstd = _kernel_forward(x, weight, bias, normalized_ndim, eps, concrete)
    return y, mean, rstd


@layer_norm_forward_op.register_fake
def _(x, weight, bias, normalized_ndim, eps, backend):
    rows = math.prod(x.shape[:x.dim() - normalized_ndim])
    compute = reference.compute_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((rows,), dtype=compute),
            x.new_empty((rows,), dtype=compute))


@torch.library.custom_op("fused_optim::layer_norm_backward", mutates_args=())
def layer_norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                           normalized_ndim: int, need_dx: bool, need_dweight: bool, need_dbias: bool,
                           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dx shaped like x, dweight, dbias flat in the compute dtype); empty where not needed."""
    concrete = _backend.resolve(backend, x.device)
    compute = reference.compute_dtype(x.dtype)
    rows = _rows_of(x, normalized_ndim)
    dx, dweight, dbias = _kernel_backward(dy, rows, _flat_compute(weight, compute), mean, rstd,
                                          (need_dx, need_dweight, need_dbias), concrete)
    if dweight is not None and dbias is not None and (
            dweight.untyped_storage().data_ptr() == dbias.untyped_storage().data_ptr()):
        dbias = dbias.clone()  # a backend may return both as rows of one buffer; op outputs may not alias
    return (x.new_empty((0,)) if dx is None else _shaped_like(dx, x),
            x.new_empty((0,), dtype=compute) if dweight is None else dweight,
            x.new_empty((0,), dtype=compute) if dbias is None else dbias)


@layer_norm_backward_op.register_fake
def _(dy, x, weight, mean, rstd, normalized_ndim, need_dx, need_dweight, need_dbias, backend):
    n = math.prod(x.shape[x.dim() - normalized_ndim:])
    compute = reference.compute_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format) if need_dx else x.new_empty((0,)),
            x.new_empty((n if need_dweight else 0,), dtype=compute),
            x.new_empty((n if need_dbias else 0,), dtype=compute))


def _op_setup_context(ctx, inputs, output):
    x, weight, bias, normalized_ndim, eps, backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.normalized_ndim, ctx.eps, ctx.backend = normalized_ndim, eps, backend


def _backward_on_path(path, dy, x, weight, bias, mean, rstd, normalized_ndim, eps, need, backend):
    """(dx, dweight, dbias) in differentiable ops (COMPOSITE) or through the registered op."""
    if path == _route.COMPOSITE:
        return _composite_backward(dy, x, weight, bias, normalized_ndim, eps, need)
    dx, dweight, dbias = torch.ops.fused_optim.layer_norm_backward(dy, x, weight, mean, rstd, normalized_ndim, *need,
                                                                   backend)
    return (dx if need[0] else None, _to_parameter(dweight, weight) if need[1] else None,
            _to_parameter(dbias, bias) if need[2] else None)


def _op_backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    path = _route.COMPOSITE if _backward_path(dy) == _route.COMPOSITE else _route.OP
    return _backward_on_path(path, dy, x, weight, bias, mean, rstd, ctx.normalized_ndim, ctx.eps,
                             ctx.needs_input_grad[:3], ctx.backend) + (None, None, None)


layer_norm_forward_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _cpp_composite_backward(dy, x, weight, bias, mean, rstd, normalized_ndim, eps, need_dx, need_dweight, need_dbias):
    """The backward the C++ autograd path hands back to Python: a graph being built, or a
    gradient that is not a plain tensor (batched gradients, a subclass, a dispatch mode)."""
    return _backward_on_path(_backward_path(dy), dy, x, weight, bias, mean, rstd, normalized_ndim, eps,
                             (need_dx, need_dweight, need_dbias), "cpp")


_cpp_autograd_extension = None


def _cpp_autograd():
    """The C++ extension, its ``layer_norm_autograd`` told which Python backward to fall back on."""
    global _cpp_autograd_extension
    if _cpp_autograd_extension is None:
        extension = _cpp.get()
        extension.set_layer_norm_composite_backward(_cpp_composite_backward)
        _cpp_autograd_extension = extension
    return _cpp_autograd_extension


# Traced calls on CUDA tensors whose backend is (or resolves to) triton take the triton_ops of
# fused_optim.triton.layer_norm instead, so the compiler sees the kernel launches. They are registered
# at import where they can run (CUDA and triton present), never inside a trace; a caller tracing
# FakeTensors on "cuda" on a machine without a GPU calls ``load_triton_ops()`` first.

_triton_ops = None


def load_triton_ops():
    """Register the triton_ops (importing triton) and their autograd; returns their module."""
    global _triton_ops
    if _triton_ops is None:
        from ..triton import layer_norm as triton_layer_norm

        triton_layer_norm.layer_norm_forward_op.register_autograd(_triton_op_backward,
                                                                  setup_context=_triton_op_setup_context)
        _triton_ops = triton_layer_norm
    return _triton_ops


def uses_triton_ops(x, backend):
    """Whether a traced call on x with this backend name runs the triton_ops."""
    return _triton_ops is not None and x.device.type == "cuda" and backend in ("auto", "triton") and x.numel() > 0


def _layer_norm_triton(x, weight, bias, normalized_ndim, eps):
    """The forward through the triton_op; rows and parameters prepared in torch ops the trace records."""
    compute = reference.compute_dtype(x.dtype)
    y, _, _ = torch.ops.fused_optim.layer_norm_forward_triton(
        _rows_of(x, normalized_ndim), _flat_compute(weight, compute), _flat_compute(bias, compute), eps)
    return _shaped_like(y, x)


def _triton_op_setup_context(ctx, inputs, output):
    rows, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(rows, weight, bias, mean, rstd)
    ctx.eps = eps


def _triton_op_backward(ctx, dy, _dmean, _drstd):
    rows, weight, bias, mean, rstd = ctx.saved_tensors
    need = ctx.needs_input_grad[:3]
    if _backward_path(dy) == _route.COMPOSITE:
        return _composite_backward(dy, rows, weight, bias, 1, ctx.eps, need) + (None,)
    dx, dweight, dbias = torch.ops.fused_optim.layer_norm_backward_triton(dy.contiguous(), rows, weight, mean, rstd,
                                                                          *need)
    return dx if need[0] else None, dweight if need[1] else None, dbias if need[2] else None, None


if torch.cuda.is_available() and _backend.unavailable_reason("triton", "cuda") is None:
    load_triton_ops()


def _check_parameter(name, t, normalized_shape, x):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"layer_norm: {name} must be a tensor or None, got {type(t).__name__}")
    if t.shape != normalized_shape:
        raise RuntimeError(
            f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape {list(t.shape)} "
            f"and normalized_shape = {list(normalized_shape)}"
        )
    if not t.is_floating_point():
        raise RuntimeError(f"layer_norm: {name} must be a floating-point tensor, got {t.dtype}")
    if t.device != x.device:
        raise RuntimeError(f"layer_norm: {name} is on {t.device} but the input is on {x.device}")


def normalized_shape_tuple(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(map(int, normalized_shape))


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend=None):
    """A drop-in for ``torch.nn.functional.layer_norm`` (same arguments, result and gradients).

    Statistics are computed in float32 (float64 for float64 input); the output has the input's
    dtype and shape. ``backend``: None ($FUSED_OPTIM_BACKEND, else "auto"), "auto", "reference",
    "cpp" or "triton".
    """
    name = _backend.validate_name(backend)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"layer_norm: input must be a tensor, got {type(input).__name__}")
    shape = normalized_shape_tuple(normalized_shape)
    if len(shape) == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            "but got normalized_shape = []"
        )
    if input.dim() < len(shape) or input.shape[input.dim() - len(shape):] != shape:
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, {', '.join(map(str, shape))}], "
            f"but got input of size{list(input.shape)}"
        )
    if not input.is_floating_point():
        raise RuntimeError(f"layer_norm: expected a floating-point input, got {input.dtype}")
    _check_parameter("weight", weight, shape, input)
    _check_parameter("bias", bias, shape, input)
    path = _route.route(input, weight, bias)
    if path == _route.FAST:
        name = _route.resolve_eager(name, input.device)
        if name == "cpp" and input.numel() > 0:
            # One call: the C++ autograd Function runs the kernels and records a C++ backward.
            return _cpp_autograd().layer_norm_autograd(input, weight, bias, len(shape), float(eps))
        return LayerNormFunction.apply(input, weight, bias, len(shape), float(eps), name)
    if path == _route.COMPOSITE:
        return layer_norm_composite(input, len(shape), weight, bias, float(eps))
    # An explicit backend that cannot run these tensors is an error now, unless this is a trace:
    # then the compiled code resolves it when it runs.
    if not torch.compiler.is_compiling():
        name = _backend.resolve(name, input.device)
    if uses_triton_ops(input, name):
        return _layer_norm_triton(input, weight, bias, len(shape), float(eps))
    return torch.ops.fused_optim.layer_norm_forward(input, weight, bias, len(shape), float(eps), name)[0]
