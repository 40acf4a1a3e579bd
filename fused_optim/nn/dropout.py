"""Dropout variants torch does not have. For plain and alpha dropout use torch.nn.Dropout and
torch.nn.AlphaDropout, and for spectral normalization
torch.nn.utils.parametrizations.spectral_norm: they work with fused_optim's layers as they are."""

import math

import torch
import torch.nn.functional as F


def _check_p(p, high_inclusive=False):
    ok = isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p and (p <= 1 if high_inclusive else p < 1)
    if not ok:
        bound = "[0, 1]" if high_inclusive else "[0, 1)"
        raise ValueError(f"dropout probability has to be in {bound}, but got {p!r}")
    return float(p)


class GaussianDropout(torch.nn.Module):
    """Multiplicative Gaussian noise (Srivastava et al., 2014): in training ``x * e`` with ``e`` drawn
    from N(1, p / (1 - p)) for every element, the mean and variance of Bernoulli dropout's rescaled
    mask; the identity in eval."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = _check_p(p)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        noise = torch.empty_like(x).normal_(1.0, math.sqrt(self.p / (1 - self.p)))
        return x * noise

    def extra_repr(self):
        return f"p={self.p}"


class DropConnect(torch.nn.Module):
    """Drops weights instead of activations (Wan et al., 2013): in training, each forward of the
    wrapped ``module`` (a Linear or Conv, any module whose forward reads ``self.weight``) sees its
    weight with every element zeroed with probability ``p`` and the rest scaled by 1 / (1 - p); in
    eval the weight as it is. One mask per forward; the bias is kept."""

    def __init__(self, module, p=0.5):
        super().__init__()
        if not isinstance(getattr(module, "weight", None), torch.nn.Parameter):
            raise TypeError(f"DropConnect needs a module with a `weight` parameter, got {type(module).__name__}")
        self.module = module
        self.p = _check_p(p)

    def forward(self, *args, **kwargs):
        if not self.training or self.p == 0:
            return self.module(*args, **kwargs)
        weight = self.module.weight
        mask = torch.empty_like(weight).bernoulli_(1 - self.p)
        dropped = weight * mask / (1 - self.p)
        return torch.func.functional_call(self.module, {"weight": dropped}, args, kwargs)

    def extra_repr(self):
        return f"p={self.p}"


class ScheduledDropout(torch.nn.Module):
    """Dropout whose probability moves from ``p_start`` to ``p_end`` over ``total_steps`` calls of
    :meth:`step`, linearly or along half a cosine, and stays at ``p_end`` afterwards. The current
    probability is the attribute ``p``; the step count is saved in the module's ``state_dict``."""

    SCHEDULES = ("linear", "cosine")

    def __init__(self, p_start, p_end, total_steps, schedule="linear"):
        super().__init__()
        self.p_start, self.p_end = _check_p(p_start, True), _check_p(p_end, True)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if schedule not in self.SCHEDULES:
            raise ValueError(f"schedule must be one of {self.SCHEDULES}, got {schedule!r}")
        self.total_steps, self.schedule = total_steps, schedule
        self.steps_taken = 0
        self.p = self.p_start

    def _probability(self):
        t = min(self.steps_taken, self.total_steps) / self.total_steps
        if self.schedule == "cosine":
            t = (1 - math.cos(math.pi * t)) / 2
        return self.p_end if t == 1 else self.p_start + (self.p_end - self.p_start) * t

    def step(self):
        """Advance the schedule by one step; returns the new probability."""
        self.steps_taken += 1
        self.p = self._probability()
        return self.p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def get_extra_state(self):
        return {"steps_taken": self.steps_taken}

    def set_extra_state(self, state):
        self.steps_taken = int(state["steps_taken"])
        self.p = self._probability()

    def extra_repr(self):
        return f"p={self.p:.4g}, p_start={self.p_start}, p_end={self.p_end}, total_steps={self.total_steps}, " \
               f"schedule={self.schedule}"
