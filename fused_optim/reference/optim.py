"""Adam/AdamW and SGD updates of one tensor, written for clarity.

The math follows torch.optim's single-tensor implementations operation by operation. Float16 and
bfloat16 parameters are updated in float32 (their state is float32) and rounded once when the
result is stored; complex parameters are updated on their real view.
"""

import torch


def compute_dtype(dtype):
    """The dtype the update math runs in for parameters of ``dtype``."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def state_dtype(dtype):
    """The dtype of optimizer state for parameters of ``dtype`` (float32 for 16-bit floats)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _lerp(start, end, weight):
    # torch.lerp's two formulas, chosen by the size of the weight, for bit-level agreement.
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def _scaled(grad, compute, grad_factor):
    """The gradient in the compute dtype, multiplied first by ``grad_factor`` (unscale and clip)."""
    g = _real(grad).to(compute)
    if grad_factor is None:
        return g
    return g * (grad_factor.to(device=g.device, dtype=compute) if isinstance(grad_factor, torch.Tensor) else grad_factor)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, *, lr, beta1, beta2, eps, weight_decay,
         amsgrad, maximize, decoupled_weight_decay, grad_factor=None):
    """Update ``param`` and its state in place. ``step`` is this update's number (1 on the first).
    ``grad_factor``: what the gradient is multiplied by first (unscaling and clipping), or None."""
    compute = compute_dtype(param.dtype)
    p = _real(param).to(compute)
    g = _scaled(grad, compute, grad_factor)
    m = _real(exp_avg)
    v = _real(exp_avg_sq)
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
    m.copy_(_lerp(m, g, 1 - beta1))
    v.copy_(v * beta2 + ((1 - beta2) * g) * g)
    if amsgrad:
        v_max = _real(max_exp_avg_sq)
        v_max.copy_(torch.maximum(v_max, v))
        v = v_max
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = v.sqrt() / bias_correction2_sqrt + eps
    p = p + (-step_size * m) / denom
    _real(param).copy_(p)


def sgd(param, grad, momentum_buffer, *, lr, momentum, dampening, weight_decay, nesterov, maximize, first,
        grad_factor=None):
    """Update ``param`` and its momentum buffer in place; ``first``: the buffer holds nothing yet."""
    compute = compute_dtype(param.dtype)
    p = _real(param).to(compute)
    g = _scaled(grad, compute, grad_factor)
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        buf = _real(momentum_buffer)
        if first:
            buf.copy_(g)
        else:
            buf.copy_(buf * momentum + (1 - dampening) * g)
        g = g + momentum * buf if nesterov else buf
    _real(param).copy_(p + (-lr) * g)
