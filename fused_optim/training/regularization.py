"""L1 and L2 weight penalties added to a loss, each computed with one fused multi-tensor reduction."""

import math

import torch

from .. import _backend
from ..ops import clip as ops
from ..reference.clip import result_dtype
from ._select import check_patterns, matches, owners


class _Penalty(torch.autograd.Function):
    """l1 * sum |w| + l2 * sum w^2 over all ``params``: forward by fused_optim's total norms (one
    pass over every tensor per term), backward l1 * sign(w) + 2 * l2 * w by torch's foreach ops."""

    @staticmethod
    def forward(ctx, l1, l2, backend, *params):
        params = list(params)
        ctx.l1, ctx.l2 = l1, l2
        ctx.save_for_backward(*params)
        total = torch.zeros((), dtype=result_dtype(params), device=params[0].device)
        if l1:
            total = total + l1 * ops.total_norm(params, 1.0, False, backend)
        if l2:
            total = total + l2 * ops.total_norm(params, 2.0, False, backend).square()
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        params = list(ctx.saved_tensors)
        grads = [torch.zeros_like(p) for p in params]
        if ctx.l2:
            torch._foreach_add_(grads, params, alpha=2 * ctx.l2)
        if ctx.l1:
            torch._foreach_add_(grads, torch._foreach_sign(params), alpha=ctx.l1)
        torch._foreach_mul_(grads, grad)
        return (None, None, None, *grads)


class RegularizedLoss(torch.nn.Module):
    """``criterion(*args, **kwargs) + l1 * sum |w| + l2 * sum w^2`` over the trainable parameters of
    ``model`` that no pattern of ``exclude`` names. A pattern excludes a parameter when it is a
    substring of the parameter's qualified name or of its module's class name (lowercased), so the
    default ("bias", "norm") leaves out biases and the weights of every BatchNorm, LayerNorm and
    GroupNorm. Note the L2 term has no factor 1/2: its gradient is ``2 * l2 * w``.
    """

    def __init__(self, criterion, model, l1=0.0, l2=0.0, exclude=("bias", "norm"), backend=None):
        super().__init__()
        for name, value in (("l1", l1), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
        if backend is not None:
            _backend.validate_name(backend)
        self.criterion = criterion
        self.l1, self.l2 = float(l1), float(l2)
        self.exclude = check_patterns(exclude, "exclude")
        self.backend = backend
        selected = [(n, p) for n, p, m in owners(model) if p.requires_grad and not matches(n, m, self.exclude)]
        self.names = [n for n, _ in selected]
        self._params = [p for _, p in selected]  # a plain list: not parameters of this module

    def penalty(self):
        """The penalty alone, a 0-dim tensor that backpropagates into the parameters."""
        if not self._params or not (self.l1 or self.l2):
            device = self._params[0].device if self._params else None
            return torch.zeros((), device=device)
        return _Penalty.apply(self.l1, self.l2, self.backend, *self._params)

    def forward(self, *args, **kwargs):
        return self.criterion(*args, **kwargs) + self.penalty()
