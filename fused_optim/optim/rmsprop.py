"""RMSprop (plain, centered, with momentum): torch.optim.RMSprop, every parameter of a group in one
fused call."""

import math

from ._base import MultiTensorOptimizer, low_precision_defaults
from ._checks import BACKEND_NOTE, LOW_PRECISION_NOTE, check_lr, check_non_negative
from ._spec import (LOW_PRECISION_FLAGS, LOW_PRECISION_SCALARS, STEP, OptimizerSpec, low_precision_fold,
                    master_bytes, scalar)


def _state_keys(group):
    keys = ("square_avg",)
    if group["momentum"] > 0:
        keys += ("momentum_buffer",)
    if group["centered"]:
        keys += ("grad_avg",)
    return keys


def _fold(group):
    alpha, weight_decay, momentum = scalar(group["alpha"]), scalar(group["weight_decay"]), scalar(group["momentum"])
    scalars = (scalar(group["lr"]), alpha, scalar(group["eps"]), weight_decay, momentum,
               -1.0 if group["maximize"] else 1.0)
    flags = (int(bool(group["centered"])), int(momentum > 0), int(weight_decay != 0), int(math.fabs(1.0 - alpha) < 0.5))
    return low_precision_fold(group, scalars, flags)


def _bytes_per_element(group, element_size, state_size):
    return master_bytes(group, element_size) + 3 * element_size + 2 * len(_state_keys(group)) * state_size


RMSPROP_SPEC = OptimizerSpec(
    name="rmsprop",
    display_name="RMSprop",
    scalars=("lr", "alpha", "eps", "weight_decay", "momentum", "sign") + LOW_PRECISION_SCALARS,
    flags=("centered", "momentum_on", "l2", "lerp_from_start") + LOW_PRECISION_FLAGS,
    counter=STEP,
    state_keys=_state_keys,
    fold=_fold,
    bytes_per_element=_bytes_per_element,
)


class RMSprop(MultiTensorOptimizer):
    __doc__ = """RMSprop, a drop-in for ``torch.optim.RMSprop`` (same arguments, defaults, results and state).

    State matches torch.optim's keys (``step``, ``square_avg``, and ``momentum_buffer`` with
    momentum, ``grad_avg`` when centered), created on a parameter's first step with a gradient, so
    a state_dict moves between torch.optim and fused_optim both ways. Sparse gradients are an
    error, as in torch.
""" + LOW_PRECISION_NOTE + BACKEND_NOTE

    spec = RMSPROP_SPEC

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False, *, backend=None,
                 max_grad_norm=None, master_weights=None, state_dtype=None, seed=None):
        check_lr(lr)
        check_non_negative(eps, "epsilon value")
        check_non_negative(momentum, "momentum value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(alpha, "alpha value")
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable,
                        **low_precision_defaults(master_weights, state_dtype, seed))
        super().__init__(params, defaults, backend, max_grad_norm)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("momentum", 0)
            group.setdefault("centered", False)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)
