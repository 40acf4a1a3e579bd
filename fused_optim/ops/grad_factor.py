"""What every gradient of an optimizer step is multiplied by: AMP's unscale and clipping, folded
into one factor that the update kernels read as they load each gradient.

The clip part is ``min(max_norm / (norm + 1e-6), 1)`` with the norm of the unscaled gradients,
computed in their promoted dtype exactly as ``torch.nn.utils.clip_grad_norm_`` computes it; the
norm is one multi-tensor reduction per plan (``plan.grad_power_sum``), combined on the device
without a host sync.
"""

import torch

from ..reference import clip as clip_reference
from .optim import TritonPlan


def result_dtype(tensors):
    """The dtype torch's clip_grad_norm_ returns its total norm in, for these parameters."""
    return clip_reference.result_dtype(tensors)


def step_grad_factor(plans, max_norm, grad_scale, dtype, device):
    """(factor, total norm): 0-dim device tensors, or (None, None) when there is nothing to fold.

    ``plans``: the scanned plans of one step; ``max_norm``: clip threshold or None; ``grad_scale``:
    GradScaler's scale or None; ``dtype``/``device``: where the total norm is reported.
    """
    if max_norm is None:
        if grad_scale is None:
            return None, None
        return grad_scale.double().reciprocal(), None
    partials = [plan.grad_power_sum(2.0) for plan in plans]
    if plans and all(isinstance(p, TritonPlan) and p.device == device for p in plans):
        from ..triton import clip as triton_clip

        scale = grad_scale.to(device, non_blocking=True) if grad_scale is not None else None
        total, factor = triton_clip.finalize(torch.cat(partials), 2.0, dtype, max_norm, scale)
        return factor, total
    total = torch.stack([p.to(device, non_blocking=True).sum() for p in partials]).sum().sqrt()
    if grad_scale is not None:
        total = total / grad_scale.to(device, torch.float64)
    total = total.to(dtype)
    factor = clip_reference.clip_coefficient(max_norm, total).double()
    if grad_scale is not None:
        factor = factor / grad_scale.to(device, torch.float64)
    return factor, total
