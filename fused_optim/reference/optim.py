"""The optimizer updates of one tensor, written for clarity: the definition the C++ and Triton
kernels are tested against.

Each function is named after its optimizer's spec (``fused_optim/optim/<name>.py``) and takes the
kernel scalars and flags that the spec folds from a param group, by name, plus the tensor's step
count (after this step's increment) or first-step flag, and its rounding id (``tensor``). The math
follows torch.optim's single-tensor implementations operation by operation. Float16 and bfloat16
parameters are updated in float32 and rounded once when the result is stored; state is read into
the compute dtype and the update uses the values before they are stored (rounded, when the state
is bfloat16); ``_LowPrecision`` defines the master-weight options and stochastic rounding; complex parameters
are updated on their real view. Under autograd (``differentiable=True``) the same functions build
the graph: every write is an in-place ``copy_``.
"""

import torch

from .._layout import (GOLDEN, MASK32, MIX_1, MIX_2, compute_dtype, is_dense, real as _real,  # noqa: F401
                       rounding_slot, rounding_word_key, state_dtype)

# ----- the low-precision options: how the parameter is read and stored, how state is stored -----


def _mul32(x, c):
    """(x * c) mod 2**32 for int64 tensors holding 32-bit values, without int64 overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, MIX_1)
    x = x ^ (x >> 15)
    x = _mul32(x, MIX_2)
    return x ^ (x >> 16)


def _walk_index(param, grad, state):
    """Each element's index in the order the kernels walk a tensor: memory order when the
    parameter is dense and its gradient and state share its strides, row-major otherwise."""
    tensors = [_real(param), _real(grad)] + [_real(s) for s in state]
    p = tensors[0]
    index = torch.arange(p.numel(), dtype=torch.int64, device=p.device)
    if all(t.is_contiguous() for t in tensors) or not (
            is_dense(p) and all(t.stride() == p.stride() for t in tensors[1:])):
        return index.view(p.shape)
    return index.as_strided(p.shape, p.stride())


def _to_int32(x):
    """int64 tensor of 32-bit patterns -> the int32 tensor with those bits."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def stochastic_round(x, dtype, bits):
    """``x`` (float32) rounded to ``dtype`` (bfloat16 or float16) up or down with probability
    proportional to the distance, from 32-bit random ``bits`` (int64 tensor), as the kernels do."""
    x = x.to(torch.float32)
    b = x.view(torch.int32).to(torch.int64) & MASK32
    if dtype == torch.bfloat16:
        out = (b + (bits & 0xFFFF)) >> 16
        out = torch.where(x != x, torch.full_like(out, 0x7FC0), out)
        return torch.where(out >= 2**15, out - 2**16, out).to(torch.int16).view(torch.bfloat16)
    normal = _to_int32((b + (bits & 0x1FFF)) & (MASK32 & ~0x1FFF)).view(torch.float32)
    scaled = x.abs() * 16777216.0
    whole = torch.floor(scaled)
    u = (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)
    tiny = (whole + (u < scaled - whole).to(torch.float32)) * (1.0 / 16777216.0)
    tiny = torch.where(x < 0, -tiny, tiny)
    y = torch.where(x != x, x, torch.where(x.abs() >= 6.103515625e-05, normal, tiny))
    return y.to(torch.float16)


def random_bits(index, step_key, tensor, param_dtype, stream):
    """The random bits (int64 tensor) of elements ``index`` of one tensor and stream at one step,
    for parameters of ``param_dtype`` (fused_optim._layout.rounding_bits, vectorized)."""
    word, shift = rounding_slot(param_dtype, stream)
    high, inverse = torch.unique(index >> 32, return_inverse=True)
    keys = torch.tensor([rounding_word_key(step_key, tensor, word, h) for h in high.tolist()],
                        dtype=torch.int64, device=index.device)
    return _mix32((index & MASK32) ^ keys[inverse]) >> shift


class _LowPrecision:
    """A tensor's master-weight kind, its state's storage and its stochastic-rounding keys, from
    the folded flags (``rounding_key``, ``master``, ``state_bf16``) and its rounding id."""

    def __init__(self, param, grad, state, n_own, tensor, rounding_key=0.0, master=0, state_bf16=0):
        self.param, self.state, self.n_own, self.master = param, state, n_own, int(master)
        self.step_key, self.tensor = int(rounding_key), int(tensor)
        self._index = _walk_index(param, grad, state) if self.master == 3 else None

    def bits(self, stream):
        return random_bits(self._index, self.step_key, self.tensor, _real(self.param).dtype, stream)

    def load_param(self, compute):
        """The parameter as the update sees it: the float32 master copy, value plus Kahan
        compensation, or the parameter itself."""
        p = _real(self.param).to(compute)
        if self.master == 1:
            return self.state[self.n_own].to(compute).clone()
        if self.master == 2:
            return p + self.state[self.n_own].to(compute)
        return p

    def store_param(self, value):
        param = _real(self.param)
        if self.master == 1:
            self.state[self.n_own].copy_(value)
            param.copy_(value)
        elif self.master == 2:
            rounded = value.to(param.dtype)
            param.copy_(rounded)
            self.state[self.n_own].copy_(value - rounded.to(value.dtype))
        elif self.master == 3:
            param.copy_(stochastic_round(value, param.dtype, self.bits(0)))
        else:
            param.copy_(value)

    def load(self, k, compute):
        return _real(self.state[k]).to(compute)

    def store(self, k, value):
        target = _real(self.state[k])
        if self.master == 3 and target.dtype == torch.bfloat16:
            target.copy_(stochastic_round(value, torch.bfloat16, self.bits(1 + k)))
        else:
            target.copy_(value)


def _lerp(start, end, weight):
    # torch.lerp's two formulas, chosen by the size of the weight, for bit-level agreement; torch
    # takes the weight in the compute dtype first, so 1 - weight is computed in that dtype too.
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    one_minus = 1 - torch.tensor(weight, dtype=start.dtype)
    return end - (end - start) * one_minus.item()


def _scaled(grad, compute, grad_factor, sign=1.0):
    """The gradient in the compute dtype, multiplied first by ``grad_factor`` (unscale and clip),
    then by ``sign`` (-1 under maximize)."""
    g = _real(grad).to(compute)
    if grad_factor is not None:
        g = g * (grad_factor.to(device=g.device, dtype=compute) if isinstance(grad_factor, torch.Tensor) else grad_factor)
    return g if sign == 1.0 else sign * g


def adam(param, grad, state, step, first, grad_factor, *, lr, beta1, beta2, eps, l2, decay, sign, amsgrad,
         l2_on, lerp_from_start, tensor=0, **low):
    """Adam/AdamW: ``l2`` is Adam's weight decay (added to the gradient), ``decay`` AdamW's
    ``1 - lr * weight_decay`` (the parameter is multiplied by it)."""
    compute = compute_dtype(param.dtype)
    lp = _LowPrecision(param, grad, state, 3 if amsgrad else 2, tensor, **low)
    p = lp.load_param(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2_on:
        g = g + l2 * p
    if decay != 1.0:
        p = p * decay
    m = _lerp(lp.load(0, compute), g, 1 - beta1)
    v = lp.load(1, compute) * beta2 + ((1 - beta2) * g) * g
    v_used = v
    if amsgrad:
        # on a clone: under autograd, the next step's in-place writes must not touch what this saved
        v_used = torch.maximum(lp.load(2, compute).clone(), v)
        lp.store(2, v_used)
    lp.store(0, m)
    lp.store(1, v)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = v_used.sqrt() / bias_correction2_sqrt + eps
    lp.store_param(p + (-step_size * m) / denom)


def sgd(param, grad, state, step, first, grad_factor, *, lr, momentum, dampening, weight_decay, sign, momentum_on,
        l2, nesterov, tensor=0, **low):
    """SGD; ``first``: the momentum buffer holds nothing yet and is set to the gradient."""
    compute = compute_dtype(param.dtype)
    lp = _LowPrecision(param, grad, state, 1 if momentum_on else 0, tensor, **low)
    p = lp.load_param(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2:
        g = g + weight_decay * p
    if momentum_on:
        if first:
            buf = g.detach()  # torch starts the buffer from a detached clone of the gradient
        else:
            buf = lp.load(0, compute) * momentum + (1 - dampening) * g
        lp.store(0, buf)
        g = g + momentum * buf if nesterov else buf
    lp.store_param(p + (-lr) * g)


def rmsprop(param, grad, state, step, first, grad_factor, *, lr, alpha, eps, weight_decay, momentum, sign, centered,
            momentum_on, l2, lerp_from_start, tensor=0, **low):
    """RMSprop; state: square_avg, then momentum_buffer with momentum, then grad_avg when centered."""
    compute = compute_dtype(param.dtype)
    lp = _LowPrecision(param, grad, state, 1 + int(bool(momentum_on)) + int(bool(centered)), tensor, **low)
    p = lp.load_param(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2:
        g = g + weight_decay * p
    square_avg = lp.load(0, compute) * alpha + ((1 - alpha) * g) * g
    lp.store(0, square_avg)
    if centered:
        k = 2 if momentum_on else 1
        grad_avg = _lerp(lp.load(k, compute), g, 1 - alpha)
        lp.store(k, grad_avg)
        avg = (square_avg + (-grad_avg) * grad_avg).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = avg + eps
    if momentum_on:
        buf = lp.load(1, compute) * momentum + g / avg
        lp.store(1, buf)
        lp.store_param(p + (-lr) * buf)
    else:
        lp.store_param(p + ((-lr) * g) / avg)


def adagrad(param, grad, state, step, first, grad_factor, *, lr, lr_decay, eps, weight_decay, sign, l2, tensor=0,
            **low):
    """Adagrad (dense gradient); state: the running sum of squared gradients."""
    compute = compute_dtype(param.dtype)
    lp = _LowPrecision(param, grad, state, 1, tensor, **low)
    p = lp.load_param(compute)
    g = _scaled(grad, compute, grad_factor, sign)
    if l2:
        g = g + weight_decay * p
    total = lp.load(0, compute) + g * g
    lp.store(0, total)
    clr = lr / (1 + (step - 1) * lr_decay)
    lp.store_param(p + ((-clr) * g) / (total.sqrt() + eps))


def _sparse_scaled(grad, grad_factor, sign, coalesce):
    g = grad.coalesce() if coalesce else grad
    if grad_factor is not None:
        g = g * (grad_factor.to(g.device, torch.float64).item() if isinstance(grad_factor, torch.Tensor) else grad_factor)
    return g if sign == 1.0 else -g


def _check_sparse_low_precision(name, master=0, state_bf16=0, **_):
    if master or state_bf16:
        raise RuntimeError(f"{name}: master_weights and state_dtype=torch.bfloat16 take dense gradients only")


def sgd_sparse(param, grad, state, step, first, grad_factor, *, lr, momentum, dampening, weight_decay, sign,
               momentum_on, l2, nesterov, tensor=0, **low):
    """SGD with a sparse gradient, as torch.optim.SGD computes it (the momentum buffer is kept
    dense: the same values, as a tensor the kernels can bind)."""
    if l2:
        raise RuntimeError("SGD: weight_decay is not supported with sparse gradients (as in torch.optim.SGD)")
    _check_sparse_low_precision("SGD", **low)
    g = _sparse_scaled(grad, grad_factor, sign, coalesce=False)
    if momentum_on:
        buf = state[0]
        if first:
            buf.copy_(g.to_dense())
        else:
            buf.mul_(momentum).add_(g, alpha=1 - dampening)
        g = (buf * momentum).add_(g) if nesterov else buf
    param.add_(g, alpha=-lr)


def adagrad_sparse(param, grad, state, step, first, grad_factor, *, lr, lr_decay, eps, weight_decay, sign, l2, tensor=0,
                   **low):
    """Adagrad with a sparse gradient, as torch.optim.Adagrad computes it: only the rows present
    in the gradient change."""
    if l2:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")
    _check_sparse_low_precision("Adagrad", **low)
    g = _sparse_scaled(grad, grad_factor, sign, coalesce=True)
    clr = lr / (1 + (step - 1) * lr_decay)
    indices, values = g._indices(), g._values()
    total = state[0]
    total.add_(torch.sparse_coo_tensor(indices, values.pow(2), g.shape))
    std_values = total.sparse_mask(g)._values().sqrt_().add_(eps)
    param.add_(torch.sparse_coo_tensor(indices, values / std_values, g.shape), alpha=-clr)
