"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD, fused per group."""

import torch

from ._base import MultiTensorOptimizer, scalar
from ..reference.optim import state_dtype


class SGD(MultiTensorOptimizer):
    """SGD, a drop-in for ``torch.optim.SGD`` (same arguments, defaults, results and state).

    With momentum, the state is torch's ``momentum_buffer`` per parameter, set to the gradient on
    a parameter's first step. For float16 and bfloat16 parameters the buffer is float32 and the
    update is computed in float32, then rounded once into the parameter.

    ``backend``: None (``$FUSED_OPTIM_BACKEND`` if set, else ``"auto"``), ``"auto"``,
    ``"reference"``, ``"cpp"`` or ``"triton"``. ``foreach`` and ``fused`` are accepted, stored and
    unused. Sparse gradients are not supported (a RuntimeError).

    ``max_grad_norm`` clips inside the step, as ``clip_grad_norm_`` then ``step()`` would, leaving
    the gradients unclipped; ``last_grad_norm`` holds the norm. GradScaler's unscale and inf/NaN
    skip happen inside the update (see fused_optim.optim._base).
    """

    _display_name = "SGD"
    _has_steps = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False,
                 foreach=None, differentiable=False, fused=None, backend=None, max_grad_norm=None):
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
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend, max_grad_norm)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("differentiable", False)
            group.setdefault("fused", False)

    def _state_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _missing_state_is_fresh(self, key):
        return key == "momentum_buffer"  # torch starts a buffer whenever there is none

    def _init_state(self, group, param, state):
        for key in self._state_keys(group):
            state[key] = torch.empty_like(param, dtype=state_dtype(param.dtype), memory_format=torch.preserve_format)
        return True

    def _update(self, group, plan, extras):
        plan.sgd(
            scalar(group["lr"]), scalar(group["momentum"]), scalar(group["dampening"]), scalar(group["weight_decay"]),
            bool(group["nesterov"]), bool(group["maximize"]), **extras,
        )
