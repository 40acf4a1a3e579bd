"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD, fused per group."""

import torch

from ._base import MultiTensorOptimizer, low_precision_defaults
from ._checks import BACKEND_NOTE, check_fused
from ._spec import (LOW_PRECISION_FLAGS, LOW_PRECISION_SCALARS, FIRST, OptimizerSpec, group_state_dtype,
                    low_precision_fold, master_bytes, scalar)


def _state_keys(group):
    return ("momentum_buffer",) if group["momentum"] != 0 else ()


def _fold(group):
    momentum, weight_decay = scalar(group["momentum"]), scalar(group["weight_decay"])
    scalars = (scalar(group["lr"]), momentum, scalar(group["dampening"]), weight_decay,
               -1.0 if group["maximize"] else 1.0)
    flags = (int(momentum != 0), int(weight_decay != 0), int(bool(group["nesterov"])))
    return low_precision_fold(group, scalars, flags)


def _empty_state(group, param, keys):
    # torch starts the buffer as the gradient on the first step: nothing to initialise
    return {key: torch.empty_like(param, dtype=group_state_dtype(group, param), memory_format=torch.preserve_format)
            for key in keys}


def _check_sparse(group):
    if group["weight_decay"] != 0:
        raise RuntimeError("SGD: weight_decay is not supported with sparse gradients (as in torch.optim.SGD)")


def _bytes_per_element(group, element_size, state_size):
    return master_bytes(group, element_size) + 3 * element_size + (2 * state_size if group["momentum"] != 0 else 0)


SGD_SPEC = OptimizerSpec(
    name="sgd",
    display_name="SGD",
    scalars=("lr", "momentum", "dampening", "weight_decay", "sign") + LOW_PRECISION_SCALARS,
    flags=("momentum_on", "l2", "nesterov") + LOW_PRECISION_FLAGS,
    counter=FIRST,
    state_keys=_state_keys,
    fold=_fold,
    init_state=_empty_state,
    fresh_when_missing=("momentum_buffer",),  # torch starts a buffer whenever there is none
    sparse=True,
    check_sparse=_check_sparse,
    bytes_per_element=_bytes_per_element,
)


class SGD(MultiTensorOptimizer):
    """SGD, a drop-in for ``torch.optim.SGD`` (same arguments, defaults, results and state).

    With momentum, the state is torch's ``momentum_buffer`` per parameter, set to the gradient on
    a parameter's first step. For float16 and bfloat16 parameters the buffer is float32 and the
    update is computed in float32, then rounded once into the parameter.

    Sparse gradients (``nn.Embedding(sparse=True)``) are stepped as torch steps them, beside the
    dense ones of the same group; the momentum buffer of such a parameter is kept dense (the same
    values as torch's sparse buffer). Weight decay with a sparse gradient is an error, as in torch.
""" + BACKEND_NOTE

    spec = SGD_SPEC

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False,
                 foreach=None, differentiable=False, fused=None, backend=None, max_grad_norm=None, master_weights=None,
                 state_dtype=None, seed=None):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
                        **low_precision_defaults(master_weights, state_dtype, seed))
        super().__init__(params, defaults, backend, max_grad_norm)
        check_fused(fused, foreach, differentiable)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)
