"""Gradient accumulation: ``steps`` micro-batches make one optimizer step, as one batch that many
times larger would (for a mean-reduced loss over equal micro-batches)."""

import math

import torch

from .. import _backend
from ..nn.clip_grad import clip_grad_norm_


class GradientAccumulator:
    """Accumulate the gradients of ``steps`` micro-batches, then clip, step and zero them.

        acc = GradientAccumulator(model, optimizer, steps=4, max_grad_norm=1.0)
        for x, y in loader:
            acc.backward(loss_fn(model(x), y))
            acc.step()          # steps (and returns True) on every 4th micro-batch

    ``backward`` scales the loss by 1/steps (and by ``scaler`` when given, a torch.amp.GradScaler).
    ``step`` does nothing until ``steps`` micro-batches have been accumulated; then it clips the
    gradients' total 2-norm to ``max_grad_norm`` with fused_optim's ``clip_grad_norm_`` (after
    ``scaler.unscale_``), steps the optimizer (through the scaler), zeroes the gradients
    (``set_to_none``) and returns True.

    Under DistributedDataParallel the gradients are all-reduced only on the last micro-batch of each
    step: the accumulator keeps DDP's ``no_sync()`` entered from the backward of that last
    micro-batch (or from its construction) until the backward before the next last one, so that
    the forward and backward of every other micro-batch run without communication. Create it
    before the first forward. A micro-batch count that does not divide the data leaves its
    remainder to be completed by the next micro-batches.
    """

    def __init__(self, model, optimizer, steps, max_grad_norm=None, scaler=None, backend=None):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be None or a positive finite number, got {max_grad_norm!r}")
        if backend is not None:
            _backend.validate_name(backend)
        self.model, self.optimizer, self.steps = model, optimizer, steps
        self.max_grad_norm, self.scaler, self.backend = max_grad_norm, scaler, backend
        self.micro_batches = 0  # accumulated since the last optimizer step
        self._ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        self._no_sync = None
        self._set_sync_for_next()

    @property
    def sync_next(self):
        """Whether the next micro-batch is the last of a step (its backward all-reduces under DDP)."""
        return self.micro_batches % self.steps == self.steps - 1

    def _set_sync_for_next(self):
        if not self._ddp:
            return
        if self.sync_next and self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None
        elif not self.sync_next and self._no_sync is None:
            self._no_sync = self.model.no_sync()
            self._no_sync.__enter__()

    def backward(self, loss, **kwargs):
        """``(loss / steps).backward(**kwargs)``, through the scaler when there is one."""
        if self.micro_batches >= self.steps:
            raise RuntimeError(f"{self.micro_batches} micro-batches are accumulated already: call step() after "
                               "each backward()")
        scaled = loss / self.steps
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward(**kwargs)
        self.micro_batches += 1
        self._set_sync_for_next()

    def step(self):
        """Clip, step and zero once ``steps`` micro-batches are accumulated; whether it did."""
        if self.micro_batches < self.steps:
            return False
        if self.scaler is not None:
            if self.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                clip_grad_norm_(self.model.parameters(), self.max_grad_norm, backend=self.backend)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.max_grad_norm is not None:
                clip_grad_norm_(self.model.parameters(), self.max_grad_norm, backend=self.backend)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro_batches = 0
        return True
