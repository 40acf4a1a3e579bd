"""The shared frontend of fused_optim's optimizers: a ``torch.optim.Optimizer`` whose step hands
each (param group, device, dtype) to one multi-tensor plan (fused_optim/ops/optim.py).

A subclass is a torch signature, its argument checks and a ``spec`` (fused_optim/optim/_spec.py):
state keys, counter, and how a group folds into kernel scalars and flags. This class calls only
the plans' contract (scan, bind, grad_power_sum, update) and the ops layer; it never names a
backend's internals.

Gradient clipping (``max_grad_norm``) and AMP unscaling are fused into the update: the norm of all
the optimizer's gradients is one multi-tensor reduction, and the update kernel multiplies each
gradient by the resulting factor as it reads it. Gradients are read once for the norm and once for
the update and never written, so they stay unclipped and scaled (unlike after ``clip_grad_norm_``).
Under ``torch.amp.GradScaler`` the optimizer follows torch's fused-optimizer protocol
(``_step_supports_amp_scaling``): the scaler hands over ``grad_scale`` and ``found_inf`` tensors,
the unscale happens in the kernel, and a step with inf/NaN gradients changes nothing, decided on
the device without a host sync.

Plans are built on the first step and reused; they are rebuilt when the optimizer's structure
changes (``add_param_group``, ``load_state_dict``, a group's parameter list replaced or resized,
``optimizer.state`` replaced or entries added or removed, a parameter's dtype or device changed,
an option that changes the state layout toggled). The state tensors of a parameter are bound to
its plan when created or loaded; change them in place or through ``load_state_dict``.

``differentiable=True`` runs the reference math with autograd on, so gradients flow through the
update as in torch's differentiable optimizers. Tensor subclasses other than DTensor (FakeTensor,
FunctionalTensor...), and devices the kernels do not serve, take the reference math too; DTensor
parameters are stepped on their local shards (ops.optim.backend_for and LocalShardPlan).
"""

from collections import defaultdict

import torch

from .. import _backend
from .._layout import real_dtype, state_dtype
from ..ops import grad_factor as factors
from ..ops import optim as plans
from ._spec import FIRST, STEP


class MultiTensorOptimizer(torch.optim.Optimizer):
    """Base class: subclasses set ``spec`` and their torch signature."""

    #: the optimizer's description (set by each subclass)
    spec = None
    #: torch.amp.GradScaler hands grad_scale and found_inf to step() instead of unscaling itself
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, backend, max_grad_norm=None):
        if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and max_grad_norm >= 0):
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (a number >= 0, or None for no clipping)")
        self._backend = _backend.validate_name(backend)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        #: the total gradient norm of the last step (unscaled), a 0-dim tensor on the device,
        #: when max_grad_norm is set: for logging without a sync
        self.last_grad_norm = None
        self._plans = None
        self._plans_key = None
        super().__init__(params, defaults)

    @property
    def _display_name(self):
        return self.spec.display_name

    # ----- structure ----------------------------------------------------------------------
    @property
    def backend(self):
        """The backend choice: 'auto', 'reference', 'cpp' or 'triton'."""
        return self._backend

    def add_param_group(self, param_group):
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if isinstance(params, torch.Tensor):
            params = [params]
        elif params is not None and not isinstance(params, set):
            params = list(params)
            param_group["params"] = params
        if params:
            devices = {p.device for p in params if isinstance(p, torch.Tensor)}
            if len(devices) > 1:
                raise ValueError(
                    f"fused_optim.{type(self).__name__}: the parameters of one group must be on one device, got "
                    f"{', '.join(sorted(str(d) for d in devices))}; put each device's parameters in a group of its own"
                )
        super().add_param_group(param_group)
        self._plans = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_backend"] = self._backend
        state["max_grad_norm"] = self.max_grad_norm
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_backend", "auto")
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("last_grad_norm", None)
        self._plans = None
        self._plans_key = None

    def load_state_dict(self, state_dict):
        """As torch's, but float16/bfloat16 parameters keep float32 state: the saved values are
        converted to float32 directly instead of through the parameter's dtype."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None or state_dtype(p.dtype) == p.dtype:
                continue
            state = self.state[p]
            for key, value in saved.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.is_floating_point():
                    state[key] = value.to(dtype=state_dtype(p.dtype), device=p.device)
        self._plans = None

    # ----- plans --------------------------------------------------------------------------
    def _structure_key(self):
        keys = self.spec.state_keys
        return (
            id(self.state),
            len(self.state),
            id(self.param_groups),
            tuple((id(g), id(g["params"]), len(g["params"]), tuple(keys(g))) for g in self.param_groups),
        )

    def _build_plans(self):
        if not isinstance(self.state, defaultdict):
            self.state = defaultdict(dict, self.state)
        built = []
        for group in self.param_groups:
            keys = self.spec.state_keys(group)
            by_kind = {}
            for p in group["params"]:
                by_kind.setdefault((p.device, real_dtype(p)), []).append(p)
            group_plans = []
            for params in by_kind.values():
                if len({id(p) for p in params}) == len(params):
                    group_plans.append(self._build_plan(group, params, keys))
                else:
                    group_plans.extend(self._build_repeated(group, params, keys))
            built.append((group, group_plans))
        return built

    def _new_steps(self, n, device):
        return torch.zeros(n, dtype=torch.float32, device=device) if self.spec.counter == STEP else None

    def _build_plan(self, group, params, keys):
        try:
            backend = plans.backend_for(self._backend, params, bool(group.get("differentiable")))
        except RuntimeError as error:
            return plans.UnavailablePlan(error, params), params, None
        # Step counts sit where the kernels read them: on the device for Triton (as torch's
        # fused optimizers keep them), on the CPU otherwise (as torch's default ones do).
        steps = self._new_steps(len(params), plans.device_of(params) if backend == "triton" else "cpu")
        return self._bind_plan(plans.make_plan(backend, self.spec, params, steps, len(keys)), params, steps, keys)

    def _build_repeated(self, group, params, keys):
        """A parameter listed more than once is stepped once per occurrence, one after another, as
        torch does (with a warning at construction): layer k holds the k-th occurrences, each layer a
        reference plan, and every occurrence counts its steps in the parameter's one counter."""
        layers, seen = [], {}
        for p in params:
            k = seen.get(id(p), 0)
            seen[id(p)] = k + 1
            if k == len(layers):
                layers.append([])
            layers[k].append(p)
        counters = self._new_steps(len(layers[0]), "cpu")
        slot = {id(p): i for i, p in enumerate(layers[0])}
        built = []
        for layer in layers:
            steps = None if counters is None else [counters[slot[id(p)]] for p in layer]
            plan = plans.make_plan("reference", self.spec, layer, steps, len(keys))
            built.append(self._bind_plan(plan, layer, steps, keys))
        return built

    def _bind_plan(self, plan, params, steps, keys):
        for index, p in enumerate(params):
            state = self.state.get(p)
            if state:
                self._bind_existing(plan, steps, index, p, state, keys)
        return plan, params, steps

    def _bind_existing(self, plan, steps, index, param, state, keys):
        """Bind loaded or earlier state, converted to the dtype and device this optimizer keeps."""
        if steps is not None:
            if "step" not in state:
                raise RuntimeError(f"{self._display_name}: the state of a parameter has no 'step' entry")
            step = state["step"]
            if isinstance(step, torch.Tensor):
                steps[index].copy_(step.reshape(()))
            else:
                steps[index].fill_(float(step))
            state["step"] = steps[index]
        tensors = []
        fresh = False
        for key in keys:
            value = state.get(key)
            if value is None:
                if key not in self.spec.fresh_when_missing:
                    raise RuntimeError(
                        f"{self._display_name}: the state of a parameter has no {key!r} entry (was an option "
                        f"that needs it, such as amsgrad, switched on after the first step?)"
                    )
                value = torch.empty_like(param, dtype=state_dtype(param.dtype), memory_format=torch.preserve_format)
                fresh = True
            elif value.dtype != state_dtype(param.dtype) or value.device != param.device:
                value = value.to(dtype=state_dtype(param.dtype), device=param.device)
            state[key] = value
            tensors.append(value)
        plan.bind(index, tensors, fresh)

    def _current_plans(self):
        key = self._structure_key()
        if self._plans is None or key != self._plans_key:
            self._plans = self._build_plans()
            self._plans_key = self._structure_key()
        return self._plans

    # Under torch.compile the step runs as it is, eagerly, outside the graph (the kernels are the
    # fused form already): dynamo does not trace into it. torch.optim marks zero_grad the same way,
    # so this adds no import to a training loop.
    @torch._disable_dynamo
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            return self._step(closure)

    def _step(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        spec = self.spec
        # Check every gradient of every group before anything is changed.
        pending = self._scan_all()
        created = False
        created_now = set()
        for group, plan, params, steps, need_state in pending:
            keys = spec.state_keys(group)
            for index in need_state:
                if not keys and steps is None:
                    plan.bind(index, [], False)  # stateless (SGD without momentum): no state entry, as torch
                    continue
                state = self.state[params[index]]
                if id(params[index]) in created_now:
                    # a repeated parameter, its state created this step by an earlier occurrence:
                    # shared, and (as torch gathers SGD's buffers before the update) still fresh
                    self._bind_existing(plan, steps, index, params[index], state, keys)
                    plan.bind(index, [state[k] for k in keys], spec.counter == FIRST)
                    continue
                created_now.add(id(params[index]))
                if steps is not None:
                    steps[index].fill_(0.0)
                    state["step"] = steps[index]
                state.update(spec.init_state(group, params[index], keys))
                # a first-step counter means the new state holds nothing yet (SGD's momentum)
                plan.bind(index, [state[k] for k in keys], spec.counter == FIRST)
                created = True
        if created:
            self._plans_key = self._structure_key()
        if not pending:
            return loss
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        device = pending[0][2][0].device
        dtype = factors.result_dtype([params[0] for _, _, params, _, _ in pending])
        factor, total = factors.step_grad_factor([plan for _, plan, _, _, _ in pending], self.max_grad_norm,
                                                 grad_scale, dtype, device)
        if total is not None:
            self.last_grad_norm = total
        for group, plan, _, _, _ in pending:
            scalars, flags = spec.fold(group)
            plan.update(scalars, flags, _on(factor, plan.device), _on(found_inf, plan.device))
        return loss

    def _scan_all(self):
        for _ in range(2):
            pending = []
            stale = False
            for group, group_plans in self._current_plans():
                for plan, params, steps in group_plans:
                    stale, need_state = plan.scan()
                    if stale:
                        break
                    if plan.sparse:
                        if self.spec.check_sparse is not None:
                            self.spec.check_sparse(group)
                        elif not self.spec.sparse:
                            raise RuntimeError(f"{self._display_name} does not support sparse gradients")
                    pending.append((group, plan, params, steps, need_state))
                if stale:
                    break
            if not stale:
                return pending
            self._plans = None
        raise RuntimeError(f"{self._display_name}: parameters keep changing dtype or device during the step")


def _on(tensor, device):
    return None if tensor is None else tensor.to(device, non_blocking=True)
