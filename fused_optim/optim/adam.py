"""Adam and AdamW: torch.optim's algorithms, every parameter of a group updated in one fused call."""

import math

import torch

from ._base import MultiTensorOptimizer, low_precision_defaults
from ._checks import BACKEND_NOTE, LOW_PRECISION_NOTE, check_fused, check_lr, check_non_negative
from ._spec import (LOW_PRECISION_FLAGS, LOW_PRECISION_SCALARS, STEP, OptimizerSpec, low_precision_fold,
                    master_bytes, scalar)


def _state_keys(group):
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")


def _fold(group):
    lr, beta1, beta2 = scalar(group["lr"]), scalar(group["betas"][0]), scalar(group["betas"][1])
    weight_decay = scalar(group["weight_decay"])
    decoupled = bool(group["decoupled_weight_decay"])
    l2_on = weight_decay != 0 and not decoupled
    scalars = (lr, beta1, beta2, scalar(group["eps"]), weight_decay if l2_on else 0.0,
               1.0 - lr * weight_decay if weight_decay != 0 and decoupled else 1.0,
               -1.0 if group["maximize"] else 1.0)
    return low_precision_fold(group, scalars,
                              (int(bool(group["amsgrad"])), int(l2_on), int(math.fabs(1.0 - beta1) < 0.5)))


def _bytes_per_element(group, element_size, state_size):
    # p and g in, p, m, v in and out (and vmax with amsgrad)
    return (master_bytes(group, element_size) + 2 * element_size + element_size
            + (2 * (3 if group["amsgrad"] else 2)) * state_size)


ADAM_SPEC = OptimizerSpec(
    name="adam",
    display_name="Adam",
    scalars=("lr", "beta1", "beta2", "eps", "l2", "decay", "sign") + LOW_PRECISION_SCALARS,
    flags=("amsgrad", "l2_on", "lerp_from_start") + LOW_PRECISION_FLAGS,
    counter=STEP,
    state_keys=_state_keys,
    fold=_fold,
    bytes_per_element=_bytes_per_element,
)

_STATE_NOTE = (
    """
    State matches torch.optim's keys and layout (``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``), so a state_dict moves between torch.optim and fused_optim both
    ways."""
    + LOW_PRECISION_NOTE
    + BACKEND_NOTE
)


def _check_adam_args(lr, betas, eps, weight_decay, foreach, capturable, fused, differentiable):
    check_lr(lr, foreach, capturable)
    check_non_negative(eps, "epsilon value")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    check_non_negative(weight_decay, "weight_decay value")
    if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, torch.Tensor) for b in betas)):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor):
            if not capturable and foreach:
                raise ValueError(f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True")
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{index}] must be 1-element")
    check_fused(fused, foreach, differentiable)


class Adam(MultiTensorOptimizer):
    __doc__ = (
        """Adam, a drop-in for ``torch.optim.Adam`` (same arguments, defaults, results and state).

    With ``decoupled_weight_decay=True`` it is AdamW.
"""
        + _STATE_NOTE
    )

    spec = ADAM_SPEC

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, backend=None, max_grad_norm=None, master_weights=None, state_dtype=None,
                 seed=None):
        _check_adam_args(lr, betas, eps, weight_decay, foreach, capturable, fused, differentiable)
        betas = tuple(b.reshape(()) if isinstance(b, torch.Tensor) and b.dim() != 0 else b for b in betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay,
                        **low_precision_defaults(master_weights, state_dtype, seed))
        super().__init__(params, defaults, backend, max_grad_norm)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)


class AdamW(Adam):
    __doc__ = (
        """AdamW, a drop-in for ``torch.optim.AdamW``: Adam with decoupled weight decay
    (``param *= 1 - lr * weight_decay`` before the Adam update; default weight_decay 1e-2).
"""
        + _STATE_NOTE
    )

    spec = OptimizerSpec(**{**ADAM_SPEC.__dict__, "display_name": "AdamW"})

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None, backend=None,
                 max_grad_norm=None, master_weights=None, state_dtype=None, seed=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, backend=backend, max_grad_norm=max_grad_norm,
                         master_weights=master_weights, state_dtype=state_dtype, seed=seed)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
