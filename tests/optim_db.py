"""The optimizer registry of the tests, in the spirit of torch's OptimizerInfo / optim_db.

One ``OptimizerInfo`` per optimizer holds everything the optimizer tests need to know about it:
its configurations (each run on every backend against torch.optim, comparing parameters and
every state tensor), the bad inputs it must reject with the exception (and message) torch
raises, the parameter dtypes it supports, whether it accepts sparse gradients, whether it keeps
per-parameter step counts, and which of its configurations each focused test runs. Every
optimizer test parametrizes over ``OPTIMIZERS``; adding an optimizer is one more entry.

The fused_optim class and torch's class are looked up by ``name`` in ``fused_optim`` and
``torch.optim``. The helpers at the end (parameters of awkward shapes, gradients, the state
comparison) are shared by the tests.
"""

import dataclasses
from typing import Callable, Optional

import torch
from hypothesis import strategies as st

import fused_optim as fo


@dataclasses.dataclass(frozen=True)
class Config:
    """Constructor arguments of one optimizer configuration (``backend`` and ``foreach`` aside)."""

    id: str
    fused: type
    torch: type
    kwargs: dict
    #: per-group overrides: the parameters are split evenly over len(groups) groups
    groups: tuple = ()
    #: also compared at float64 tolerances (False where torch's own rounding shows there)
    float64: bool = True
    #: in the parity tables (test_matches_torch, float64); False: a configuration that only a
    #: focused test runs (against torch there too)
    parity: bool = True

    def param_groups(self, params):
        if not self.groups:
            return params
        size = -(-len(params) // len(self.groups))
        return [dict(params=params[i * size:(i + 1) * size], **overrides) for i, overrides in enumerate(self.groups)]


@dataclasses.dataclass(frozen=True)
class BadInput:
    """A constructor call that must fail: ``cls(params(ps), **kwargs)`` raises ``error`` with a
    message matching ``match`` before anything is created."""

    id: str
    kwargs: dict
    error: type
    match: str
    #: torch.optim raises the same exception type for the same call (False: a fused_optim-only check)
    torch_too: bool = True
    #: the params argument made from a list of fresh parameters (None: the list itself)
    params: Optional[Callable] = None


#: the focused tests that run chosen configurations (OptimizerInfo.uses), and where they are
ROLES = {
    "complex": "test_optim_parity.test_complex_matches_torch",
    "sparse": "test_optim_parity.test_sparse_gradients_match_torch",
    "mixed_dtypes": "test_optim_parity.test_mixed_dtypes_in_one_group",
    "closure": "test_optim_parity.test_closure_and_zero_grad",
    "add_param_group": "test_optim_parity.test_add_param_group_mid_training",
    "retune": "test_optim_parity.test_hyperparameters_changed_between_steps",
    "without_extension": "test_optim_parity.test_triton_without_the_extension",
    "state": "test_optim_errors (the stepped optimizer), test_optim_state (saved file, dtype conversion)",
    "round_trip": "test_optim_state.test_torch_to_fused_to_torch",
    "schedulers": "test_optim_state.test_lr_schedulers_drive_fused_as_torch",
    "pickle": "test_optim_state.test_pickle_and_deepcopy_keep_backend_and_state, test_fused_clip_step",
    "state_reset": "test_optim_state.test_state_reset_starts_over",
    "steps": "test_optim_state.test_state_step_is_a_float32_cpu_tensor_per_parameter",
    "low_precision": "test_optim_low_precision (backends against the reference, one step against torch)",
    "state_dict_float32": "test_optim_low_precision.test_state_dict_keeps_float32_state_exactly",
    "amp": "test_amp (GradScaler loops)",
    "skipped_first_step": "test_amp.test_skipped_first_step_creates_empty_state",
    "clip": "test_fused_clip_step.test_fused_clip_equals_clip_then_step",
    "clip_groups": "test_fused_clip_step.test_fused_clip_over_groups_and_dtypes",
    "training": "test_training_digits",
}


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """What the tests know about one optimizer (see the module docstring)."""

    #: the class name in fused_optim and torch.optim
    name: str
    #: its configurations, made with ``spec``
    configs: tuple
    #: constructor calls it rejects (besides COMMON_BAD_INPUTS, which every optimizer rejects)
    bad_inputs: tuple = ()
    #: parameter dtypes it steps (low precision with float32 state)
    dtypes: tuple = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.complex64)
    #: accepts sparse gradients (and then must match torch on them), else rejects them with
    #: "<name> does not support sparse gradients" before anything changes
    supports_sparse: bool = False
    #: keeps a float32 CPU ``step`` tensor per parameter, counting the steps it had a gradient
    has_steps: bool = True
    #: creates its state in the constructor (as torch's Adagrad), not on a parameter's first
    #: step: then clearing ``optimizer.state`` is not a restart (torch fails on it too)
    state_in_constructor: bool = False
    #: which configurations (ids without the "<name>-" prefix) each focused test (a key of
    #: ROLES) runs; a test not named here runs the first configuration
    uses: dict = dataclasses.field(default_factory=dict)
    #: the overrides of a group added after three steps (test_add_param_group_mid_training)
    late_group: dict = dataclasses.field(default_factory=lambda: {"lr": 0.03})
    #: hyperparameters set by hand after two steps (test_hyperparameters_changed_between_steps)
    retune: dict = dataclasses.field(default_factory=lambda: {"lr": 0.02})
    #: a hypothesis strategy of valid constructor arguments (test_optim_properties), or None
    random_kwargs: Optional[st.SearchStrategy] = None

    def __post_init__(self):
        ids = [s["id"] for s in self.configs]
        unknown = set(self.uses) - set(ROLES)
        missing = {i for ids_ in self.uses.values() for i in ids_} - set(ids)
        if unknown or missing or len(set(ids)) != len(ids):
            raise ValueError(f"{self.name}: unknown roles {sorted(unknown)}, unknown configurations {sorted(missing)}, "
                             f"or a configuration id used twice")

    @property
    def fused(self):
        return getattr(fo, self.name)

    @property
    def torch(self):
        return getattr(torch.optim, self.name)

    @property
    def all_configs(self):
        return [Config(f"{self.name}-{s['id']}", self.fused, self.torch, dict(s["kwargs"]), s["groups"], s["float64"],
                       s["parity"]) for s in self.configs]

    def config(self, id):
        for config in self.all_configs:
            if config.id == f"{self.name}-{id}":
                return config
        raise KeyError(f"{self.name} has no configuration {id!r}")

    def configs_for(self, test):
        if test not in ROLES:
            raise KeyError(f"no role {test!r} in optim_db.ROLES")
        ids = self.uses.get(test)
        return [self.config(i) for i in ids] if ids else self.all_configs[:1]


def spec(id, groups=(), float64=True, parity=True, **kwargs):
    """One configuration of an OptimizerInfo (see Config for the fields)."""
    return dict(id=id, kwargs=kwargs, groups=tuple(groups), float64=float64, parity=parity)


def _non_leaf(ps):
    return [ps[0] * 2]


def _two_groups(ps):
    return [{"params": ps}, {"params": ps[:1]}]


def _mixed_devices(ps):
    return [ps[0], torch.empty(4, device="meta", requires_grad=True)]


#: constructor calls every optimizer rejects
COMMON_BAD_INPUTS = (
    BadInput("empty-parameter-list", {}, ValueError, "empty parameter list", params=lambda ps: []),
    BadInput("parameter-in-two-groups", {}, ValueError, "more than one parameter group", params=_two_groups),
    BadInput("non-leaf", {}, ValueError, "non-leaf", params=_non_leaf),
    BadInput("unknown-backend", {"backend": "cuda-graphs"}, ValueError,
             r"'cuda-graphs'.*'auto', 'reference', 'cpp', 'triton'", torch_too=False),
    BadInput("mixed-devices-in-group", {}, ValueError, "one device", torch_too=False, params=_mixed_devices),
)

_ADAM_BAD_INPUTS = (
    BadInput("negative-lr", {"lr": -1e-3}, ValueError, "Invalid learning rate"),
    BadInput("negative-eps", {"eps": -1e-8}, ValueError, "Invalid epsilon"),
    BadInput("beta1-one", {"betas": (1.0, 0.999)}, ValueError, "beta parameter at index 0"),
    BadInput("beta2-negative", {"betas": (0.9, -0.1)}, ValueError, "beta parameter at index 1"),
    BadInput("beta2-one", {"betas": (0.9, 1.0)}, ValueError, "beta parameter at index 1"),
    BadInput("negative-weight-decay", {"weight_decay": -0.1}, ValueError, "Invalid weight_decay"),
    BadInput("two-element-lr", {"lr": torch.tensor([0.1, 0.2])}, ValueError, "1-element"),
)

_unit = st.floats(0.0, 0.999)


@st.composite
def _adam_kwargs(draw):
    return dict(lr=draw(st.floats(1e-4, 0.5)), betas=(draw(_unit), draw(_unit)), eps=draw(st.floats(1e-10, 1e-2)),
                weight_decay=draw(st.floats(0.0, 0.5)), amsgrad=draw(st.booleans()), maximize=draw(st.booleans()))


@st.composite
def _sgd_kwargs(draw):
    momentum = draw(st.sampled_from([0.0, draw(st.floats(0.0, 0.99))]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(lr=draw(st.floats(1e-4, 0.5)), momentum=momentum,
                dampening=0.0 if nesterov else draw(st.floats(0.0, 0.9)), weight_decay=draw(st.floats(0.0, 0.5)),
                nesterov=nesterov, maximize=draw(st.booleans()))


SGD = OptimizerInfo(
    name="SGD",
    configs=(
        spec("plain", lr=0.05),
        spec("momentum", lr=0.05, momentum=0.9),
        spec("dampening", lr=0.05, momentum=0.9, dampening=0.3),
        spec("nesterov", lr=0.05, momentum=0.8, nesterov=True),
        spec("weight_decay", lr=0.05, momentum=0.9, weight_decay=0.05),
        spec("maximize", lr=0.05, momentum=0.5, weight_decay=0.01, maximize=True),
        spec("nesterov_wd_maximize", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
        spec("groups", lr=0.05, momentum=0.9,
             groups=({}, {"lr": 0.1, "momentum": 0.0}, {"weight_decay": 0.2, "nesterov": True})),
        spec("fast", lr=0.1, momentum=0.0, parity=False),
        spec("fast_momentum", lr=0.1, momentum=0.9, parity=False),
        spec("amp", lr=0.05, momentum=0.9, dampening=0.1, parity=False),
        spec("clip", lr=0.05, momentum=0.9, nesterov=True, parity=False),
        spec("training", lr=0.1, momentum=0.9, nesterov=True, parity=False),
    ),
    bad_inputs=(
        BadInput("negative-lr", {"lr": -0.1}, ValueError, "Invalid learning rate"),
        BadInput("negative-momentum", {"momentum": -0.5}, ValueError, "Invalid momentum"),
        BadInput("negative-weight-decay", {"weight_decay": -1.0}, ValueError, "Invalid weight_decay"),
        BadInput("nesterov-without-momentum", {"nesterov": True}, ValueError, "Nesterov"),
        BadInput("nesterov-with-dampening", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError,
                 "Nesterov"),
    ),
    supports_sparse=True,
    has_steps=False,
    uses={
        "complex": ("nesterov",),
        "round_trip": ("nesterov", "groups"),
        "schedulers": ("nesterov",),
        "low_precision": ("nesterov_wd_maximize", "dampening"),
        "without_extension": ("nesterov",),
        "closure": ("fast_momentum",),
        "skipped_first_step": ("fast_momentum",),
        "retune": ("fast",),
        "state": ("momentum",),
        "amp": ("amp",),
        "clip": ("clip",),
        "training": ("training",),
    },
    late_group={"lr": 0.03, "momentum": 0.5},
    retune={"momentum": 0.9, "lr": 0.02},  # starts momentum buffers from here
    random_kwargs=_sgd_kwargs(),
)

ADAM = OptimizerInfo(
    name="Adam",
    configs=(
        spec("default", lr=0.01),
        spec("weight_decay", lr=0.01, weight_decay=0.1),
        spec("amsgrad", lr=0.01, amsgrad=True),
        spec("maximize", lr=0.01, maximize=True),
        spec("amsgrad_wd_maximize", lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True),
        spec("betas", lr=0.01, betas=(0.5, 0.9), eps=1e-6),
        spec("small_beta1", lr=0.01, betas=(0.3, 0.99)),
        spec("decoupled", lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        # Not at float64: with a float32 tensor lr, torch computes lr / bias_correction in float32,
        # which shows at float64 tolerances (4e-10); fused_optim computes it in float64.
        spec("tensor_lr", lr=torch.tensor(0.02), float64=False),
        spec("groups", lr=0.01, groups=({}, {"lr": 0.05, "amsgrad": True}, {"weight_decay": 0.1, "betas": (0.8, 0.95)})),
        spec("clip", lr=0.01, weight_decay=0.1, amsgrad=True, parity=False),
        spec("training", lr=3e-3, parity=False),
    ),
    bad_inputs=_ADAM_BAD_INPUTS,
    uses={
        "complex": ("amsgrad",),
        "round_trip": ("amsgrad", "groups", "decoupled"),
        "schedulers": ("default",),
        "low_precision": ("amsgrad_wd_maximize", "default"),
        "without_extension": ("amsgrad",),
        "state": ("amsgrad",),
        "amp": ("amsgrad",),
        "clip": ("clip",),
        "training": ("training",),
    },
    late_group={"lr": 0.03, "amsgrad": True},
    retune={"lr": 0.02, "betas": (0.8, 0.9)},
    random_kwargs=_adam_kwargs(),
)

ADAMW = OptimizerInfo(
    name="AdamW",
    configs=(
        spec("default", lr=0.01),
        spec("no_decay", lr=0.01, weight_decay=0.0),
        spec("amsgrad", lr=0.01, amsgrad=True, weight_decay=0.1),
        spec("maximize", lr=0.01, maximize=True),
        spec("groups", lr=0.01, groups=({"weight_decay": 0.0}, {"lr": 0.003, "weight_decay": 0.3}, {"amsgrad": True})),
        spec("amp", lr=0.01, weight_decay=0.1, parity=False),
        spec("training", lr=3e-3, weight_decay=0.05, amsgrad=True, parity=False),
    ),
    bad_inputs=_ADAM_BAD_INPUTS,
    uses={
        "complex": ("default",),
        "round_trip": ("amsgrad",),
        "schedulers": ("groups",),
        "low_precision": ("default", "amsgrad"),
        "without_extension": ("groups",),
        "state": ("amsgrad",),
        "amp": ("amp",),
        "clip": ("maximize",),
        "training": ("training",),
    },
    late_group={"lr": 0.03, "amsgrad": True},
    retune={"lr": 0.02, "weight_decay": 0.2},
    random_kwargs=_adam_kwargs(),
)

@st.composite
def _rmsprop_kwargs(draw):
    return dict(lr=draw(st.floats(1e-4, 0.1)), alpha=draw(_unit), eps=draw(st.floats(1e-10, 1e-2)),
                weight_decay=draw(st.floats(0.0, 0.5)), momentum=draw(st.sampled_from([0.0, draw(_unit)])),
                centered=draw(st.booleans()), maximize=draw(st.booleans()))


@st.composite
def _adagrad_kwargs(draw):
    return dict(lr=draw(st.floats(1e-4, 0.5)), lr_decay=draw(st.floats(0.0, 0.1)),
                weight_decay=draw(st.floats(0.0, 0.5)), initial_accumulator_value=draw(st.floats(0.0, 1.0)),
                eps=draw(st.floats(1e-10, 1e-2)), maximize=draw(st.booleans()))


RMSPROP = OptimizerInfo(
    name="RMSprop",
    configs=(
        spec("default", lr=0.01),
        spec("alpha_eps", lr=0.01, alpha=0.9, eps=1e-6),
        spec("weight_decay", lr=0.01, weight_decay=0.1),
        spec("momentum", lr=0.01, momentum=0.9),
        spec("centered", lr=0.01, centered=True),
        spec("maximize", lr=0.01, momentum=0.5, weight_decay=0.05, maximize=True),
        spec("centered_momentum_wd_maximize", lr=0.01, centered=True, momentum=0.5, weight_decay=0.05, maximize=True),
        spec("tensor_lr", lr=torch.tensor(0.02), float64=False),
        spec("groups", lr=0.01, groups=({}, {"lr": 0.05, "momentum": 0.9}, {"centered": True, "alpha": 0.95})),
    ),
    bad_inputs=(
        BadInput("negative-lr", {"lr": -0.1}, ValueError, "Invalid learning rate"),
        BadInput("negative-eps", {"eps": -1e-8}, ValueError, "Invalid epsilon"),
        BadInput("negative-momentum", {"momentum": -0.5}, ValueError, "Invalid momentum"),
        BadInput("negative-weight-decay", {"weight_decay": -1.0}, ValueError, "Invalid weight_decay"),
        BadInput("negative-alpha", {"alpha": -0.1}, ValueError, "Invalid alpha"),
    ),
    uses={
        "complex": ("centered_momentum_wd_maximize",),
        "round_trip": ("centered_momentum_wd_maximize", "groups"),
        "schedulers": ("momentum",),
        "low_precision": ("default", "centered_momentum_wd_maximize"),
        "without_extension": ("centered_momentum_wd_maximize",),
        "state": ("centered_momentum_wd_maximize",),
        "amp": ("centered_momentum_wd_maximize",),
        "clip": ("momentum",),
        "training": ("default",),
    },
    retune={"lr": 0.02, "alpha": 0.9},
    random_kwargs=_rmsprop_kwargs(),
)

ADAGRAD = OptimizerInfo(
    name="Adagrad",
    configs=(
        spec("default", lr=0.05),
        spec("weight_decay", lr=0.05, weight_decay=0.1),
        spec("maximize", lr=0.05, weight_decay=0.1, maximize=True),
        spec("initial_accumulator_value", lr=0.05, initial_accumulator_value=0.1, eps=1e-6),
        spec("lr_decay", lr=0.1, lr_decay=0.5, weight_decay=0.1),
        spec("tensor_lr", lr=torch.tensor(0.02), float64=False),
        spec("groups", lr=0.05, groups=({}, {"lr": 0.1, "lr_decay": 0.1}, {"weight_decay": 0.2})),
    ),
    bad_inputs=(
        BadInput("negative-lr", {"lr": -0.1}, ValueError, "Invalid learning rate"),
        BadInput("negative-lr-decay", {"lr_decay": -0.5}, ValueError, "Invalid lr_decay"),
        BadInput("negative-weight-decay", {"weight_decay": -1.0}, ValueError, "Invalid weight_decay"),
        BadInput("negative-initial-accumulator", {"initial_accumulator_value": -1.0}, ValueError,
                 "Invalid initial_accumulator_value"),
        BadInput("negative-eps", {"eps": -1e-8}, ValueError, "Invalid epsilon"),
    ),
    supports_sparse=True,
    state_in_constructor=True,
    uses={
        "complex": ("lr_decay",),
        "round_trip": ("lr_decay", "groups"),
        "low_precision": ("default", "maximize"),
        "without_extension": ("lr_decay",),
        "state": ("initial_accumulator_value",),
        "amp": ("weight_decay",),
        "clip": ("lr_decay",),
        "training": ("default",),
    },
    retune={"lr": 0.02, "lr_decay": 0.01},
    random_kwargs=_adagrad_kwargs(),
)

#: every optimizer the tests know; those fused_optim does not have are left out of OPTIMIZERS
KNOWN = [SGD, ADAM, ADAMW, RMSPROP, ADAGRAD]
#: entries whose class exists but that are not run yet
NOT_YET = set()
OPTIMIZERS = [info for info in KNOWN if hasattr(fo, info.name) and info.name not in NOT_YET]
#: the parity table: every optimizer's configurations, less those only focused tests run
CONFIGS = [config for info in OPTIMIZERS for config in info.all_configs if config.parity]


def configs_for(test, infos=OPTIMIZERS):
    """The configurations ``test`` runs, over every optimizer (see OptimizerInfo.uses)."""
    return [config for info in infos for config in info.configs_for(test)]


def config_id(config):
    return config.id


def info_id(info):
    return info.name


# ----- shared helpers ----------------------------------------------------------------------

def _is_dense(t):
    """Its elements fill one block of memory (in some order): a dense view such as a transpose."""
    if t.numel() <= 1:
        return True
    pairs = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in pairs:
        if stride != expected:
            return False
        expected *= size
    return True


def make_params(device, dtype=torch.float32, seed=0):
    """Parameters of awkward shapes and layouts: 0-dim, 1, 7, 1023, 4097, 3-D, empty,
    transposed (dense, non-contiguous), strided (not dense), and enough elements in all (over
    16K) that the C++ backend splits the step across threads, at a boundary inside a tensor."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    tensors = [
        rand(()),
        rand(1),
        rand(7),
        rand(1023),
        rand(4097),
        rand(3, 5, 7),
        rand(0),
        rand(10, 8).t(),  # dense, transposed
        rand(6, 10)[:, ::2],  # not dense
        rand(2, 0, 3),
        rand(33, 31),
        rand(20011),
    ]
    return [t.to(device).detach().requires_grad_() for t in tensors]


def clone_params(params):
    """Copies with the same values and strides, as fresh leaves."""
    out = []
    for p in params:
        if _is_dense(p):
            q = torch.empty_strided(p.size(), p.stride(), dtype=p.dtype, device=p.device)
        else:  # the strided parameter: the same kind of view into a wider buffer
            q = torch.empty(p.shape[0], p.shape[1] * 2, dtype=p.dtype, device=p.device)[:, ::2]
        q.copy_(p.detach())
        out.append(q.detach().requires_grad_())
    return out


def set_grads(param_lists, step, seed=1):
    """The same gradients on every list of parameters; some are None (a different set each step),
    some are laid out differently from their parameter."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    for i, p in enumerate(param_lists[0]):
        none = (step + i) % 4 == 3
        if none:
            values = None
        elif p.dim() == 2 and i % 2 == 0:
            values = torch.randn(p.shape[1], p.shape[0], generator=g, dtype=torch.float64).t()  # transposed grad
        else:
            values = torch.randn(p.shape, generator=g, dtype=torch.float64)
        for params in param_lists:
            q = params[i]
            if values is None:
                q.grad = None
            else:
                grad = torch.empty_strided(values.size(), values.stride(), dtype=q.dtype, device=q.device)
                grad.copy_(values)
                q.grad = grad


#: float32 tolerances against torch.optim where they are not (1e-5, 1e-6). torch's CPU addcmul_
#: rounds once (a fused multiply-add): RMSprop's square_avg and Adagrad's sum are one rounding
#: closer to exact there than in fused_optim's kernels, which round the product and the sum; both
#: then divide by the square root of that sum, which on a few elements of small sums turns the
#: last-bit difference into a few 1e-6 after some steps.
TORCH_TOLERANCE = {"RMSprop": (3e-4, 1e-4), "Adagrad": (3e-4, 1e-4)}


def assert_same_state(fused_opt, torch_opt, fused_params, torch_params, rtol=None, atol=None, state_tolerance=None):
    """Parameters and EVERY state tensor agree, with the same state keys (the state within
    ``state_tolerance`` = (rtol, atol) when given, else as the parameters). Without rtol and atol:
    the optimizer's float32 tolerance against torch (TORCH_TOLERANCE, else 1e-5 and 1e-6)."""
    if rtol is None and atol is None:
        rtol, atol = TORCH_TOLERANCE.get(type(fused_opt).__name__, (1e-5, 1e-6))
    for i, (p, q) in enumerate(zip(fused_params, torch_params)):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {i}: {m}")
    rtol, atol = state_tolerance or (rtol, atol)
    fused_state = fused_opt.state_dict()["state"]
    torch_state = torch_opt.state_dict()["state"]
    assert fused_state.keys() == torch_state.keys(), "parameters with state differ"
    for index, expected in torch_state.items():
        actual = fused_state[index]
        assert actual.keys() == expected.keys(), f"state keys of param {index}: {actual.keys()} vs {expected.keys()}"
        for key, value in expected.items():
            got = actual[key]
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got.to(value.device), value.to(got.dtype), rtol=rtol, atol=atol,
                                           msg=lambda m: f"state[{index}][{key!r}]: {m}")
            else:
                assert got == value
