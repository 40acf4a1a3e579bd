"""torch.nn drop-ins: normalization layers with fused forward and backward."""

from .normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d, LayerNorm

__all__ = ["LayerNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
