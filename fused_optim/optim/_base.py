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
from .._layout import MASTER_KEYS, MASTER_KINDS, STATE_DTYPES, real_dtype, state_dtypes
from ..ops import grad_factor as factors
from ..ops import optim as plans
from ._spec import FIRST, STEP, master_state

#: the param-group options of training in 16-bit precision (``low_precision_defaults``)
LOW_PRECISION_OPTIONS = ("master_weights", "state_dtype", "seed", "rounding_step")
#: the state keys they add
MASTER_STATE_KEYS = tuple(k for keys in MASTER_KEYS.values() for k in keys)


def low_precision_defaults(master_weights=None, state_dtype=None, seed=None):
    """The low-precision options as param-group defaults, checked: ``master_weights`` (None,
    "fp32", "kahan", "stochastic"), ``state_dtype`` (None, torch.float32, torch.bfloat16) and the
    stochastic-rounding ``seed`` (default ``torch.initial_seed()``); ``rounding_step`` counts the
    group's stochastically rounded steps (a key of the random bits)."""
    if master_weights not in MASTER_KINDS:
        raise ValueError(f"Invalid master_weights: {master_weights!r} (None, 'fp32', 'kahan' or 'stochastic')")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r} (None, torch.float32 or torch.bfloat16)")
    if seed is None:
        seed = torch.initial_seed()
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"Invalid seed: {seed!r} (an integer in [0, 2**64))")
    return dict(master_weights=master_weights, state_dtype=state_dtype, seed=seed, rounding_step=0)


def check_low_precision(group, name):
    """ValueError, naming the dtype, when a group's low-precision options do not fit its
    parameters: master weights are for float16/bfloat16 parameters, a state_dtype for real
    float32 and 16-bit ones."""
    master, wanted = group.get("master_weights"), group.get("state_dtype")
    if master is None and wanted is None:
        return
    for p in group["params"]:
        if not isinstance(p, torch.Tensor):
            continue
        if master is not None and p.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name}: master_weights={master!r} is for float16/bfloat16 parameters, "
                             f"got a {p.dtype} parameter (use master_weights=None)")
        if wanted is not None and p.dtype not in (torch.float32, torch.float16, torch.bfloat16) and not (
                wanted == torch.float32 and p.dtype == torch.complex64):
            raise ValueError(f"{name}: state_dtype={wanted} is for float32/float16/bfloat16 parameters, "
                             f"got a {p.dtype} parameter (use state_dtype=None)")


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
        check_low_precision(self.param_groups[-1], self._display_name)
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
        for group in self.param_groups:
            for key, value in low_precision_defaults(seed=0).items():
                group.setdefault(key, value)
        self._plans = None
        self._plans_key = None

    def load_state_dict(self, state_dict):
        """As torch's, but each state tensor keeps the dtype this optimizer keeps it in (float32
        state and master weights of 16-bit parameters, bfloat16 state under ``state_dtype``): the
        saved values are converted directly instead of through the parameter's dtype. A state_dict
        from torch.optim loads too: the groups keep their low-precision options, and master
        weights missing from it are initialised from the parameters."""
        options = [{k: g[k] for k in LOW_PRECISION_OPTIONS if k in g and k not in saved}
                   for g, saved in zip(self.param_groups, state_dict["param_groups"])]
        super().load_state_dict(state_dict)
        for group, mine in zip(self.param_groups, options):
            group.update(mine)
            check_low_precision(group, self._display_name)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        groups = [g for g in self.param_groups for _ in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, group, p in zip(saved_ids, groups, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            state = self.state[p]
            keys = self.spec.keys(group)
            for key, dtype in zip(keys, state_dtypes(p.dtype, keys, group.get("state_dtype"))):
                value = saved.get(key)
                if dtype == p.dtype:
                    continue  # torch's load cast it to the parameter's dtype already
                if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                    state[key] = value.to(dtype=dtype, device=p.device)
        self._plans = None

    def state_bytes(self):
        """The bytes the optimizer state occupies (every tensor in ``optimizer.state``, step
        counts included)."""
        return sum(v.numel() * v.element_size() for state in self.state.values() for v in state.values()
                   if isinstance(v, torch.Tensor))

    # ----- plans --------------------------------------------------------------------------
    def _structure_key(self):
        keys = self.spec.keys
        return (
            id(self.state),
            len(self.state),
            id(self.param_groups),
            tuple((id(g), id(g["params"]), len(g["params"]), keys(g), g.get("state_dtype")) for g in self.param_groups),
        )

    def _build_plans(self):
        if not isinstance(self.state, defaultdict):
            self.state = defaultdict(dict, self.state)
        built = []
        # a parameter's rounding id (the "tensor" of stochastic rounding's key): its index in the
        # optimizer, counting every group's parameters in order
        tensor_id = 0
        for group in self.param_groups:
            check_low_precision(group, self._display_name)
            keys = self.spec.keys(group)
            by_kind = {}
            for p in group["params"]:
                by_kind.setdefault((p.device, real_dtype(p)), []).append((p, tensor_id))
                tensor_id += 1
            group_plans = []
            for entries in by_kind.values():
                params, ids = [p for p, _ in entries], [i for _, i in entries]
                if len({id(p) for p in params}) == len(params):
                    group_plans.append(self._build_plan(group, params, keys, ids))
                else:
                    group_plans.extend(self._build_repeated(group, params, keys, ids))
            built.append((group, group_plans))
        return built

    def _new_steps(self, n, device):
        return torch.zeros(n, dtype=torch.float32, device=device) if self.spec.counter == STEP else None

    def _plan_dtypes(self, group, params, keys):
        return state_dtypes(real_dtype(params[0]), keys, group.get("state_dtype")) if params else ()

    def _build_plan(self, group, params, keys, ids):
        try:
            backend = plans.backend_for(self._backend, params, bool(group.get("differentiable")))
        except RuntimeError as error:
            return plans.UnavailablePlan(error, params), params, None
        # Step counts sit where the kernels read them: on the device for Triton (as torch's
        # fused optimizers keep them), on the CPU otherwise (as torch's default ones do).
        steps = self._new_steps(len(params), plans.device_of(params) if backend == "triton" else "cpu")
        plan = plans.make_plan(backend, self.spec, params, steps, len(keys), self._plan_dtypes(group, params, keys),
                               ids)
        return self._bind_plan(plan, group, params, steps, keys)

    def _build_repeated(self, group, params, keys, ids):
        """A parameter listed more than once is stepped once per occurrence, one after another, as
        torch does (with a warning at construction): layer k holds the k-th occurrences, each layer a
        reference plan, and every occurrence counts its steps in the parameter's one counter."""
        layers, layer_ids, seen = [], [], {}
        for p, tensor_id in zip(params, ids):
            k = seen.get(id(p), 0)
            seen[id(p)] = k + 1
            if k == len(layers):
                layers.append([])
                layer_ids.append([])
            layers[k].append(p)
            layer_ids[k].append(tensor_id)
        counters = self._new_steps(len(layers[0]), "cpu")
        slot = {id(p): i for i, p in enumerate(layers[0])}
        built = []
        for layer, lids in zip(layers, layer_ids):
            steps = None if counters is None else [counters[slot[id(p)]] for p in layer]
            plan = plans.make_plan("reference", self.spec, layer, steps, len(keys),
                                   self._plan_dtypes(group, layer, keys), lids)
            built.append(self._bind_plan(plan, group, layer, steps, keys))
        return built

    def _bind_plan(self, plan, group, params, steps, keys):
        for index, p in enumerate(params):
            state = self.state.get(p)
            if state:
                self._bind_existing(plan, group, steps, index, p, state, keys)
        return plan, params, steps

    def _bind_existing(self, plan, group, steps, index, param, state, keys):
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
        for key, dtype in zip(keys, state_dtypes(param.dtype, keys, group.get("state_dtype"))):
            value = state.get(key)
            if value is None and key in MASTER_STATE_KEYS:
                value = master_state(group, param)[key]  # a state_dict without master weights: from the parameter
            elif value is None:
                if key not in self.spec.fresh_when_missing:
                    raise RuntimeError(
                        f"{self._display_name}: the state of a parameter has no {key!r} entry (was an option "
                        f"that needs it, such as amsgrad, switched on after the first step?)"
                    )
                value = torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)
                fresh = True
            elif value.dtype != dtype or value.device != param.device:
                value = value.to(dtype=dtype, device=param.device)
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
            keys = spec.keys(group)
            for index in need_state:
                if not keys and steps is None:
                    plan.bind(index, [], False)  # stateless (SGD without momentum): no state entry, as torch
                    continue
                state = self.state[params[index]]
                if id(params[index]) in created_now:
                    # a repeated parameter, its state created this step by an earlier occurrence:
                    # shared, and (as torch gathers SGD's buffers before the update) still fresh
                    self._bind_existing(plan, group, steps, index, params[index], state, keys)
                    plan.bind(index, [state[k] for k in keys], spec.counter == FIRST)
                    continue
                created_now.add(id(params[index]))
                if steps is not None:
                    steps[index].fill_(0.0)
                    state["step"] = steps[index]
                state.update(spec.new_state(group, params[index], keys))
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
        stepped = set()
        for group, plan, _, _, _ in pending:
            if group.get("master_weights") == "stochastic" and id(group) not in stepped:
                group["rounding_step"] = group.get("rounding_step", 0) + 1  # a fresh key for every step
                stepped.add(id(group))
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
                        if group.get("master_weights") is not None or group.get("state_dtype") == torch.bfloat16:
                            raise RuntimeError(f"{self._display_name}: master_weights and state_dtype=torch.bfloat16 "
                                               f"take dense gradients only")
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


def strip_state_dict(state_dict):
    """A copy of an optimizer ``state_dict`` without fused_optim's extra entries (the master-weight
    state ``master_param`` / ``kahan_comp`` and the low-precision group options), so that
    torch.optim loads it. Tensors are shared, not copied; bfloat16 state loads into torch.optim,
    which casts it to the parameter's dtype."""
    state = {index: {k: v for k, v in entry.items() if k not in MASTER_STATE_KEYS}
             for index, entry in state_dict["state"].items()}
    groups = [{k: v for k, v in group.items() if k not in LOW_PRECISION_OPTIONS}
              for group in state_dict["param_groups"]]
    return {**state_dict, "state": state, "param_groups": groups}
