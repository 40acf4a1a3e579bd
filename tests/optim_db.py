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


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    """What the tests know about one optimizer (see the module docstring)."""

    #: the class name in fused_optim and torch.optim
    name: str
    #: (id, kwargs) or (id, kwargs, groups) or Config-like tuples: see _configs
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
    #: which configurations (ids without the "<name>-" prefix) each focused test runs; a test
    #: not named here runs the first configuration
    uses: dict = dataclasses.field(default_factory=dict)
    #: the overrides of a group added after three steps (test_add_param_group_mid_training)
    late_group: dict = dataclasses.field(default_factory=lambda: {"lr": 0.03})
    #: hyperparameters set by hand after two steps (test_hyperparameters_changed_between_steps)
    retune: dict = dataclasses.field(default_factory=lambda: {"lr": 0.02})
    #: a hypothesis strategy of valid constructor arguments (test_optim_properties), or None
    random_kwargs: Optional[st.SearchStrategy] = None

    @property
    def fused(self):
        return getattr(fo, self.name)

    @property
    def torch(self):
        return getattr(torch.optim, self.name)

    @property
    def all_configs(self):
        out = []
        for entry in self.configs:
            id, kwargs, *rest = entry
            groups = rest[0] if rest else ()
            float64 = rest[1] if len(rest) > 1 else True
            out.append(Config(f"{self.name}-{id}", self.fused, self.torch, dict(kwargs), tuple(groups), float64))
        return out

    def config(self, id):
        for config in self.all_configs:
            if config.id == f"{self.name}-{id}":
                return config
        raise KeyError(f"{self.name} has no configuration {id!r}")

    def configs_for(self, test):
        ids = self.uses.get(test)
        return [self.config(i) for i in ids] if ids else self.all_configs[:1]


def _params(ps):
    return ps


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
    BadInput("differentiable", {"differentiable": True}, RuntimeError, "differentiable", torch_too=False),
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
        ("plain", dict(lr=0.05)),
        ("momentum", dict(lr=0.05, momentum=0.9)),
        ("dampening", dict(lr=0.05, momentum=0.9, dampening=0.3)),
        ("nesterov", dict(lr=0.05, momentum=0.8, nesterov=True)),
        ("weight_decay", dict(lr=0.05, momentum=0.9, weight_decay=0.05)),
        ("maximize", dict(lr=0.05, momentum=0.5, weight_decay=0.01, maximize=True)),
        ("nesterov_wd_maximize", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True)),
        ("groups", dict(lr=0.05, momentum=0.9),
         ({}, {"lr": 0.1, "momentum": 0.0}, {"weight_decay": 0.2, "nesterov": True})),
        ("fast", dict(lr=0.1, momentum=0.0)),
        ("fast_momentum", dict(lr=0.1, momentum=0.9)),
        ("amp", dict(lr=0.05, momentum=0.9, dampening=0.1)),
        ("clip", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("training", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ),
    bad_inputs=(
        BadInput("negative-lr", {"lr": -0.1}, ValueError, "Invalid learning rate"),
        BadInput("negative-momentum", {"momentum": -0.5}, ValueError, "Invalid momentum"),
        BadInput("negative-weight-decay", {"weight_decay": -1.0}, ValueError, "Invalid weight_decay"),
        BadInput("nesterov-without-momentum", {"nesterov": True}, ValueError, "Nesterov"),
        BadInput("nesterov-with-dampening", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError,
                 "Nesterov"),
    ),
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
        ("default", dict(lr=0.01)),
        ("weight_decay", dict(lr=0.01, weight_decay=0.1)),
        ("amsgrad", dict(lr=0.01, amsgrad=True)),
        ("maximize", dict(lr=0.01, maximize=True)),
        ("amsgrad_wd_maximize", dict(lr=0.01, amsgrad=True, weight_decay=0.05, maximize=True)),
        ("betas", dict(lr=0.01, betas=(0.5, 0.9), eps=1e-6)),
        ("small_beta1", dict(lr=0.01, betas=(0.3, 0.99))),
        ("decoupled", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
        # Not at float64: with a float32 tensor lr, torch computes lr / bias_correction in float32,
        # which shows at float64 tolerances (4e-10); fused_optim computes it in float64.
        ("tensor_lr", dict(lr=torch.tensor(0.02)), (), False),
        ("groups", dict(lr=0.01), ({}, {"lr": 0.05, "amsgrad": True}, {"weight_decay": 0.1, "betas": (0.8, 0.95)})),
        ("clip", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
        ("training", dict(lr=3e-3)),
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
        ("default", dict(lr=0.01)),
        ("no_decay", dict(lr=0.01, weight_decay=0.0)),
        ("amsgrad", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
        ("maximize", dict(lr=0.01, maximize=True)),
        ("groups", dict(lr=0.01), ({"weight_decay": 0.0}, {"lr": 0.003, "weight_decay": 0.3}, {"amsgrad": True})),
        ("amp", dict(lr=0.01, weight_decay=0.1)),
        ("training", dict(lr=3e-3, weight_decay=0.05, amsgrad=True)),
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

OPTIMIZERS = [SGD, ADAM, ADAMW]
CONFIGS = [config for info in OPTIMIZERS for config in info.all_configs]


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


def assert_same_state(fused_opt, torch_opt, fused_params, torch_params, rtol=1e-5, atol=1e-6, state_tolerance=None):
    """Parameters and EVERY state tensor agree, with the same state keys (the state within
    ``state_tolerance`` = (rtol, atol) when given, else as the parameters)."""
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
