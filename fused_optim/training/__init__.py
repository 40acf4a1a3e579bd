"""fused_optim.training: tools for choosing and running a training set-up on top of the optimizers.

    from fused_optim.training import LRFinder, compare_optimizers

Plots need matplotlib (``pip install 'fused_optim[plot]'``); it is imported only when a plot is drawn.
"""

from .compare import Comparison, Run, compare_optimizers, default_optimizer, default_optimizers
from .lr_finder import LRFinder, LRFinderResult

__all__ = [
    "LRFinder",
    "LRFinderResult",
    "compare_optimizers",
    "Comparison",
    "Run",
    "default_optimizer",
    "default_optimizers",
]
