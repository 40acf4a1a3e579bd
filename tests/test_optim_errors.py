"""Bad input: the exception torch raises (or a clear one where torch has none), raised before
anything is changed."""

import copy

import pytest
import torch

import fused_optim as fo
from fused_optim import _backend


def params(n=3, device="cpu"):
    return [torch.randn(4, device=device, requires_grad=True) for _ in range(n)]


# (id, build the optimizer, exception, message pattern, torch's optimizer for the same call or None)
CONSTRUCTOR_ERRORS = [
    ("sgd-negative-lr", lambda ps: fo.SGD(ps, lr=-0.1), ValueError, "Invalid learning rate",
     lambda ps: torch.optim.SGD(ps, lr=-0.1)),
    ("sgd-negative-momentum", lambda ps: fo.SGD(ps, momentum=-0.5), ValueError, "Invalid momentum",
     lambda ps: torch.optim.SGD(ps, momentum=-0.5)),
    ("sgd-negative-weight-decay", lambda ps: fo.SGD(ps, weight_decay=-1.0), ValueError, "Invalid weight_decay",
     lambda ps: torch.optim.SGD(ps, weight_decay=-1.0)),
    ("sgd-nesterov-without-momentum", lambda ps: fo.SGD(ps, nesterov=True), ValueError, "Nesterov",
     lambda ps: torch.optim.SGD(ps, nesterov=True)),
    ("sgd-nesterov-with-dampening", lambda ps: fo.SGD(ps, momentum=0.9, dampening=0.1, nesterov=True), ValueError,
     "Nesterov", lambda ps: torch.optim.SGD(ps, momentum=0.9, dampening=0.1, nesterov=True)),
    ("adam-negative-lr", lambda ps: fo.Adam(ps, lr=-1e-3), ValueError, "Invalid learning rate",
     lambda ps: torch.optim.Adam(ps, lr=-1e-3)),
    ("adam-negative-eps", lambda ps: fo.Adam(ps, eps=-1e-8), ValueError, "Invalid epsilon",
     lambda ps: torch.optim.Adam(ps, eps=-1e-8)),
    ("adam-beta1-one", lambda ps: fo.Adam(ps, betas=(1.0, 0.999)), ValueError, "beta parameter at index 0",
     lambda ps: torch.optim.Adam(ps, betas=(1.0, 0.999))),
    ("adam-beta2-negative", lambda ps: fo.Adam(ps, betas=(0.9, -0.1)), ValueError, "beta parameter at index 1",
     lambda ps: torch.optim.Adam(ps, betas=(0.9, -0.1))),
    ("adamw-beta2-one", lambda ps: fo.AdamW(ps, betas=(0.9, 1.0)), ValueError, "beta parameter at index 1",
     lambda ps: torch.optim.AdamW(ps, betas=(0.9, 1.0))),
    ("adamw-negative-weight-decay", lambda ps: fo.AdamW(ps, weight_decay=-0.1), ValueError, "Invalid weight_decay",
     lambda ps: torch.optim.AdamW(ps, weight_decay=-0.1)),
    ("adam-two-element-lr", lambda ps: fo.Adam(ps, lr=torch.tensor([0.1, 0.2])), ValueError, "1-element",
     lambda ps: torch.optim.Adam(ps, lr=torch.tensor([0.1, 0.2]))),
    ("empty-parameter-list", lambda ps: fo.Adam([]), ValueError, "empty parameter list",
     lambda ps: torch.optim.Adam([])),
    ("parameter-in-two-groups", lambda ps: fo.SGD([{"params": ps}, {"params": ps[:1]}], lr=0.1), ValueError,
     "more than one parameter group", lambda ps: torch.optim.SGD([{"params": ps}, {"params": ps[:1]}], lr=0.1)),
    ("non-leaf", lambda ps: fo.Adam([ps[0] * 2]), ValueError, "non-leaf", lambda ps: torch.optim.Adam([ps[0] * 2])),
    ("unknown-backend", lambda ps: fo.Adam(ps, backend="cuda-graphs"), ValueError,
     r"'cuda-graphs'.*'auto', 'reference', 'cpp', 'triton'", None),
    ("mixed-devices-in-group", lambda ps: fo.SGD([ps[0], torch.empty(4, device="meta", requires_grad=True)], lr=0.1),
     ValueError, "one device", None),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_ERRORS, ids=lambda c: c[0])
def test_constructor_rejects(case):
    _, build, error, pattern, torch_build = case
    with pytest.raises(error, match=pattern):
        build(params())
    if torch_build is not None:  # the same exception type as torch
        with pytest.raises(error):
            torch_build(params())


def test_unknown_backend_from_environment(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=r"FUSED_OPTIM_BACKEND 'fastest'.*choose one of"):
        fo.SGD(params(), lr=0.1)


def test_environment_chooses_backend(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert fo.SGD(params(), lr=0.1).backend == "reference"
    assert fo.SGD(params(), lr=0.1, backend="cpp").backend == "cpp"  # an explicit choice wins


def snapshot(opt, ps):
    return [p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict()["state"])


def assert_unchanged(opt, ps, before):
    before_params, before_state = before
    for p, q in zip(ps, before_params):
        assert torch.equal(p.detach(), q)
    state = opt.state_dict()["state"]
    assert state.keys() == before_state.keys()
    for index, entries in before_state.items():
        for key, value in entries.items():
            assert torch.equal(state[index][key], value), (index, key)


def stepped(optimizer, backend, **kwargs):
    """An optimizer that has taken two good steps (so it has state to protect)."""
    ps = params(4)
    opt = optimizer(ps, lr=0.1, backend=backend, **kwargs)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt, ps


OPTIMIZERS = [(fo.SGD, {"momentum": 0.9}), (fo.Adam, {"amsgrad": True}), (fo.AdamW, {})]


@pytest.mark.parametrize("optimizer,kwargs", [(o, k) for o, k in OPTIMIZERS if o is not fo.SGD],
                         ids=lambda o: getattr(o, "__name__", ""))
def test_sparse_gradient_rejected_before_any_change(optimizer, kwargs, backend_device):
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("sparse CPU gradients")
    opt, ps = stepped(optimizer, backend, **kwargs)
    for p in ps:
        p.grad = torch.randn_like(p)
    ps[2].grad = torch.randn(4).to_sparse()
    before = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match=f"{optimizer.__name__} does not support sparse gradients"):
        opt.step()
    assert_unchanged(opt, ps, before)


@pytest.mark.parametrize("optimizer,kwargs", OPTIMIZERS, ids=lambda o: getattr(o, "__name__", ""))
def test_bad_gradient_in_a_later_group_changes_nothing(optimizer, kwargs, backend_device):
    """All groups are checked before any group is stepped."""
    backend, _ = backend_device
    ps = params(4)
    opt = optimizer([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}], lr=0.1, backend=backend, **kwargs)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    for p in ps:
        p.grad = torch.randn_like(p)
    ps[3].grad.data = torch.randn(5)  # a gradient whose shape no longer matches its parameter
    before = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert_unchanged(opt, ps, before)


def test_parameter_replaced_after_first_step(backend_device):
    backend, _ = backend_device
    opt, ps = stepped(fo.Adam, backend)
    ps[1].data = torch.zeros(6)
    for p in ps:
        p.grad = torch.randn_like(p)
    before = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match="replaced after its first step"):
        opt.step()
    assert_unchanged(opt, ps, before)


def test_explicit_backend_that_cannot_run_these_tensors():
    p = torch.empty(4, device="meta", requires_grad=True)
    p.grad = torch.empty(4, device="meta")
    with pytest.raises(RuntimeError, match="cannot run meta tensors"):
        fo.SGD([p], lr=0.1, backend="cpp").step()


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ps = params(1)
    ps[0].grad = torch.ones(4)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fo.SGD(ps, lr=0.1, backend="triton").step()


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(_backend._cpp, "unavailable_reason", lambda: "no compiler on this machine")
    monkeypatch.setattr(_backend, "_warned", set())
    ps = params(2)
    expected = [p.detach().clone().requires_grad_() for p in ps]
    with pytest.warns(RuntimeWarning, match="reference backend.*no compiler on this machine"):
        opt = fo.Adam(ps, lr=0.1)
        for p in ps:
            p.grad = torch.ones(4)
        opt.step()
    torch_opt = torch.optim.Adam(expected, lr=0.1, foreach=False)
    for q in expected:
        q.grad = torch.ones(4)
    torch_opt.step()
    for p, q in zip(ps, expected):
        torch.testing.assert_close(p, q)
    info = fo.available_backends()["cpp"]
    assert not info.available and "no compiler" in info.reason


def test_available_backends_reports_each():
    info = fo.available_backends()
    assert set(info) == {"reference", "cpp", "triton"}
    assert info["reference"].available
    for entry in info.values():
        assert entry.reason
