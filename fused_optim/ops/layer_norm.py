"""layer_norm: the backend-neutral entry point and its autograd.Function.

Every backend sees the input as contiguous rows (M, N), N the product of ``normalized_shape``,
weight and bias as flat tensors in the compute dtype (float32, float64 for float64 inputs), and
returns float32 (float64) per-row ``mean`` and ``rstd`` that the backward takes back. Gradients of
weight and bias come back in the compute dtype and are cast once to the parameters' dtype here.
"""

import math
import numbers

import torch

from .. import _backend, _cpp
from ..reference import norm as reference


def _backend_functions(backend):
    """(forward, backward) of a concrete backend."""
    if backend == "reference":
        return reference.layer_norm_forward, reference.layer_norm_backward
    if backend == "cpp":
        extension = _cpp.get()
        return extension.layer_norm_forward, extension.layer_norm_backward
    from ..triton import layer_norm as triton_layer_norm

    return triton_layer_norm.layer_norm_forward, triton_layer_norm.layer_norm_backward


def _flat_compute(t, dtype):
    return None if t is None else t.reshape(-1).to(dtype).contiguous()


class LayerNormFunction(torch.autograd.Function):
    """y = (x - mean) * rstd * weight + bias over the trailing ``normalized_numel`` elements of x."""

    @staticmethod
    def forward(ctx, x, weight, bias, normalized_numel, eps, backend):
        # Empty tensors take the reference path: no kernel has work to do, and it defines the
        # shapes (and NaN statistics of empty rows) the same way as torch.
        forward, _ = _backend_functions(backend if x.numel() > 0 else "reference")
        compute = reference.compute_dtype(x.dtype)
        rows = x.reshape(-1, normalized_numel).contiguous()
        weight_c = _flat_compute(weight, compute)
        y, mean, rstd = forward(rows, weight_c, _flat_compute(bias, compute), eps)
        ctx.save_for_backward(rows, weight_c, mean, rstd)
        ctx.backend = backend if x.numel() > 0 else "reference"
        ctx.x_shape = x.shape
        ctx.weight_meta = None if weight is None else (weight.shape, weight.dtype)
        ctx.bias_meta = None if bias is None else (bias.shape, bias.dtype)
        return y.reshape(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        rows, weight_c, mean, rstd = ctx.saved_tensors
        _, backward = _backend_functions(ctx.backend)
        need_dx, need_dweight, need_dbias = ctx.needs_input_grad[:3]
        dx, dweight, dbias = backward(dy.reshape(rows.shape).contiguous(), rows, weight_c, mean, rstd, need_dx,
                                      need_dweight, need_dbias)
        if dx is not None:
            dx = dx.reshape(ctx.x_shape)
        if dweight is not None:
            shape, dtype = ctx.weight_meta
            dweight = dweight.reshape(shape).to(dtype)
        if dbias is not None:
            shape, dtype = ctx.bias_meta
            dbias = dbias.reshape(shape).to(dtype)
        return dx, dweight, dbias, None, None, None


def _check_parameter(name, t, normalized_shape, x):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"layer_norm: {name} must be a tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != normalized_shape:
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
    return tuple(int(s) for s in normalized_shape)


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
    if input.dim() < len(shape) or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, {', '.join(map(str, shape))}], "
            f"but got input of size{list(input.shape)}"
        )
    if not input.is_floating_point():
        raise RuntimeError(f"layer_norm: expected a floating-point input, got {input.dtype}")
    _check_parameter("weight", weight, shape, input)
    _check_parameter("bias", bias, shape, input)
    concrete = _backend.resolve(name, input.device)
    return LayerNormFunction.apply(input, weight, bias, math.prod(shape), float(eps), concrete)
