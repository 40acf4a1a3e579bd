"""Multi-tensor optimizer plans: the tensors of one (param group, device, real dtype), bound once and
stepped many times, on any backend.

Every plan has the interface of the C++ ``MultiTensorPlan``: ``scan()`` checks all gradients and
changes nothing, ``bind()`` attaches a parameter's state tensors, ``adam()`` / ``sgd()`` step the
parameters scanned. The C++ plan does all per-tensor work in C++; ``ListPlan`` does it in Python and
hands lists of tensors to the reference or the Triton implementation.
"""

import torch

from .. import _cpp
from ..reference import clip as clip_reference
from ..reference import optim as reference


def real_dtype(t):
    return t.real.dtype if t.is_complex() else t.dtype


class ListPlan:
    """A plan for the reference and Triton backends.

    Per-tensor counters live where the kernels read them: step counts (``steps``, supplied by the
    optimizer) and SGD's first-step flags (``fresh``) are on the device for Triton, so a step that
    AMP skips on the device needs no host sync; on the CPU for the reference.
    """

    def __init__(self, backend, params, n_state, steps, optimizer):
        self.backend = backend
        self.params = params
        self.n_state = n_state
        self.steps = steps
        self.optimizer = optimizer
        self.dtype = real_dtype(params[0]) if params else torch.float32
        self.device = params[0].device if params else torch.device("cpu")
        counter_device = self.device if backend == "triton" else torch.device("cpu")
        self.is_complex = [p.is_complex() for p in params]
        self.state = [None] * len(params)
        self.fresh = torch.zeros(len(params), dtype=torch.float32, device=counter_device)
        self.active = None
        self.grads = None
        self._index_key = None
        self._index = None

    def __len__(self):
        return len(self.params)

    def scan(self):
        self.active = None
        active, grads, need_state = [], [], []
        name = self.optimizer
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse or g.layout != torch.strided:
                raise RuntimeError(f"{name} does not support sparse gradients (parameter {i} of its group has one)")
            if real_dtype(p) != self.dtype or p.device != self.device or p.is_complex() != self.is_complex[i]:
                return True, []
            if g.dtype != p.dtype:
                raise RuntimeError(f"{name}: the gradient of parameter {i} has dtype {g.dtype} but the parameter has dtype {p.dtype}")
            if g.device != p.device:
                raise RuntimeError(f"{name}: the gradient of parameter {i} is on {g.device} but the parameter is on {p.device}")
            if g.shape != p.shape:
                raise RuntimeError(f"{name}: the gradient of parameter {i} has shape {list(g.shape)} but the parameter has shape {list(p.shape)}")
            if self.state[i] is None:
                need_state.append(i)
            else:
                for s in self.state[i]:
                    if s.shape != p.shape:
                        raise RuntimeError(
                            f"{name}: parameter {i} has {p.numel()} elements but its state was created for "
                            f"{s.numel()}; the parameter was replaced after its first step"
                        )
            active.append(i)
            grads.append(g)
        self.active, self.grads = active, grads
        return False, need_state

    def bind(self, index, state, fresh):
        p = self.params[index]
        want = reference.state_dtype(p.dtype)
        for s in state:
            if s is None or s.device != p.device or s.dtype != want or s.shape != p.shape:
                raise RuntimeError(
                    f"{self.optimizer}: state of parameter {index} must be a {want} tensor of shape {list(p.shape)} "
                    f"on {p.device}, got {None if s is None else f'{s.dtype} of shape {list(s.shape)} on {s.device}'}"
                )
        self.state[index] = list(state)
        self.fresh[index] = 1.0 if fresh else 0.0

    def _take_scanned(self):
        if self.active is None:
            raise RuntimeError("plan: scan() must precede a step")
        active, grads = self.active, self.grads
        self.active = self.grads = None
        return active, grads

    def norm_partials(self, norm_type):
        """Power sums of the scanned gradients as a 1-D float64 tensor (one per chunk for Triton)."""
        if not self.grads:
            return torch.zeros(1, dtype=torch.float64, device=self.device)
        if self.backend == "triton":
            from .clip import triton_groups, triton_power_sum_partials

            return triton_power_sum_partials(triton_groups(self.grads), norm_type, self.device)
        return clip_reference.power_sum(self.grads, norm_type).reshape(1)

    def _skipped(self, found_inf):
        # The reference reads found_inf on the host (a sync on CUDA); Triton decides on the device.
        return self.backend == "reference" and found_inf is not None and bool(found_inf.item() != 0)

    def _index_of(self, active):
        if tuple(active) != self._index_key:
            self._index_key = tuple(active)
            self._index = torch.tensor(active, dtype=torch.int64).to(self.fresh.device)
        return self._index

    def _taken(self, found_inf, device):
        """1.0 where the step was taken, as a 0-dim float32 tensor on ``device``."""
        if found_inf is None:
            return torch.ones((), dtype=torch.float32, device=device)
        return (found_inf == 0).to(torch.float32)

    def adam(self, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_factor=None,
             found_inf=None):
        active, grads = self._take_scanned()
        if not active or self._skipped(found_inf):
            return
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                     maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        if self.backend == "reference":
            for i, g in zip(active, grads):
                self.steps[i] += 1
                m, v, *rest = self.state[i]
                reference.adam(self.params[i], g, m, v, rest[0] if amsgrad else None, self.steps[i].item(),
                               grad_factor=grad_factor, **hyper)
            return
        from ..triton import optim as triton_optim

        triton_optim.multi_tensor_adam(
            [self.params[i] for i in active], grads, [self.state[i] for i in active], [self.steps[i] for i in active],
            grad_factor=grad_factor, found_inf=found_inf, **hyper,
        )
        index = self._index_of(active)
        self.steps.index_add_(0, index, self._taken(found_inf, self.steps.device).expand(len(active)))

    def sgd(self, lr, momentum, dampening, weight_decay, nesterov, maximize, grad_factor=None, found_inf=None):
        active, grads = self._take_scanned()
        if not active or self._skipped(found_inf):
            return
        hyper = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                     maximize=maximize)
        if self.backend == "reference":
            for i, g in zip(active, grads):
                reference.sgd(self.params[i], g, self.state[i][0] if momentum != 0 else None,
                              first=bool(self.fresh[i]), grad_factor=grad_factor, **hyper)
                self.fresh[i] = 0.0
            return
        from ..triton import optim as triton_optim

        triton_optim.multi_tensor_sgd(
            [self.params[i] for i in active], grads, [self.state[i] for i in active], [self.fresh[i] for i in active],
            grad_factor=grad_factor, found_inf=found_inf, **hyper,
        )
        # A step skipped on the device leaves first-step buffers unwritten: they stay fresh.
        index = self._index_of(active)
        kept = 1.0 - self._taken(found_inf, self.fresh.device)
        self.fresh.index_copy_(0, index, self.fresh.index_select(0, index) * kept)


def make_plan(backend, params, n_state, steps, optimizer):
    """A plan for ``params`` (one device, one real dtype) on a concrete backend."""
    if backend == "cpp":
        return _cpp.get().MultiTensorPlan(params, n_state, steps, optimizer)
    return ListPlan(backend, params, n_state, steps, optimizer)
