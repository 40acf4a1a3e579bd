"""Adagrad: torch.optim.Adagrad, every dense parameter of a group in one fused call, sparse
gradients (embedding tables) as torch steps them."""

import torch

from ._base import MultiTensorOptimizer, low_precision_defaults
from ._checks import BACKEND_NOTE, LOW_PRECISION_NOTE, check_fused, check_lr, check_non_negative
from ._spec import (LOW_PRECISION_FLAGS, LOW_PRECISION_SCALARS, STEP, OptimizerSpec, group_state_dtype,
                    low_precision_fold, master_bytes, scalar)


def _state_keys(group):
    return ("sum",)


def _fold(group):
    weight_decay = scalar(group["weight_decay"])
    scalars = (scalar(group["lr"]), scalar(group["lr_decay"]), scalar(group["eps"]), weight_decay,
               -1.0 if group["maximize"] else 1.0)
    return low_precision_fold(group, scalars, (int(weight_decay != 0),))


def _initial_sum(group, param, keys):
    value = group["initial_accumulator_value"]
    return {"sum": torch.full_like(param, complex(value, value) if param.is_complex() else value,
                                   dtype=group_state_dtype(group, param), memory_format=torch.preserve_format)}


def _check_sparse(group):
    if group["weight_decay"] != 0:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")


def _bytes_per_element(group, element_size, state_size):
    return master_bytes(group, element_size) + 3 * element_size + 2 * state_size


ADAGRAD_SPEC = OptimizerSpec(
    name="adagrad",
    display_name="Adagrad",
    scalars=("lr", "lr_decay", "eps", "weight_decay", "sign") + LOW_PRECISION_SCALARS,
    flags=("l2",) + LOW_PRECISION_FLAGS,
    counter=STEP,
    state_keys=_state_keys,
    fold=_fold,
    init_state=_initial_sum,
    sparse=True,
    check_sparse=_check_sparse,
    bytes_per_element=_bytes_per_element,
)


class Adagrad(MultiTensorOptimizer):
    __doc__ = """Adagrad, a drop-in for ``torch.optim.Adagrad`` (same arguments, defaults, results and state).

    As torch does, the state (``step``, ``sum`` filled with ``initial_accumulator_value``) is
    created in the constructor. Sparse gradients are stepped as torch steps them (only the rows
    present change), beside the dense parameters of the same group, which take the fused kernel;
    weight decay with a sparse gradient is an error, as in torch.
""" + LOW_PRECISION_NOTE + BACKEND_NOTE

    spec = ADAGRAD_SPEC

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None, backend=None,
                 max_grad_norm=None, master_weights=None, state_dtype=None, seed=None):
        check_lr(lr)
        check_non_negative(lr_decay, "lr_decay value")
        check_non_negative(weight_decay, "weight_decay value")
        check_non_negative(initial_accumulator_value, "initial_accumulator_value value")
        check_non_negative(eps, "epsilon value")
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused,
                        **low_precision_defaults(master_weights, state_dtype, seed))
        super().__init__(params, defaults, backend, max_grad_norm)
        check_fused(fused, foreach, differentiable)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0)
                state.update(_initial_sum(group, p, ("sum",)))

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
