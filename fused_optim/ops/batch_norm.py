"""batch_norm: the backend-neutral entry point, its checks, its autograd.Function and its
torch.library ops (traced CUDA calls on the triton backend: the triton_ops of
fused_optim.triton.batch_norm, whose kernel launches the trace records). Inductor lowers the two
ops as torch ops (``inductor_lowerings``), so a compiled model's BatchNorm is fused with its
neighbours as torch.nn's is; export and other tracers keep the ops.

Every backend sees the input in one of two memory layouts, both contiguous:

- ``planar``: (N, C, S), S the product of the spatial dims: contiguous NCHW input;
- ``channels_last``: (N, S, C): channels_last input, and any (N, C[, 1...]) input.

Other strides are copied into the planar layout. The output keeps the layout it was computed
in, so channels_last input gives channels_last output. Weight and bias reach the backends as
(C,) tensors in the compute dtype (float32, float64 for float64 input); running statistics are
updated in place in their own dtype. The backends return float32 (float64) per-channel ``mean``
and ``rstd`` (the batch's in training, the running ones' otherwise) that the backward takes back.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _backend, _cpp
from ..reference import norm as reference
from . import _route

PLANAR = "planar"
CHANNELS_LAST = "channels_last"


def _backend_functions(backend):
    """(forward, backward) with the signatures of ``_reference_forward`` / ``_reference_backward``."""
    if backend == "reference":
        return _reference_forward, _reference_backward
    if backend == "cpp":
        extension = _cpp.get()
        return extension.batch_norm_forward, extension.batch_norm_backward
    from ..triton import batch_norm as triton_batch_norm

    return triton_batch_norm.batch_norm_forward, triton_batch_norm.batch_norm_backward


def _as_nchw(t, channels_last):
    """A layout tensor seen as (N, C, S)."""
    return t.transpose(1, 2) if channels_last else t


def _reference_forward(x, channels_last, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
    y, mean, rstd = reference.batch_norm_forward(_as_nchw(x, channels_last), weight, bias, running_mean, running_var,
                                                 use_batch_stats, momentum, eps)
    return _as_nchw(y, channels_last).contiguous(), mean, rstd


def _reference_backward(dy, x, channels_last, weight, mean, rstd, used_batch_stats, need_dx, need_dweight,
                        need_dbias):
    dx, dweight, dbias = reference.batch_norm_backward(_as_nchw(dy, channels_last), _as_nchw(x, channels_last),
                                                       weight, mean, rstd, used_batch_stats, need_dx, need_dweight,
                                                       need_dbias)
    if dx is not None:
        dx = _as_nchw(dx, channels_last).contiguous()
    return dx, dweight, dbias


def _layout(x):
    """(layout, contiguous 3-D tensor in that layout) for input x of shape (N, C, *spatial)."""
    n, c = x.shape[0], x.shape[1]
    s = math.prod(x.shape[2:])
    if x.is_contiguous() and s > 1:
        return PLANAR, x.reshape(n, c, s)
    spatial_last = x.movedim(1, -1)
    if spatial_last.is_contiguous():
        return CHANNELS_LAST, spatial_last.reshape(n, s, c)
    return PLANAR, x.contiguous().reshape(n, c, s)


def _to_layout(t, layout, shape):
    n, c = shape[0], shape[1]
    s = math.prod(shape[2:])
    if layout == PLANAR:
        return t.contiguous().reshape(n, c, s)
    return t.movedim(1, -1).contiguous().reshape(n, s, c)


def _from_layout(t, layout, shape):
    """The (N, C, *spatial) view of a layout tensor: contiguous, or channels_last strides."""
    if layout == PLANAR:
        return t.reshape(shape)
    return t.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)).movedim(-1, 1)


def _flat_compute(t, dtype):
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


def _kernel_forward(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
    """(layout, x3, weight_c, y, mean, rstd) on a concrete backend, for non-empty x."""
    forward, _ = _backend_functions(backend)
    compute = reference.compute_dtype(x.dtype)
    layout, x3 = _layout(x)
    weight_c = _flat_compute(weight, compute)
    # Kernels update the running statistics in place; odd strides are updated on a copy.
    stats = [t if t is None or t.is_contiguous() else t.contiguous() for t in (running_mean, running_var)]
    y3, mean, rstd = forward(x3, layout == CHANNELS_LAST, weight_c, _flat_compute(bias, compute), stats[0], stats[1],
                             use_batch_stats, momentum, eps)
    for original, updated in zip((running_mean, running_var), stats):
        if use_batch_stats and updated is not original:
            original.copy_(updated)
    return layout, x3, weight_c, _from_layout(y3, layout, x.shape), mean, rstd


def _kernel_backward(dy, x3, layout, shape, weight_c, mean, rstd, used_batch_stats, need, backend):
    """(dx in x's layout, dweight, dbias in the compute dtype), None where not needed."""
    _, backward = _backend_functions(backend)
    dx, dweight, dbias = backward(_to_layout(dy, layout, shape), x3, layout == CHANNELS_LAST, weight_c, mean, rstd,
                                  used_batch_stats, *need)
    return (None if dx is None else _from_layout(dx, layout, shape)), dweight, dbias


def _channel_view(t, ndim):
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_composite(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, eps):
    """The forward in differentiable torch ops; running statistics updated as the kernels do."""
    c = reference.compute_dtype(x.dtype)
    dims = [0] + list(range(2, x.dim()))
    xf = x.to(c)
    if use_batch_stats:
        mean = xf.mean(dims)
        centered = xf - _channel_view(mean, x.dim())
        var = (centered * centered).mean(dims)
        n = x.numel() // x.shape[1]
        if n > 0:
            with torch.no_grad():
                if running_mean is not None:
                    running_mean.copy_(((1 - momentum) * running_mean.to(c) + momentum * mean).to(running_mean.dtype))
                if running_var is not None:
                    unbiased = var * (n / (n - 1))
                    running_var.copy_(((1 - momentum) * running_var.to(c) + momentum * unbiased).to(running_var.dtype))
    else:
        mean, var = running_mean.to(c), running_var.to(c)
        centered = xf - _channel_view(mean, x.dim())
    y = centered * _channel_view(torch.rsqrt(var + eps), x.dim())
    if weight is not None:
        y = y * _channel_view(weight.to(c), x.dim())
    if bias is not None:
        y = y + _channel_view(bias.to(c), x.dim())
    return y.to(x.dtype)


def _composite_backward(dy, x, weight, bias, mean, rstd, used_batch_stats, eps, need):
    """(dx, dweight, dbias) in differentiable torch ops; batch statistics are recomputed from x,
    running ones are the saved constants: the backward of a graph being built, and of batched
    gradients."""
    c = reference.compute_dtype(x.dtype)
    dims = [0] + list(range(2, x.dim()))
    xf, dyf = x.to(c), dy.to(c)
    if used_batch_stats:
        mean = xf.mean(dims)
        centered = xf - _channel_view(mean, x.dim())
        rstd = torch.rsqrt((centered * centered).mean(dims) + eps)
    else:
        centered = xf - _channel_view(mean, x.dim())
    xhat = centered * _channel_view(rstd, x.dim())
    dx = dweight = dbias = None
    if need[0]:
        scale = _channel_view(rstd * weight.to(c) if weight is not None else rstd, x.dim())
        if used_batch_stats:
            inner = (dyf - _channel_view(dyf.mean(dims), x.dim())
                     - xhat * _channel_view((dyf * xhat).mean(dims), x.dim()))
            dx = (scale * inner).to(x.dtype)
        else:
            dx = (scale * dyf).to(x.dtype)
    if need[1]:
        dweight = (dyf * xhat).sum(dims).to(weight.dtype)
    if need[2]:
        dbias = dyf.sum(dims).to(bias.dtype)
    return dx, dweight, dbias


def _to_parameter(grad, parameter):
    return grad if grad is None or grad.dtype == parameter.dtype else grad.to(parameter.dtype)


def _backward_path(dy):
    """COMPOSITE when the backward must be built from differentiable ops (a graph being built, or
    batched gradients), else the path for dy: FAST for plain tensors, OP in a trace."""
    return _route.COMPOSITE if torch.is_grad_enabled() else _route.route(dy)


def _empty_gradients(dy, weight, bias, need):
    """torch's gradients for an empty batch: zeros."""
    return (torch.zeros_like(dy) if need[0] else None,
            torch.zeros_like(weight) if need[1] else None,
            torch.zeros_like(bias) if need[2] else None)


class BatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias per channel; with batch statistics, running stats are updated."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
        ctx.empty = x.numel() == 0
        ctx.meta = (backend, x.shape, use_batch_stats, eps)
        if ctx.empty:
            # As torch: an empty output, zero parameter gradients, running statistics untouched.
            ctx.save_for_backward(x, weight, bias)
            return torch.empty_like(x)
        layout, x3, weight_c, y, mean, rstd = _kernel_forward(x, weight, bias, running_mean, running_var,
                                                              use_batch_stats, momentum, eps, backend)
        ctx.save_for_backward(x3, weight_c, mean, rstd, x, weight, bias)
        ctx.layout = layout
        return y

    @staticmethod
    def backward(ctx, dy):
        backend, shape, used_batch_stats, eps = ctx.meta
        need = ctx.needs_input_grad[:3]
        path = _backward_path(dy)
        if ctx.empty:
            _, weight, bias = ctx.saved_tensors
            grads = _empty_gradients(dy, weight, bias, need)
        elif path != _route.FAST:
            _, _, mean, rstd, x, weight, bias = ctx.saved_tensors
            grads = _backward_on_path(path, dy, x, weight, bias, mean, rstd, used_batch_stats, eps, need, backend)
        else:
            x3, weight_c, mean, rstd, _, weight, bias = ctx.saved_tensors
            dx, dweight, dbias = _kernel_backward(dy, x3, ctx.layout, shape, weight_c, mean, rstd, used_batch_stats,
                                                  need, backend)
            grads = (dx, _to_parameter(dweight, weight), _to_parameter(dbias, bias))
        return (*grads, None, None, None, None, None, None)


# torch.library ops: what torch.compile, torch.export and fake tensors see. The backend name is
# resolved inside the real implementation, at run time, so nothing is loaded while tracing.

def _fake_like_layout(x):
    """An uninitialized tensor with the shape and strides the kernels give an output for x."""
    layout, x3 = _layout(x)
    return _from_layout(torch.empty_like(x3, memory_format=torch.contiguous_format), layout, x.shape)


def _empty_batch_forward(x, stats):
    """The forward op's result for an empty batch: NaN statistics, the running ones unchanged."""
    nan = x.new_full((x.shape[1],), float("nan"), dtype=reference.compute_dtype(x.dtype))
    return _fake_like_layout(x), nan, nan.clone(), *stats


def _backward_result(x, dx, dweight, dbias, need):
    """The backward op's result: dx, dweight, dbias, empty where not needed, zeros for an empty
    batch."""
    compute = reference.compute_dtype(x.dtype)
    if x.numel() == 0:
        dx, dweight, dbias = (torch.zeros_like(_fake_like_layout(x)), x.new_zeros((x.shape[1],), dtype=compute),
                              x.new_zeros((x.shape[1],), dtype=compute))
    return (dx if need[0] else x.new_empty((0,)), dweight if need[1] else x.new_empty((0,), dtype=compute),
            dbias if need[2] else x.new_empty((0,), dtype=compute))


@torch.library.custom_op("fused_optim::batch_norm_forward", mutates_args=())
def batch_norm_forward_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                          running_var: Optional[Tensor], use_batch_stats: bool, momentum: float,
                          eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, rstd, updated running_mean, updated running_var): y in the kernels' layout for x,
    per-channel statistics in the compute dtype (NaN for an empty batch). The running statistics
    are not changed: the kernels update copies, which the caller writes back (empty for None)."""
    stats = [x.new_empty((0,)) if t is None else t.clone() for t in (running_mean, running_var)]
    if x.numel() == 0:
        return _empty_batch_forward(x, stats)
    concrete = _backend.resolve(backend, x.device)
    _, _, _, y, mean, rstd = _kernel_forward(x, weight, bias, *(None if t is None else s for t, s in
                                                                 zip((running_mean, running_var), stats)),
                                             use_batch_stats, momentum, eps, concrete)
    return y, mean, rstd, *stats


@batch_norm_forward_op.register_fake
def _(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
    compute = reference.compute_dtype(x.dtype)
    stats = [x.new_empty((0,)) if t is None else torch.empty_like(t) for t in (running_mean, running_var)]
    return (_fake_like_layout(x), x.new_empty((x.shape[1],), dtype=compute), x.new_empty((x.shape[1],), dtype=compute),
            *stats)


# Traced calls on CUDA tensors whose backend is (or resolves to) triton take the triton_ops of
# fused_optim.triton.batch_norm instead, so the compiler sees the kernel launches. They are registered
# at import where they can run (CUDA and triton present), never inside a trace; a caller tracing
# FakeTensors on "cuda" on a machine without a GPU calls ``load_triton_ops()`` first.

_triton_ops = None


def load_triton_ops():
    """Register the triton_ops (importing triton) and their autograd; returns their module."""
    global _triton_ops
    if _triton_ops is None:
        from ..triton import batch_norm as triton_batch_norm

        triton_batch_norm.batch_norm_forward_op.register_autograd(_triton_op_backward,
                                                                  setup_context=_triton_op_setup_context)
        _triton_ops = triton_batch_norm
    return _triton_ops


def uses_triton_ops(x, backend):
    """Whether a traced call on x with this backend name runs the triton_ops."""
    return _triton_ops is not None and x.device.type == "cuda" and backend in ("auto", "triton") and x.numel() > 0


def _batch_norm_triton(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
    """(y, updated running_mean, updated running_var) through the triton_op; the layout and the
    parameters prepared in torch ops the trace records."""
    compute = reference.compute_dtype(x.dtype)
    layout, x3 = _layout(x)
    stats = [t if t is None else t.contiguous() for t in (running_mean, running_var)]
    y3, _, _, new_mean, new_var = torch.ops.fused_optim.batch_norm_forward_triton(
        x3, layout == CHANNELS_LAST, _flat_compute(weight, compute), _flat_compute(bias, compute), *stats,
        use_batch_stats, momentum, eps)
    return _from_layout(y3, layout, x.shape), new_mean, new_var


def _triton_op_setup_context(ctx, inputs, output):
    x3, channels_last, weight, bias, _, _, use_batch_stats, _, eps = inputs
    _, mean, rstd, new_mean, new_var = output
    ctx.mark_non_differentiable(mean, rstd, new_mean, new_var)
    ctx.save_for_backward(x3, weight, bias, mean, rstd)
    ctx.meta = (channels_last, use_batch_stats, eps)


def _triton_op_backward(ctx, dy, *_):
    x3, weight, bias, mean, rstd = ctx.saved_tensors
    channels_last, used_batch_stats, eps = ctx.meta
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3])
    if _backward_path(dy) == _route.COMPOSITE:
        dx, dweight, dbias = _composite_backward(_as_nchw(dy, channels_last), _as_nchw(x3, channels_last), weight,
                                                 bias, mean, rstd, used_batch_stats, eps, need)
        dx = None if dx is None else _as_nchw(dx, channels_last)
    else:
        dx, dweight, dbias = torch.ops.fused_optim.batch_norm_backward_triton(
            dy.contiguous(), x3, channels_last, weight, mean, rstd, used_batch_stats, *need)
    return (dx if need[0] else None, None, dweight if need[1] else None, dbias if need[2] else None,
            None, None, None, None, None)


if torch.cuda.is_available() and _backend.unavailable_reason("triton", "cuda") is None:
    load_triton_ops()


def batch_norm_op(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
    """batch_norm through the registered op (the triton_op where ``uses_triton_ops``), the running
    statistics written back after it."""
    if uses_triton_ops(x, backend):
        y, new_mean, new_var = _batch_norm_triton(x, weight, bias, running_mean, running_var, use_batch_stats,
                                                  momentum, eps)
    else:
        y, _, _, new_mean, new_var = torch.ops.fused_optim.batch_norm_forward(
            x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend)
    if use_batch_stats:
        for running, updated in ((running_mean, new_mean), (running_var, new_var)):
            if running is not None:
                with torch.no_grad():
                    running.copy_(updated)
    return y


@torch.library.custom_op("fused_optim::batch_norm_backward", mutates_args=())
def batch_norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                           used_batch_stats: bool, need_dx: bool, need_dweight: bool, need_dbias: bool,
                           backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dx in the kernels' layout for x, dweight, dbias in the compute dtype); empty where not
    needed, zeros for an empty batch."""
    need = (need_dx, need_dweight, need_dbias)
    dx = dweight = dbias = None
    if x.numel() > 0:
        concrete = _backend.resolve(backend, x.device)
        layout, x3 = _layout(x)
        dx, dweight, dbias = _kernel_backward(dy, x3, layout, x.shape, _flat_compute(weight, reference.compute_dtype(
            x.dtype)), mean, rstd, used_batch_stats, need, concrete)
    return _backward_result(x, dx, dweight, dbias, need)


@batch_norm_backward_op.register_fake
def _(dy, x, weight, mean, rstd, used_batch_stats, need_dx, need_dweight, need_dbias, backend):
    compute = reference.compute_dtype(x.dtype)
    channels = x.shape[1]
    return (_fake_like_layout(x) if need_dx else x.new_empty((0,)),
            x.new_empty((channels if need_dweight else 0,), dtype=compute),
            x.new_empty((channels if need_dbias else 0,), dtype=compute))


# Under inductor the two ops are lowered as torch ops (the reference's math; in training the
# backward is torch's own native_batch_norm_backward, whose two sums inductor fuses), so that inductor
# fuses the normalization with what surrounds it: it runs convolutions channels_last and would
# otherwise convert layouts to and from the opaque call (measured on the CPU: compiled Conv-BN
# 0.73-0.93x of torch.nn's compiled). Everywhere else (eager, torch.export, make_fx, CUDA calls on
# the triton backend, whose triton_ops inductor sees) the ops stay fused_optim's own. The
# lowerings enter inductor's decomposition table when inductor is imported (fused_optim._inductor),
# so an op never reaches inductor undecomposed once its table holds it.

def _in_kernel_layout(t, x):
    """t (shaped like x) with the strides the kernels give an output for x (_fake_like_layout)."""
    layout, _ = _layout(x)
    return _from_layout(_to_layout(t, layout, x.shape), layout, x.shape)


def _lowered_forward(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
    if x.numel() == 0:
        return _empty_batch_forward(x, [x.new_empty((0,)) if t is None else t.clone()
                                        for t in (running_mean, running_var)])
    compute = reference.compute_dtype(x.dtype)
    mean, var = running_mean, running_var
    if use_batch_stats:  # the batch statistics in one reduction (inductor's Welford), then normalized
        # with as the reference normalizes with given ones
        var, mean = torch.var_mean(x.to(compute), dim=[0] + list(range(2, x.dim())), correction=0)
    y, mean_used, rstd = reference.batch_norm_forward(x, _flat_compute(weight, compute), _flat_compute(bias, compute),
                                                      mean, var, False, momentum, eps)
    # new running statistics, as the kernels compute them (a lowering may not write to its inputs)
    n = x.numel() // x.shape[1]
    updated = []
    for running, batch in ((running_mean, mean), (running_var, var * (n / (n - 1)) if use_batch_stats else None)):
        if running is None:
            updated.append(x.new_empty((0,)))
        elif use_batch_stats:
            updated.append(((1 - momentum) * running.to(compute) + momentum * batch).to(running.dtype))
        else:
            updated.append(running.clone())
    return (_in_kernel_layout(y, x), mean_used, rstd, *updated)


def _lowered_backward(dy, x, weight, mean, rstd, used_batch_stats, need_dx, need_dweight, need_dbias, backend):
    need = (need_dx, need_dweight, need_dbias)
    dx = dweight = dbias = None
    if x.numel() > 0:
        weight = _flat_compute(weight, reference.compute_dtype(x.dtype))
        if used_batch_stats:  # torch's own decomposition: inductor fuses both sums into one loop nest
            dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(dy, x, weight, None, None, mean, rstd,
                                                                           True, 0.0, list(need))
        else:
            dx, dweight, dbias = reference.batch_norm_backward(dy, x, weight, mean, rstd, False, *need)
        dx = _in_kernel_layout(dx, x) if need_dx else None
    return _backward_result(x, dx, dweight, dbias, need)


def inductor_lowerings():
    """{op overload: lowering} for inductor's decomposition table."""
    return {torch.ops.fused_optim.batch_norm_forward.default: _lowered_forward,
            torch.ops.fused_optim.batch_norm_backward.default: _lowered_backward}


def _op_setup_context(ctx, inputs, output):
    x, weight, bias, _, _, use_batch_stats, _, eps, backend = inputs
    _, mean, rstd, new_mean, new_var = output
    ctx.mark_non_differentiable(mean, rstd, new_mean, new_var)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.meta = (use_batch_stats, eps, backend)


def _backward_on_path(path, dy, x, weight, bias, mean, rstd, used_batch_stats, eps, need, backend):
    """(dx, dweight, dbias) in differentiable ops (COMPOSITE) or through the registered op."""
    if path == _route.COMPOSITE and x.numel() > 0:
        return _composite_backward(dy, x, weight, bias, mean, rstd, used_batch_stats, eps, need)
    dx, dweight, dbias = torch.ops.fused_optim.batch_norm_backward(dy, x, weight, mean, rstd, used_batch_stats, *need,
                                                                   backend)
    return (dx if need[0] else None, dweight.to(weight.dtype) if need[1] else None,
            dbias.to(bias.dtype) if need[2] else None)


def _op_backward(ctx, dy, *_):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    used_batch_stats, eps, backend = ctx.meta
    path = _route.COMPOSITE if _backward_path(dy) == _route.COMPOSITE else _route.OP
    return _backward_on_path(path, dy, x, weight, bias, mean, rstd, used_batch_stats, eps, ctx.needs_input_grad[:3],
                             backend) + (None,) * 6


batch_norm_forward_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def _cpp_composite_backward(dy, x, weight, bias, mean, rstd, used_batch_stats, eps, need_dx, need_dweight, need_dbias):
    """The backward the C++ autograd path hands back to Python: a graph being built, or a
    gradient that is not a plain tensor (batched gradients, a subclass, a dispatch mode)."""
    return _backward_on_path(_backward_path(dy), dy, x, weight, bias, mean, rstd, used_batch_stats, eps,
                             (need_dx, need_dweight, need_dbias), "cpp")


_cpp_autograd_extension = None


def _cpp_autograd():
    """The C++ extension, its ``batch_norm_autograd`` told which Python backward to fall back on."""
    global _cpp_autograd_extension
    if _cpp_autograd_extension is None:
        extension = _cpp.get()
        extension.set_batch_norm_composite_backward(_cpp_composite_backward)
        _cpp_autograd_extension = extension
    return _cpp_autograd_extension


def check_batch_norm(input, running_mean, running_var, weight, bias, training, eps=1e-5):
    """Raise torch's error for arguments batch_norm rejects; changes nothing."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"batch_norm: input must be a tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, ...) with at least 2 dimensions, got "
                         f"{input.dim()}D input")
    if not input.is_floating_point():
        raise RuntimeError(f"batch_norm: expected a floating-point input, got {input.dtype}")
    channels = input.shape[1]
    device = input.device
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"batch_norm: {name} must be a tensor or None, got {type(t).__name__}")
        if t.numel() != channels or t.dim() != 1:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}"
                               + ("" if t.dim() == 1 else f" (got a {t.dim()}-D tensor)"))
        if not t.is_floating_point():
            raise RuntimeError(f"batch_norm: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != device:
            raise RuntimeError(f"batch_norm: {name} is on {t.device} but the input is on {device}")
    if training:
        values_per_channel = input.shape[0] * math.prod(input.shape[2:])
        if values_per_channel == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    else:
        if eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        if running_var is None:
            raise RuntimeError("running_var must be defined in evaluation mode")


def prepare_batch_norm(input, running_mean, running_var, weight, bias, training, backend, eps=1e-5):
    """(path, backend) for a batch_norm call, after every check; raises before anything changes.

    The backend is resolved here, except in a trace (the compiled code resolves it when it runs)
    and on the composite path, which needs none.
    """
    name = _backend.validate_name(backend)
    check_batch_norm(input, running_mean, running_var, weight, bias, training, eps)
    path = _route.route(input, weight, bias, running_mean, running_var)
    if path == _route.FAST:
        name = _route.resolve_eager(name, input.device)
    elif path == _route.OP and not torch.compiler.is_compiling():
        name = _backend.resolve(name, input.device)
    return path, name


def batch_norm_prepared(prepared, input, running_mean, running_var, weight, bias, training, momentum, eps):
    """batch_norm on the path and backend ``prepare_batch_norm`` chose for these arguments."""
    path, backend = prepared
    training, momentum, eps = bool(training), float(momentum), float(eps)
    if path == _route.FAST:
        if backend == "cpp" and input.numel() > 0:
            # One call: the C++ autograd Function runs the kernels and records a C++ backward.
            return _cpp_autograd().batch_norm_autograd(input, weight, bias, running_mean, running_var, training,
                                                       momentum, eps)
        return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                       backend)
    if path == _route.OP:
        return batch_norm_op(input, weight, bias, running_mean, running_var, training, momentum, eps, backend)
    return batch_norm_composite(input, running_mean, running_var, weight, bias, training, momentum, eps)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *,
               backend=None):
    """A drop-in for ``torch.nn.functional.batch_norm`` (same arguments, result, gradients and stat updates).

    Every argument is checked before anything changes: a rejected call leaves the running
    statistics as they were. ``backend``: None ($FUSED_OPTIM_BACKEND, else "auto"), "auto",
    "reference", "cpp" or "triton".
    """
    prepared = prepare_batch_norm(input, running_mean, running_var, weight, bias, training, backend, eps)
    return batch_norm_prepared(prepared, input, running_mean, running_var, weight, bias, training, momentum, eps)
