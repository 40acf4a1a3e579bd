"""fused_optim.training: tools for choosing, watching and shaping a training set-up on top of the
optimizers and the ops layer's fused reductions.

    from fused_optim.training import LRFinder, compare_optimizers, TrainingMonitor, GradientAccumulator

Plots need matplotlib (``pip install 'fused_optim[plot]'``); it is imported only when a plot is drawn.
"""

from .accumulate import GradientAccumulator
from .compare import Comparison, Run, compare_optimizers, default_optimizer, default_optimizers
from .landscape import Interpolation, Landscape, interpolate, loss_landscape
from .lr_finder import LRFinder, LRFinderResult
from .monitor import Finding, Thresholds, TrainingMonitor
from .regularization import RegularizedLoss

__all__ = [
    "LRFinder",
    "LRFinderResult",
    "compare_optimizers",
    "Comparison",
    "Run",
    "default_optimizer",
    "default_optimizers",
    "TrainingMonitor",
    "Thresholds",
    "Finding",
    "GradientAccumulator",
    "RegularizedLoss",
    "loss_landscape",
    "Landscape",
    "interpolate",
    "Interpolation",
]
