"""The shared frontend of fused_optim's optimizers: a ``torch.optim.Optimizer`` whose step hands
each (param group, device, dtype) to one multi-tensor plan.

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
"""

from collections import defaultdict

import torch

from .. import _backend
from .._layout import real_dtype
from ..ops import optim as plans
from ..reference import clip as clip_reference
from ..reference.optim import state_dtype

class MultiTensorOptimizer(torch.optim.Optimizer):
    """Base class: subclasses define the state layout and the update call."""

    #: name used in error messages, as torch words them ("Adam does not support ...")
    _display_name = "Optimizer"
    #: float32 step counts per parameter, as torch keeps them
    _has_steps = True
    #: torch.amp.GradScaler hands grad_scale and found_inf to step() instead of unscaling itself
    _step_supports_amp_scaling = True

    def __init__(self, params, defaults, backend, max_grad_norm=None):
        if defaults.get("differentiable"):
            raise RuntimeError(f"fused_optim.{type(self).__name__} does not support differentiable=True")
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

    # ----- subclass interface -------------------------------------------------------------
    def _state_keys(self, group):
        """Names of the per-parameter state tensors for ``group`` (besides 'step')."""
        raise NotImplementedError

    def _init_state(self, group, param, state):
        """Create the state tensors of ``param`` (first step with a gradient). Returns fresh flag."""
        raise NotImplementedError

    def _update(self, group, plan, extras):
        """Run one update of the scanned parameters of ``plan``; ``extras`` are its keyword
        arguments for unscaling, clipping and skipping (see _plan_extras)."""
        raise NotImplementedError

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
        return (
            id(self.state),
            len(self.state),
            id(self.param_groups),
            tuple(
                (id(g), id(g["params"]), len(g["params"]), tuple(self._state_keys(g))) for g in self.param_groups
            ),
        )

    def _build_plans(self):
        if not isinstance(self.state, defaultdict):
            self.state = defaultdict(dict, self.state)
        built = []
        for group in self.param_groups:
            keys = self._state_keys(group)
            by_kind = {}
            for p in group["params"]:
                by_kind.setdefault((p.device, real_dtype(p)), []).append(p)
            group_plans = []
            for (device, _), params in by_kind.items():
                backend = _backend.resolve(self._backend, device)
                # Step counts sit where the kernels read them: on the device for Triton (as torch's
                # fused optimizers keep them), on the CPU otherwise (as torch's default ones do).
                steps_device = device if backend == "triton" else "cpu"
                steps = torch.zeros(len(params), dtype=torch.float32, device=steps_device) if self._has_steps else None
                plan = plans.make_plan(backend, params, len(keys), steps, self._display_name)
                for index, p in enumerate(params):
                    state = self.state.get(p)
                    if state:
                        self._bind_existing(plan, steps, index, p, state, keys)
                group_plans.append((plan, params, steps))
            built.append((group, group_plans))
        return built

    def _bind_existing(self, plan, steps, index, param, state, keys):
        """Bind loaded or earlier state, converted to the dtype and device this optimizer keeps."""
        if steps is not None:
            if "step" not in state:
                raise RuntimeError(f"{self._display_name}: the state of a parameter has no 'step' entry")
            step = state["step"]
            if isinstance(step, torch.Tensor):
                steps[index].copy_(step.reshape(()))
            else:
                steps[index] = float(step)
            state["step"] = steps[index]
        tensors = []
        fresh = False
        for key in keys:
            value = state.get(key)
            if value is None:
                if not self._missing_state_is_fresh(key):
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

    def _missing_state_is_fresh(self, key):
        return False

    def _current_plans(self):
        key = self._structure_key()
        if self._plans is None or key != self._plans_key:
            self._plans = self._build_plans()
            self._plans_key = self._structure_key()
        return self._plans

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every gradient of every group before anything is changed.
        pending = self._scan_all()
        created = False
        for group, plan, params, steps, need_state in pending:
            keys = self._state_keys(group)
            for index in need_state:
                if not keys and steps is None:
                    plan.bind(index, [], False)  # stateless (SGD without momentum): no state entry, as torch
                    continue
                state = self.state[params[index]]
                if steps is not None:
                    steps[index] = 0.0
                    state["step"] = steps[index]
                fresh = self._init_state(group, params[index], state)
                plan.bind(index, [state[k] for k in keys], fresh)
                created = True
        if created:
            self._plans_key = self._structure_key()
        factor, found_inf = self._grad_factor(pending)
        for group, plan, _, _, _ in pending:
            self._update(group, plan, self._plan_extras(plan, factor, found_inf))
        return loss

    def _grad_factor(self, pending):
        """(what every gradient is multiplied by, found_inf): 0-dim tensors or None.

        The factor folds AMP's unscale (1 / grad_scale) and clipping: min(max_norm / (norm +
        1e-6), 1) with the norm of the unscaled gradients, computed in their promoted dtype exactly
        as torch.nn.utils.clip_grad_norm_ computes it.
        """
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if self.max_grad_norm is None:
            if grad_scale is None:
                return None, found_inf
            return grad_scale.double().reciprocal(), found_inf
        plans_ = [plan for _, plan, _, _, _ in pending]
        dtype = clip_reference.result_dtype([params[0] for _, _, params, _, _ in pending])
        device = pending[0][2][0].device
        partials = [torch.tensor([plan.grad_norm_power_sum(2.0)], dtype=torch.float64) if _is_cpp_plan(plan)
                    else plan.norm_partials(2.0) for plan in plans_]
        if all(isinstance(p, plans.TritonPlan) and p.device == device for p in plans_):
            from ..triton import clip as triton_clip

            scale = grad_scale.to(device, non_blocking=True) if grad_scale is not None else None
            total, factor = triton_clip.finalize(torch.cat(partials), 2.0, dtype, self.max_grad_norm, scale)
        else:
            total = torch.stack([p.to(device, non_blocking=True).sum() for p in partials]).sum().sqrt()
            if grad_scale is not None:
                total = total / grad_scale.to(device, torch.float64)
            total = total.to(dtype)
            factor = clip_reference.clip_coefficient(self.max_grad_norm, total).double()
            if grad_scale is not None:
                factor = factor / grad_scale.to(device, torch.float64)
        self.last_grad_norm = total
        return factor, found_inf

    @staticmethod
    def _plan_extras(plan, factor, found_inf):
        if _is_cpp_plan(plan):
            # The C++ plan runs CPU tensors: the scaler's tensors are read on the host.
            return dict(grad_factor=1.0 if factor is None else float(factor),
                        skip=found_inf is not None and float(found_inf) != 0.0)
        device = plan.device
        return dict(
            grad_factor=None if factor is None else factor.to(device, non_blocking=True),
            found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True),
        )

    def _scan_all(self):
        for _ in range(2):
            pending = []
            stale = False
            for group, group_plans in self._current_plans():
                for plan, params, steps in group_plans:
                    stale, need_state = plan.scan()
                    if stale:
                        break
                    pending.append((group, plan, params, steps, need_state))
                if stale:
                    break
            if not stale:
                return pending
            self._plans = None
        raise RuntimeError(f"{self._display_name}: parameters keep changing dtype or device during the step")


def _is_cpp_plan(plan):
    return not isinstance(plan, (plans.ListPlan, plans.TritonPlan))


def scalar(value):
    """A hyperparameter as a Python float (torch allows 1-element tensors for lr and betas)."""
    return float(value) if isinstance(value, torch.Tensor) else value
