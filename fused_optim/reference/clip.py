"""Gradient norms and clipping over lists of tensors, written for clarity.

The total p-norm is computed from every element at once: sum |x|^p (max |x| for p = inf) in
float64, then the p-th root, rounded once to the promoted dtype of the tensors. (torch first
rounds each tensor's norm to that tensor's dtype; for 16-bit gradients the two can differ in the
last bit of the 16-bit result, for float32 and float64 only by rounding.) The clip coefficient
``min(max_norm / (total + 1e-6), 1)`` is computed exactly as torch computes it, in the total's
dtype.
"""

import math

import torch


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def is_power_norm(norm_type):
    """The norms with a power-sum form: any positive p, and inf."""
    return norm_type > 0


def result_dtype(tensors):
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype.to_real() if dtype.is_complex else dtype


def power_sum(tensors, norm_type):
    """sum |x|^p over all elements (max |x| for p = inf) as a 0-dim float64 tensor."""
    device = tensors[0].device
    parts = []
    for t in tensors:
        a = (t.abs() if t.is_complex() else _real(t).abs()).to(torch.float64).reshape(-1)
        if math.isinf(norm_type):
            parts.append(a.max() if a.numel() else torch.zeros((), dtype=torch.float64, device=a.device))
        else:
            parts.append((a if norm_type == 1 else a**norm_type).sum())
    stacked = torch.stack([p.to(device) for p in parts])
    return stacked.max() if math.isinf(norm_type) else stacked.sum()


def norm_from_power_sum(value, norm_type):
    if math.isinf(norm_type) or norm_type == 1:
        return value
    return value.sqrt() if norm_type == 2 else value ** (1.0 / norm_type)


def total_norm(tensors, norm_type):
    """The p-norm of all the tensors' elements together: 0-dim, the promoted dtype, first device."""
    if not is_power_norm(norm_type):
        # 0-norms and negative orders: torch's definition, norm of the per-tensor norms.
        norms = [torch.linalg.vector_norm(t, norm_type) for t in tensors]
        return torch.linalg.vector_norm(torch.stack([n.to(tensors[0].device) for n in norms]), norm_type)
    return norm_from_power_sum(power_sum(tensors, norm_type), norm_type).to(result_dtype(tensors))


def clip_coefficient(max_norm, total):
    """min(max_norm / (total + 1e-6), 1) in the total's dtype, as torch.nn.utils computes it."""
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def scale_(tensors, factor):
    """Multiply in place; ``factor`` is a number or a 0-dim tensor (moved to each tensor's device)."""
    for t in tensors:
        t.mul_(factor.to(t.device) if isinstance(factor, torch.Tensor) else factor)


def clamp_(tensors, low, high):
    for t in tensors:
        t.clamp_(low, high)
