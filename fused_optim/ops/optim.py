"""Multi-tensor optimizer plans: the tensors of one (param group, device, real dtype), bound once
and stepped many times. Every backend's plan has one contract, the only one the frontend calls::

    plan = make_plan(backend, spec, params, steps, n_state, state_dtypes, tensor_ids)
    stale, need_state = plan.scan()           # check every gradient; change nothing
    plan.bind(index, state_tensors, fresh)    # attach a parameter's state (created or loaded)
    partials = plan.grad_power_sum(2.0)       # power sums of the scanned gradients (clipping)
    plan.update(scalars, flags, grad_factor, found_inf)

``spec`` is the optimizer's description (fused_optim/optim/_spec.py); its kernel is bound when the
plan is built, so ``update`` takes only the values folded from the group this step.
``state_dtypes``: the real dtype of each state tensor (fused_optim._layout.state_dtypes);
``tensor_ids``: each parameter's rounding id, its index in the optimizer (stochastic rounding's key).
``grad_factor`` and ``found_inf`` are 0-dim tensors or None (unscale and clip; AMP's skip).

- ``cpp``: the C++ plan does everything, with no per-tensor work in Python.
- ``triton``: one launch of the optimizer's kernel (``<name>_kernel`` in fused_optim/triton/<name>.py) over rows
  that the C++ plan writes (metadata only, so it serves CUDA tensors too).
- ``reference``: the reference math (fused_optim/reference/optim.py), one tensor at a time.

Sparse gradients (optimizers whose spec allows them) take the reference math on every backend,
beside the dense ones in the same group. Without the C++ extension, the triton and reference plans
keep their books with ``PythonBook``, the no-compiler fallback.
"""

import importlib

import torch

from .. import _backend, _cpp
from .._layout import real_dtype, state_dtype
from ..reference import clip as clip_reference
from ..reference import optim as reference
from ._python_book import PythonBook
from ._route import is_dtensor


def _plain(params):
    """Plain CPU/CUDA tensors: what the C++ bookkeeping may take pointers of."""
    return all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type in ("cpu", "cuda") for p in params)


def _book(params, n_state, steps, spec, state_dtypes, tensor_ids, kernel=""):
    ext = _cpp.get()
    if ext is not None and _plain(params):
        return ext.MultiTensorPlan(params, n_state, steps, spec.display_name, kernel, list(state_dtypes),
                                   list(tensor_ids))
    return PythonBook(params, n_state, spec.display_name, state_dtypes, tensor_ids)


def _defaults(params, n_state, state_dtypes, tensor_ids):
    if state_dtypes is None:
        dtype = real_dtype(params[0]) if params else torch.float32
        state_dtypes = (state_dtype(dtype),) * n_state
    return tuple(state_dtypes), tuple(range(len(params)) if tensor_ids is None else tensor_ids)


class _Plan:
    """What every backend shares: the contract's bookkeeping and the sparse-gradient path."""

    def __init__(self, spec, params, steps, n_state, book, tensor_ids):
        self.spec = spec
        self.params = params
        self.tensor_ids = tensor_ids
        self.steps = steps
        self.book = book
        self.dtype = real_dtype(params[0]) if params else torch.float32
        self.device = params[0].device if params else torch.device("cpu")
        self.state = [None] * len(params)
        self.fresh = [False] * len(params)
        self.sparse = []

    def __len__(self):
        return len(self.params)

    def scan(self):
        """(stale, need_state): stale when a parameter changed dtype or device (rebuild the plan);
        need_state: the parameters with a gradient and no state yet."""
        stale, need_state, sparse = self.book.scan(self.spec.sparse)
        self.sparse = sparse  # the parameters with a sparse gradient, for the caller's checks
        if sparse:
            need_state = sorted(need_state + [i for i in sparse if self.state[i] is None])
        return stale, need_state

    def bind(self, index, state, fresh):
        self.book.bind(index, state, fresh)
        self.state[index] = list(state)
        self.fresh[index] = bool(fresh)

    def grad_power_sum(self, norm_type):
        """The power sums of the scanned gradients, as a 1-D float64 tensor of partials to add."""
        dense = self._dense_power_sum(norm_type)
        if not self.sparse:
            return dense
        values = [self.params[i].grad.coalesce()._values() for i in self.sparse]
        return torch.cat([dense, clip_reference.power_sum(values, norm_type).reshape(1).to(dense.device)])

    def update(self, scalars, flags, grad_factor=None, found_inf=None):
        sparse, self.sparse = self.sparse, []
        self._update_dense(scalars, flags, grad_factor, found_inf)
        if sparse and not (found_inf is not None and bool(found_inf.item() != 0)):
            self._update_sparse(sparse, scalars, flags, grad_factor)

    def _update_sparse(self, indices, scalars, flags, grad_factor):
        step_of = getattr(reference, self.spec.name + "_sparse")
        named = self.spec.named(scalars, flags)
        for i in indices:
            p = self.params[i]
            step = None
            if self.steps is not None:
                self.steps[i] += 1
                step = self.steps[i].item()
            step_of(p, p.grad, self.state[i], step, self.fresh[i], grad_factor, tensor=self.tensor_ids[i], **named)
            if self.fresh[i]:
                self.bind(i, self.state[i], False)


class CppPlan(_Plan):
    def __init__(self, spec, params, steps, n_state, state_dtypes=None, tensor_ids=None):
        state_dtypes, tensor_ids = _defaults(params, n_state, state_dtypes, tensor_ids)
        book = _cpp.get().MultiTensorPlan(params, n_state, steps, spec.display_name, spec.name, list(state_dtypes),
                                          list(tensor_ids))
        super().__init__(spec, params, steps, n_state, book, tensor_ids)

    def _dense_power_sum(self, norm_type):
        return torch.tensor([self.book.grad_norm_power_sum(norm_type)], dtype=torch.float64)

    def _update_dense(self, scalars, flags, grad_factor, found_inf):
        self.book.update(scalars, flags, grad_factor, found_inf)


class ReferencePlan(_Plan):
    def __init__(self, spec, params, steps, n_state, state_dtypes=None, tensor_ids=None):
        state_dtypes, tensor_ids = _defaults(params, n_state, state_dtypes, tensor_ids)
        super().__init__(spec, params, steps, n_state, _book(params, n_state, None, spec, state_dtypes, tensor_ids),
                         tensor_ids)
        self._step_of = getattr(reference, spec.name)

    def _dense_power_sum(self, norm_type):
        grads = [self.params[i].grad for i in self.book.active()]
        if not grads:
            return torch.zeros(1, dtype=torch.float64, device=self.device)
        return clip_reference.power_sum(grads, norm_type).reshape(1)

    def _update_dense(self, scalars, flags, grad_factor, found_inf):
        active = self.book.active()
        if found_inf is not None and bool(found_inf.item() != 0):  # a host read: the reference may sync
            self.book.finish_launch()
            return
        named = self.spec.named(scalars, flags)
        for i in active:
            p = self.params[i]
            step = None
            if self.steps is not None:
                self.steps[i] += 1
                step = self.steps[i].item()
            self._step_of(p, p.grad, self.state[i], step, self.fresh[i], grad_factor, tensor=self.tensor_ids[i],
                          **named)
            self.fresh[i] = False
        self.book.finish_step()


class TritonPlan(_Plan):
    """One launch per step. The per-tensor counters the kernels read live on the device: step
    counts (``steps``) or first-step flags (``first``); a small kernel advances them after the
    update unless AMP found inf/NaN, so a skipped step needs no host sync."""

    def __init__(self, spec, params, steps, n_state, state_dtypes=None, tensor_ids=None):
        state_dtypes, tensor_ids = _defaults(params, n_state, state_dtypes, tensor_ids)
        super().__init__(spec, params, steps, n_state, _book(params, n_state, None, spec, state_dtypes, tensor_ids),
                         tensor_ids)
        from ..triton import optim as triton_optim

        self._launcher = triton_optim
        self._kernels = importlib.import_module(f"..triton.{spec.name}", __package__)
        self.first = torch.zeros(len(params), dtype=torch.float32, device=self.device)
        self.counters = steps if steps is not None else self.first
        self.table = triton_optim.LaunchTable(self.device)
        self._rows = None

    def scan(self):
        self._rows = None
        return super().scan()

    def bind(self, index, state, fresh):
        super().bind(index, state, fresh)
        self.first[index] = 1.0 if fresh else 0.0

    def _launch_rows(self):
        if self._rows is None:
            self._rows = self.book.launch_rows(self.counters.data_ptr())
            if self._rows.shape[0]:
                self.table.set_rows(self._rows)
        return self._rows

    def _dense_power_sum(self, norm_type):
        rows = self._launch_rows()
        if rows.shape[0] == 0:
            return torch.zeros(1, dtype=torch.float64, device=self.device)
        return self._launcher.grad_power_sum_partials(self.table, rows, self.dtype, self.device, norm_type)

    def _update_dense(self, scalars, flags, grad_factor, found_inf):
        self._launcher.launch(
            getattr(self._kernels, f"{self.spec.name}_kernel"), self.table, self._launch_rows(), self.dtype,
            self.device, scalars,
            {name.upper(): int(value) for name, value in zip(self.spec.flags, flags)}, grad_factor, found_inf,
            advance=self.spec.counter,
        )
        self.book.finish_launch()
        self._rows = None


class UnavailablePlan:
    """A plan whose backend cannot run its tensors here (an explicit backend on meta tensors, say):
    a step without gradients is a no-op, as in torch; one with gradients raises the reason."""

    def __init__(self, error, params):
        self.error = error
        self.params = params
        self.device = params[0].device if params else torch.device("cpu")

    def __len__(self):
        return len(self.params)

    sparse = ()

    def scan(self):
        if any(p.grad is not None for p in self.params):
            raise self.error
        return False, []

    def bind(self, index, state, fresh):
        pass

    def grad_power_sum(self, norm_type):
        return torch.zeros(1, dtype=torch.float64)

    def update(self, scalars, flags, grad_factor=None, found_inf=None):
        pass


class LocalShardPlan:
    """DTensor parameters (FSDP2, tensor parallel) stepped on their local shards: a plan of the
    backend over the local tensors does the work, still one multi-tensor call; the state stays
    DTensors of the parameters' placement (so torch.distributed.checkpoint saves it), and the
    gradient power sums are reduced over the mesh for a global clipping norm."""

    def __init__(self, inner, params):
        self.inner = inner
        self.params = params
        self.locals = inner.params
        self.device = inner.device
        first = params[0]
        self.mesh, self.placements = first.device_mesh, tuple(first.placements)
        if any(p.device_mesh != self.mesh or tuple(p.placements) != self.placements for p in params):
            raise ValueError("fused_optim: the DTensor parameters of one group must share one mesh and placement; "
                             "put each placement in a param group of its own")

    def __len__(self):
        return len(self.params)

    @property
    def sparse(self):
        return self.inner.sparse

    def scan(self):
        for p, local in zip(self.params, self.locals):
            if p._local_tensor.data_ptr() != local.data_ptr() or p._local_tensor.shape != local.shape:
                return True, []  # the shard was reallocated: rebuild
            g = p.grad
            if g is not None and tuple(g.placements) != self.placements:
                g = g.redistribute(self.mesh, self.placements)
            local.grad = None if g is None else g.to_local()
        return self.inner.scan()

    def bind(self, index, state, fresh):
        self.inner.bind(index, [s.to_local() if is_dtensor(s) else s for s in state], fresh)

    def grad_power_sum(self, norm_type):
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

        local = self.inner.grad_power_sum(norm_type).sum().reshape(1)
        placements = [Partial() if isinstance(pl, Shard) else Replicate() for pl in self.placements]
        return DTensor.from_local(local.to(self.device), self.mesh, placements).full_tensor()

    def update(self, scalars, flags, grad_factor=None, found_inf=None):
        self.inner.update(scalars, flags, _local(grad_factor), _local(found_inf))
        for local in self.locals:
            local.grad = None


def _local(t):
    return t.full_tensor() if is_dtensor(t) else t


def device_of(params):
    """The device the kernels see: a DTensor's local shard's."""
    return params[0]._local_tensor.device if is_dtensor(params[0]) else params[0].device


def backend_for(requested, params, differentiable=False):
    """The concrete backend that steps ``params`` (one device and dtype of a group), decided
    before any pointer is taken: differentiable steps and tensor subclasses other than DTensor
    (FakeTensor, FunctionalTensor...) take the reference math, which dispatches through their own
    ops; DTensors are stepped on their local shards by the backend of the shards' device."""
    if differentiable:
        return "reference"
    backend = _backend.resolve(requested, device_of(params))
    if not all(is_dtensor(p) for p in params) and not _plain(params):
        return "reference"
    return backend


_PLANS = {"cpp": CppPlan, "triton": TritonPlan, "reference": ReferencePlan}


def make_plan(backend, spec, params, steps, n_state, state_dtypes=None, tensor_ids=None):
    """A plan for ``params`` (one device, one real dtype) on a concrete backend."""
    if params and all(is_dtensor(p) for p in params):
        locals_ = [p.to_local() for p in params]
        return LocalShardPlan(_PLANS[backend](spec, locals_, steps, n_state, state_dtypes, tensor_ids), params)
    return _PLANS[backend](spec, params, steps, n_state, state_dtypes, tensor_ids)
