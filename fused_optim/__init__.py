"""fused_optim: drop-in fused optimizers, gradient clipping and normalization layers for PyTorch.

    import fused_optim as fo
    opt = fo.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    fo.clip_grad_norm_(model.parameters(), 1.0)
    norm = fo.LayerNorm(1024)
"""

from ._backend import BACKENDS, BackendInfo, available_backends
from .nn import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    LayerNorm,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)
from .ops.batch_norm import batch_norm
from .ops.layer_norm import layer_norm
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop, strip_state_dict
from . import _inductor

_inductor.install()  # BatchNorm's lowerings for inductor, added when (if) inductor is imported

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "strip_state_dict",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "layer_norm",
    "batch_norm",
    "available_backends",
    "BackendInfo",
    "BACKENDS",
    "__version__",
]
