"""torch.nn drop-ins: gradient clipping, normalization layers with fused forward and backward, and
dropout variants."""

from .clip_grad import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm
from .dropout import DropConnect, GaussianDropout, ScheduledDropout
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
    "GaussianDropout",
    "DropConnect",
    "ScheduledDropout",
]
