"""LayerNorm and BatchNorm1d/2d/3d: torch.nn's modules with a fused forward and backward.

Each subclasses its torch.nn counterpart, so constructor arguments and defaults, parameter and
buffer names, state_dict keys, checkpoint loading and ``isinstance`` checks are torch's own. Only
``forward`` differs; the extra keyword ``backend`` chooses the implementation: None
($FUSED_OPTIM_BACKEND if set, else "auto"), "auto", "reference", "cpp" or "triton".
"""

import inspect

import torch

from .. import _backend
from ..ops.batch_norm import batch_norm_prepared, prepare_batch_norm
from ..ops.layer_norm import layer_norm


def _with_backend_keyword(torch_class):
    """torch's constructor signature plus the keyword-only ``backend=None``, for help() and inspect."""
    signature = inspect.signature(torch_class.__init__)
    backend = inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None)
    return signature.replace(parameters=list(signature.parameters.values()) + [backend])


class _BackendChoice:
    """The ``backend`` a module was built with, validated once (the environment is read then)."""

    def _set_backend(self, backend):
        self.backend = _backend.validate_name(backend)

    def __setstate__(self, state):
        state.setdefault("backend", "auto")
        super().__setstate__(state)


class LayerNorm(_BackendChoice, torch.nn.LayerNorm):
    """A drop-in for ``torch.nn.LayerNorm``: same arguments, parameters, state_dict and results."""

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, backend=self.backend)


class _FusedBatchNorm(_BackendChoice):
    """forward of torch's _BatchNorm on fused_optim's batch_norm; subclasses add torch's class."""

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        self._check_input_dim(input)
        # Batch statistics in training, and in eval when there are no running statistics.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Running statistics are updated only when tracked, and read whenever they normalize.
        pass_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_running else None
        running_var = self.running_var if pass_running else None
        prepared = prepare_batch_norm(input, running_mean, running_var, self.weight, self.bias, use_batch_stats,
                                      self.backend, self.eps)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        return batch_norm_prepared(prepared, input, running_mean, running_var, self.weight, self.bias, use_batch_stats,
                                   factor, self.eps)


class BatchNorm1d(_FusedBatchNorm, torch.nn.BatchNorm1d):
    """A drop-in for ``torch.nn.BatchNorm1d``: (N, C) or (N, C, L) input."""


class BatchNorm2d(_FusedBatchNorm, torch.nn.BatchNorm2d):
    """A drop-in for ``torch.nn.BatchNorm2d``: (N, C, H, W) input, contiguous or channels_last."""


class BatchNorm3d(_FusedBatchNorm, torch.nn.BatchNorm3d):
    """A drop-in for ``torch.nn.BatchNorm3d``: (N, C, D, H, W) input, contiguous or channels_last_3d."""


LayerNorm.__init__.__signature__ = _with_backend_keyword(torch.nn.LayerNorm)
# BatchNorm1d/2d/3d share torch's _BatchNorm constructor, and so one signature.
_FusedBatchNorm.__init__.__signature__ = _with_backend_keyword(torch.nn.BatchNorm2d)
