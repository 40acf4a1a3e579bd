"""Argument checks shared by the frontends, with torch.optim's messages and exception types."""

import torch


def check_lr(lr, foreach=None, capturable=False):
    if isinstance(lr, torch.Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_non_negative(value, what):
    """``what``: torch's wording, e.g. "epsilon value" gives "Invalid epsilon value: -1"."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_fused(fused, foreach, differentiable):
    """torch's checks of ``fused`` (its own implementation switch, otherwise unused here)."""
    if fused:
        if differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


BACKEND_NOTE = """
    ``backend`` chooses the implementation: None (``$FUSED_OPTIM_BACKEND`` if set, else
    ``"auto"``), ``"auto"`` (Triton for CUDA tensors, C++ for CPU tensors, else the reference),
    ``"reference"``, ``"cpp"`` or ``"triton"``. ``foreach``, ``fused`` and ``capturable`` choose
    among torch's own implementations; they are checked as torch checks them, stored in the param
    groups, and otherwise unused. ``differentiable=True`` runs the reference math under autograd.

    ``max_grad_norm`` clips inside the step: the result equals
    ``clip_grad_norm_(params, max_grad_norm)`` followed by ``step()``, but the gradients are read
    once for the norm and once for the update and are left unclipped. The norm is kept, as a device
    tensor, in ``last_grad_norm``. Under ``torch.amp.GradScaler`` the unscale happens inside the
    update too, and a step with inf/NaN gradients is skipped on the device.
"""

LOW_PRECISION_NOTE = """
    For float16 and bfloat16 parameters the state is stored in float32 and the update is computed
    in float32, then rounded once into the parameter: no overflow of squared-gradient state and no
    ``eps`` flushed to zero, as happens when the state itself is 16-bit. (Loading such state into
    torch.optim casts it to the parameter's dtype, as torch always does.)
"""
