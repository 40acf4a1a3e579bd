"""Multi-tensor optimizer plans: the tensors of one (param group, device, real dtype), bound once and
stepped many times, on any backend.

Every plan has the interface of the C++ ``MultiTensorPlan``: ``scan()`` checks all gradients and
changes nothing, ``bind()`` attaches a parameter's state tensors, ``adam()`` / ``sgd()`` step the
parameters scanned, ``norm_partials()`` (``grad_norm_power_sum()`` in C++) gives the power sums of
the scanned gradients for clipping.

- ``cpp``: the C++ plan does everything, with no per-tensor work in Python.
- ``triton``: ``TritonPlan`` launches the kernels; its bookkeeping (scan, checks, the launch rows of
  pointers) is the C++ plan's when the extension is available, else ``ListPlan``'s, in Python.
- ``reference``: ``ListPlan``, Python bookkeeping and the reference math.
"""

import torch

from .. import _cpp
from .._layout import flat_views, real, real_dtype, write_back
from ..reference import clip as clip_reference
from ..reference import optim as reference


class ListPlan:
    """Bookkeeping in Python, and the reference math."""

    def __init__(self, params, n_state, steps, optimizer):
        self.params = params
        self.n_state = n_state
        self.steps = steps
        self.optimizer = optimizer
        self.dtype = real_dtype(params[0]) if params else torch.float32
        self.device = params[0].device if params else torch.device("cpu")
        self.is_complex = [p.is_complex() for p in params]
        self.state = [None] * len(params)
        self.fresh = [False] * len(params)
        self.active = None
        self.grads = None
        self._copies = []

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
        self.fresh[index] = fresh

    def _take_scanned(self):
        if self.active is None:
            raise RuntimeError("plan: scan() must precede a step")
        active, grads = self.active, self.grads
        self.active = self.grads = None
        return active, grads

    def launch_rows(self, counters_address):
        """As the C++ plan's launch_rows: int64 rows [param, grad, state0..2, numel, counter, 0]."""
        if self.active is None:
            raise RuntimeError("plan: scan() must precede a step")
        rows = []
        for i, g in zip(self.active, self.grads):
            state = self.state[i]
            tensors = [real(self.params[i]), real(g)] + [real(s) for s in state]
            flat, copies = flat_views(tensors, [True, False] + [True] * len(state))
            self._copies.extend(copies)
            pointers = [t.data_ptr() for t in flat] + [0] * (5 - len(flat))
            rows.append(pointers + [flat[0].numel(), counters_address + 4 * i, 0])
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 8)

    def finish_launch(self):
        write_back(self._copies)
        self._copies = []
        self.active = self.grads = None

    def norm_partials(self, norm_type):
        """Power sum of the scanned gradients as a 1-element float64 tensor."""
        if not self.grads:
            return torch.zeros(1, dtype=torch.float64, device=self.device)
        return clip_reference.power_sum(self.grads, norm_type).reshape(1)

    def adam(self, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_factor=None,
             found_inf=None):
        active, grads = self._take_scanned()
        if found_inf is not None and bool(found_inf.item() != 0):  # a host read: the reference may sync
            return
        for i, g in zip(active, grads):
            self.steps[i] += 1
            m, v, *rest = self.state[i]
            reference.adam(self.params[i], g, m, v, rest[0] if amsgrad else None, self.steps[i].item(), lr=lr,
                           beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                           maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, grad_factor=grad_factor)

    def sgd(self, lr, momentum, dampening, weight_decay, nesterov, maximize, grad_factor=None, found_inf=None):
        active, grads = self._take_scanned()
        if found_inf is not None and bool(found_inf.item() != 0):
            return
        for i, g in zip(active, grads):
            reference.sgd(self.params[i], g, self.state[i][0] if momentum != 0 else None, lr=lr, momentum=momentum,
                          dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                          first=self.fresh[i], grad_factor=grad_factor)
            self.fresh[i] = False


class TritonPlan:
    """One launch per step for the plan's tensors.

    The per-tensor counters the kernels read live on the device: step counts (``steps``, from the
    optimizer) and SGD's first-step flags (``fresh``). A small kernel advances them after the update
    unless AMP found inf/NaN, so a skipped step needs no host sync.
    """

    def __init__(self, params, n_state, steps, optimizer):
        ext = _cpp.get()
        self.book = ext.MultiTensorPlan(params, n_state, None, optimizer) if ext else ListPlan(
            params, n_state, None, optimizer)
        self.steps = steps
        self.dtype = real_dtype(params[0]) if params else torch.float32
        self.device = params[0].device if params else torch.device("cpu")
        self.fresh = torch.zeros(len(params), dtype=torch.float32, device=self.device)
        self._rows = None

    def __len__(self):
        return len(self.book)

    def scan(self):
        self._rows = None
        return self.book.scan()

    def bind(self, index, state, fresh):
        self.book.bind(index, state, fresh)
        self.fresh[index] = 1.0 if fresh else 0.0

    def _launch_rows(self, counters):
        if self._rows is None:
            self._rows = self.book.launch_rows(counters.data_ptr())
        return self._rows

    def _finish(self):
        self.book.finish_launch()
        self._rows = None

    def norm_partials(self, norm_type):
        from ..triton import clip as triton_clip

        rows = self._launch_rows(self.steps if self.steps is not None else self.fresh)
        return triton_clip.optimizer_grad_partials(rows, self.dtype, self.device, norm_type)

    def adam(self, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, grad_factor=None,
             found_inf=None):
        from ..triton import optim as triton_optim

        triton_optim.multi_tensor_adam(
            self._launch_rows(self.steps), self.dtype, self.device, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay, grad_factor=grad_factor, found_inf=found_inf,
        )
        self._finish()

    def sgd(self, lr, momentum, dampening, weight_decay, nesterov, maximize, grad_factor=None, found_inf=None):
        from ..triton import optim as triton_optim

        triton_optim.multi_tensor_sgd(
            self._launch_rows(self.fresh), self.dtype, self.device, lr=lr, momentum=momentum, dampening=dampening,
            weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, grad_factor=grad_factor,
            found_inf=found_inf,
        )
        self._finish()


def make_plan(backend, params, n_state, steps, optimizer):
    """A plan for ``params`` (one device, one real dtype) on a concrete backend."""
    if backend == "cpp":
        return _cpp.get().MultiTensorPlan(params, n_state, steps, optimizer)
    if backend == "triton":
        return TritonPlan(params, n_state, steps, optimizer)
    return ListPlan(params, n_state, steps, optimizer)
