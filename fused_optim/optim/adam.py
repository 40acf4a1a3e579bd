"""Adam and AdamW: torch.optim's algorithms, every parameter of a group updated in one fused call."""

import torch

from ._base import MultiTensorOptimizer, scalar
from ..reference.optim import state_dtype

_STATE_NOTE = """
    State matches torch.optim's keys and layout (``step``, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``), so a state_dict moves between torch.optim and fused_optim both
    ways. For float16 and bfloat16 parameters the moments are stored in float32 and the update is
    computed in float32, then rounded once into the parameter: no overflow of ``exp_avg_sq`` and
    no ``eps`` flushed to zero, as happens when the state itself is 16-bit. (Loading such state
    into torch.optim casts it to the parameter's dtype, as torch always does.)

    ``backend`` chooses the implementation: None (``$FUSED_OPTIM_BACKEND`` if set, else
    ``"auto"``), ``"auto"`` (Triton for CUDA tensors, C++ for CPU tensors, else the reference),
    ``"reference"``, ``"cpp"`` or ``"triton"``. ``foreach``, ``fused`` and ``capturable`` choose
    among torch's own implementations; they are accepted, stored in the param groups, and unused.

    ``max_grad_norm`` clips inside the step: the result equals
    ``clip_grad_norm_(params, max_grad_norm)`` followed by ``step()``, but the gradients are read
    once for the norm and once for the update and are left unclipped. The norm is kept, as a device
    tensor, in ``last_grad_norm``. Under ``torch.amp.GradScaler`` the unscale happens inside the
    update too, and a step with inf/NaN gradients is skipped on the device.
"""


def _check_adam_args(lr, betas, eps, weight_decay):
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    for index, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{index}] must be 1-element")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


class Adam(MultiTensorOptimizer):
    __doc__ = (
        """Adam, a drop-in for ``torch.optim.Adam`` (same arguments, defaults, results and state).

    With ``decoupled_weight_decay=True`` it is AdamW.
"""
        + _STATE_NOTE
    )

    _display_name = "Adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, backend=None, max_grad_norm=None):
        _check_adam_args(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay)
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

    def _state_keys(self, group):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _init_state(self, group, param, state):
        for key in self._state_keys(group):
            state[key] = torch.zeros_like(param, dtype=state_dtype(param.dtype), memory_format=torch.preserve_format)
        return False

    def _update(self, group, plan, extras):
        beta1, beta2 = group["betas"]
        plan.adam(
            scalar(group["lr"]), scalar(beta1), scalar(beta2), scalar(group["eps"]), scalar(group["weight_decay"]),
            bool(group["amsgrad"]), bool(group["maximize"]), bool(group["decoupled_weight_decay"]), **extras,
        )


class AdamW(Adam):
    __doc__ = (
        """AdamW, a drop-in for ``torch.optim.AdamW``: Adam with decoupled weight decay
    (``param *= 1 - lr * weight_decay`` before the Adam update; default weight_decay 1e-2).
"""
        + _STATE_NOTE
    )

    _display_name = "AdamW"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None, backend=None,
                 max_grad_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, backend=backend, max_grad_norm=max_grad_norm)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
