"""The optimizer updates of one tensor, written for clarity: the definition the C++ and Triton
kernels are tested against.

Each function is named after its optimizer's spec (``fused_optim/optim/<name>.py``) and takes the
kernel scalars and flags that the spec folds from a param group, by name, plus the tensor's step
count (after this step's increment) or first-step flag. The math follows torch.optim's
single-tensor implementations operation by operation. Float16 and bfloat16 parameters are updated
in float32 (their state is float32) and rounded once when the result is stored; complex parameters
are updated on their real view. Under autograd (``differentiable=True``) the same functions build
the graph: every write is an in-place ``copy_``.
"""

import torch

from .._layout import compute_dtype, real as _real, state_dtype  # noqa: F401  (the dtype policy lives in _layout)


def _lerp(start, end, weight):
    # torch.lerp's two formulas, chosen by the size of the weight, for bit-level agreement.
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def _scaled(grad, compute, grad_factor, sign=1.0):
    """The gradient in the compute dtype, multiplied first by ``grad_factor`` (unscale and clip),
    then by ``sign`` (-1 under maximize)."""
    g = _real(grad).to(compute)
    if grad_factor is not None:
        g = g * (grad_factor.to(device=g.device, dtype=compute) if isinstance(grad_factor, torch.Tensor) else grad_factor)
    return g if sign == 1.0 else sign * g


def adam(param, grad, state, step, first, grad_factor, *, lr, beta1, beta2, eps, l2, decay, sign, amsgrad,
         l2_on, lerp_from_start):
    """Adam/AdamW: ``l2`` is Adam's weight decay (added to the gradient), ``decay`` AdamW's
    ``1 - lr * weight_decay`` (the parameter is multiplied by it)."""
    compute = compute_dtype(param.dtype)
    p = _real(param).to(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    m, v = _real(state[0]), _real(state[1])
    if l2_on:
        g = g + l2 * p
    if decay != 1.0:
        p = p * decay
    m.copy_(_lerp(m, g, 1 - beta1))
    v.copy_(v * beta2 + ((1 - beta2) * g) * g)
    if amsgrad:
        v_max = _real(state[2])
        # on clones: under autograd, the next step's in-place writes must not touch what this saved
        v_max.copy_(torch.maximum(v_max.clone(), v.clone()))
        v = v_max
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = v.sqrt() / bias_correction2_sqrt + eps
    _real(param).copy_(p + (-step_size * m) / denom)


def sgd(param, grad, state, step, first, grad_factor, *, lr, momentum, dampening, weight_decay, sign, momentum_on,
        l2, nesterov):
    """SGD; ``first``: the momentum buffer holds nothing yet and is set to the gradient."""
    compute = compute_dtype(param.dtype)
    p = _real(param).to(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2:
        g = g + weight_decay * p
    if momentum_on:
        buf = _real(state[0])
        if first:
            buf.copy_(g.detach())  # torch starts the buffer from a detached clone of the gradient
        else:
            buf.copy_(buf * momentum + (1 - dampening) * g)
        g = g + momentum * buf if nesterov else buf
    _real(param).copy_(p + (-lr) * g)


def rmsprop(param, grad, state, step, first, grad_factor, *, lr, alpha, eps, weight_decay, momentum, sign, centered,
            momentum_on, l2, lerp_from_start):
    """RMSprop; state: square_avg, then momentum_buffer with momentum, then grad_avg when centered."""
    compute = compute_dtype(param.dtype)
    p = _real(param).to(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2:
        g = g + weight_decay * p
    square_avg = _real(state[0])
    square_avg.copy_(square_avg * alpha + ((1 - alpha) * g) * g)
    if centered:
        grad_avg = _real(state[2 if momentum_on else 1])
        grad_avg.copy_(_lerp(grad_avg, g, 1 - alpha))
        avg = (square_avg + (-grad_avg) * grad_avg).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = avg + eps
    if momentum_on:
        buf = _real(state[1])
        buf.copy_(buf * momentum + g / avg)
        _real(param).copy_(p + (-lr) * buf)
    else:
        _real(param).copy_(p + ((-lr) * g) / avg)


def adagrad(param, grad, state, step, first, grad_factor, *, lr, lr_decay, eps, weight_decay, sign, l2):
    """Adagrad (dense gradient); state: the running sum of squared gradients."""
    compute = compute_dtype(param.dtype)
    p = _real(param).to(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2:
        g = g + weight_decay * p
    total = _real(state[0])
    total.copy_(total + g * g)
    clr = lr / (1 + (step - 1) * lr_decay)
    _real(param).copy_(p + ((-clr) * g) / (total.sqrt() + eps))


def _sparse_scaled(grad, grad_factor, sign, coalesce):
    g = grad.coalesce() if coalesce else grad
    if grad_factor is not None:
        g = g * (grad_factor.to(g.device, torch.float64).item() if isinstance(grad_factor, torch.Tensor) else grad_factor)
    return g if sign == 1.0 else -g


def sgd_sparse(param, grad, state, step, first, grad_factor, *, lr, momentum, dampening, weight_decay, sign,
               momentum_on, l2, nesterov):
    """SGD with a sparse gradient, as torch.optim.SGD computes it (the momentum buffer is kept
    dense: the same values, as a tensor the kernels can bind)."""
    if l2:
        raise RuntimeError("SGD: weight_decay is not supported with sparse gradients (as in torch.optim.SGD)")
    g = _sparse_scaled(grad, grad_factor, sign, coalesce=False)
    if momentum_on:
        buf = state[0]
        if first:
            buf.copy_(g.to_dense())
        else:
            buf.mul_(momentum).add_(g, alpha=1 - dampening)
        g = (buf * momentum).add_(g) if nesterov else buf
    param.add_(g, alpha=-lr)


def adagrad_sparse(param, grad, state, step, first, grad_factor, *, lr, lr_decay, eps, weight_decay, sign, l2):
    """Adagrad with a sparse gradient, as torch.optim.Adagrad computes it: only the rows present
    in the gradient change."""
    if l2:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")
    g = _sparse_scaled(grad, grad_factor, sign, coalesce=True)
    clr = lr / (1 + (step - 1) * lr_decay)
    indices, values = g._indices(), g._values()
    total = state[0]
    total.add_(torch.sparse_coo_tensor(indices, values.pow(2), g.shape))
    std_values = total.sparse_mask(g)._values().sqrt_().add_(eps)
    param.add_(torch.sparse_coo_tensor(indices, values / std_values, g.shape), alpha=-clr)
