"""The no-compiler fallback of the C++ plan's bookkeeping (csrc/multi_tensor_plan.h), in Python:
scan and check the gradients, hold the bound state, list the scanned parameters, build launch rows.
Used by the triton and reference plans only when the C++ extension cannot be loaded; it has the
C++ plan's method names and results, and no update of its own.
"""

import torch

from .._layout import LaunchRow, flat_views, real, real_dtype, state_dtype, write_back


class PythonBook:
    def __init__(self, params, n_state, optimizer, state_dtypes=None, tensor_ids=None):
        self.params = params
        self.n_state = n_state
        self.optimizer = optimizer
        self.dtype = real_dtype(params[0]) if params else torch.float32
        self.device = params[0].device if params else torch.device("cpu")
        self.is_complex = [p.is_complex() for p in params]
        self.state_dtypes = tuple(state_dtypes) if state_dtypes is not None else (state_dtype(self.dtype),) * n_state
        self.tensor_ids = list(tensor_ids) if tensor_ids is not None else list(range(len(params)))
        self.state = [None] * len(params)
        self._fresh = [0] * len(params)
        self._active = None
        self._grads = None
        self._copies = []

    def __len__(self):
        return len(self.params)

    def scan(self, allow_sparse=False):
        self._active = None
        active, grads, need_state, sparse = [], [], [], []
        name = self.optimizer
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if real_dtype(p) != self.dtype or p.device != self.device or p.is_complex() != self.is_complex[i]:
                return True, [], []
            if g.is_sparse and allow_sparse:
                sparse.append(i)
                continue
            if g.is_sparse or g.layout != torch.strided:
                raise RuntimeError(f"{name} does not support sparse gradients (parameter {i} of its group has one)")
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
        self._active, self._grads = active, grads
        return False, need_state, sparse

    def bind(self, index, state, fresh):
        p = self.params[index]
        if len(state) != self.n_state:
            raise RuntimeError(f"MultiTensorPlan.bind: expected {self.n_state} state tensors, got {len(state)}")
        for s, want in zip(state, self.state_dtypes):
            if s is None or s.device != p.device or real_dtype(s) != want or s.shape != p.shape:
                raise RuntimeError(
                    f"{self.optimizer}: state of parameter {index} must be a {want} tensor of shape {list(p.shape)} "
                    f"on {p.device}, got {None if s is None else f'{s.dtype} of shape {list(s.shape)} on {s.device}'}"
                )
        self.state[index] = list(state)
        self._fresh[index] = 1 if fresh else 0

    def _scanned(self):
        if self._active is None:
            raise RuntimeError("MultiTensorPlan: scan() must precede a step")
        return self._active

    def active(self):
        return list(self._scanned())

    def fresh(self):
        return list(self._fresh)

    def finish_step(self):
        for i in self._active or ():
            self._fresh[i] = 0
        self._active = self._grads = None

    def launch_rows(self, counters_address):
        rows = []
        for i, g in zip(self._scanned(), self._grads):
            state = self.state[i]
            tensors = [real(self.params[i]), real(g)] + [real(s) for s in state]
            flat, copies = flat_views(tensors, [True, False] + [True] * len(state))
            self._copies.extend(copies)
            row = [0] * LaunchRow.WORDS
            row[LaunchRow.PARAM] = flat[0].data_ptr()
            row[LaunchRow.GRAD] = flat[1].data_ptr()
            for k, s in enumerate(flat[2:]):
                row[LaunchRow.STATE + k] = s.data_ptr()
            row[LaunchRow.NUMEL] = flat[0].numel()
            row[LaunchRow.COUNTER] = counters_address + 4 * i
            row[LaunchRow.KEY] = self.tensor_ids[i]
            rows.append(row)
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, LaunchRow.WORDS)

    def finish_launch(self):
        write_back(self._copies)
        self._copies = []
        self._active = self._grads = None
