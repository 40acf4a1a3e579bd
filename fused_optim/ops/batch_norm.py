"""batch_norm: the backend-neutral entry point, its checks and its autograd.Function.

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

import torch

from .. import _backend, _cpp
from ..reference import norm as reference

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
    s = x.numel() // (n * c)
    if x.is_contiguous() and s > 1:
        return PLANAR, x.reshape(n, c, s)
    spatial_last = x.movedim(1, -1)
    if spatial_last.is_contiguous():
        return CHANNELS_LAST, spatial_last.reshape(n, s, c)
    return PLANAR, x.contiguous().reshape(n, c, s)


def _to_layout(t, layout, shape):
    n, c = shape[0], shape[1]
    s = t.numel() // (n * c)
    if layout == PLANAR:
        return t.contiguous().reshape(n, c, s)
    return t.movedim(1, -1).contiguous().reshape(n, s, c)


def _from_layout(t, layout, shape):
    """The (N, C, *spatial) view of a layout tensor: contiguous, or channels_last strides."""
    if layout == PLANAR:
        return t.reshape(shape)
    return t.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)).movedim(-1, 1)


def _flat_compute(t, dtype):
    return None if t is None else t.to(dtype).contiguous()


class BatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias per channel; with batch statistics, running stats are updated."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, backend):
        ctx.empty = x.numel() == 0
        if ctx.empty:
            # As torch: an empty output, zero parameter gradients, running statistics untouched.
            ctx.parameters = [None if p is None else (p.shape, p.dtype, p.device) for p in (weight, bias)]
            return torch.empty_like(x)
        forward, _ = _backend_functions(backend)
        compute = reference.compute_dtype(x.dtype)
        layout, x3 = _layout(x)
        weight_c = _flat_compute(weight, compute)
        # Kernels update the running statistics in place; odd strides are updated on a copy.
        stats = [t if t is None or t.is_contiguous() else t.contiguous() for t in (running_mean, running_var)]
        y3, mean, rstd = forward(x3, layout == CHANNELS_LAST, weight_c, _flat_compute(bias, compute), stats[0],
                                 stats[1], use_batch_stats, momentum, eps)
        for original, updated in zip((running_mean, running_var), stats):
            if use_batch_stats and updated is not original:
                original.copy_(updated)
        ctx.save_for_backward(x3, weight_c, mean, rstd)
        ctx.meta = (backend, layout, x.shape, use_batch_stats)
        ctx.weight_dtype = None if weight is None else weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return _from_layout(y3, layout, x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        if ctx.empty:
            zeros = [None if p is None else torch.zeros(p[0], dtype=p[1], device=p[2]) for p in ctx.parameters]
            return (torch.zeros_like(dy), *zeros, None, None, None, None, None, None)
        x3, weight_c, mean, rstd = ctx.saved_tensors
        backend, layout, shape, used_batch_stats = ctx.meta
        _, backward = _backend_functions(backend)
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        dx, dweight, dbias = backward(_to_layout(dy, layout, shape), x3, layout == CHANNELS_LAST, weight_c, mean,
                                      rstd, used_batch_stats, need_dx, need_dweight, need_dbias)
        if dx is not None:
            dx = _from_layout(dx, layout, shape)
        if dweight is not None:
            dweight = dweight.to(ctx.weight_dtype)
        if dbias is not None:
            dbias = dbias.to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, None, None, None, None


def check_batch_norm(input, running_mean, running_var, weight, bias, training):
    """Raise torch's error for arguments batch_norm rejects; changes nothing."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"batch_norm: input must be a tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of shape (N, C, ...) with at least 2 dimensions, got "
                         f"{input.dim()}D input")
    if not input.is_floating_point():
        raise RuntimeError(f"batch_norm: expected a floating-point input, got {input.dtype}")
    channels = input.shape[1]
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
        if t.device != input.device:
            raise RuntimeError(f"batch_norm: {name} is on {t.device} but the input is on {input.device}")
    if training:
        values_per_channel = input.shape[0] * math.prod(input.shape[2:])
        if values_per_channel == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    else:
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        if running_var is None:
            raise RuntimeError("running_var must be defined in evaluation mode")


def prepare_batch_norm(input, running_mean, running_var, weight, bias, training, backend):
    """The concrete backend for a batch_norm call, after every check; raises before anything changes."""
    name = _backend.validate_name(backend)
    check_batch_norm(input, running_mean, running_var, weight, bias, training)
    return _backend.resolve(name, input.device)


def batch_norm_prepared(backend, input, running_mean, running_var, weight, bias, training, momentum, eps):
    """batch_norm on a concrete backend, for arguments ``prepare_batch_norm`` accepted."""
    return BatchNormFunction.apply(input, weight, bias, running_mean, running_var, bool(training), float(momentum),
                                   float(eps), backend)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *,
               backend=None):
    """A drop-in for ``torch.nn.functional.batch_norm`` (same arguments, result, gradients and stat updates).

    Every argument is checked before anything changes: a rejected call leaves the running
    statistics as they were. ``backend``: None ($FUSED_OPTIM_BACKEND, else "auto"), "auto",
    "reference", "cpp" or "triton".
    """
    concrete = prepare_batch_norm(input, running_mean, running_var, weight, bias, training, backend)
    return batch_norm_prepared(concrete, input, running_mean, running_var, weight, bias, training, momentum, eps)
