"""torch.nn drop-ins: gradient clipping, and normalization layers with fused forward and backward."""

from .clip_grad import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm
from .normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm

__all__ = [
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
]
