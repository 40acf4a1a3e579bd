"""Bad input: the exception torch raises (or a clear one where torch has none), raised before
anything is changed."""

import copy

import pytest
import torch

import fused_optim as fo
from fused_optim import _backend
from optim_db import COMMON_BAD_INPUTS, OPTIMIZERS, info_id


def params(n=3, device="cpu"):
    return [torch.randn(4, device=device, requires_grad=True) for _ in range(n)]


BAD_INPUTS = [(info, case) for info in OPTIMIZERS for case in info.bad_inputs + COMMON_BAD_INPUTS]


@pytest.mark.parametrize("info,case", BAD_INPUTS, ids=[f"{i.name}-{c.id}" for i, c in BAD_INPUTS])
def test_constructor_rejects(info, case):
    def call(cls):
        ps = params()
        return cls(case.params(ps) if case.params else ps, **case.kwargs)

    with pytest.raises(case.error, match=case.match):
        call(info.fused)
    if case.torch_too:  # the same exception type as torch
        with pytest.raises(case.error):
            call(info.torch)


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


def stepped(info, backend, groups=False):
    """An optimizer that has taken two good steps (so it has state to protect)."""
    config = info.configs_for("state")[0]
    ps = params(4)
    arg = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}] if groups else ps
    opt = config.fused(arg, backend=backend, **config.kwargs)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt, ps


@pytest.mark.parametrize("info", [i for i in OPTIMIZERS if not i.supports_sparse], ids=info_id)
def test_sparse_gradient_rejected_before_any_change(info, backend_device):
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("sparse CPU gradients")
    opt, ps = stepped(info, backend)
    for p in ps:
        p.grad = torch.randn_like(p)
    ps[2].grad = torch.randn(4).to_sparse()
    before = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match=f"{info.name} does not support sparse gradients"):
        opt.step()
    assert_unchanged(opt, ps, before)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_bad_gradient_in_a_later_group_changes_nothing(info, backend_device):
    """All groups are checked before any group is stepped."""
    backend, _ = backend_device
    opt, ps = stepped(info, backend, groups=True)
    for p in ps:
        p.grad = torch.randn_like(p)
    ps[3].grad.data = torch.randn(5)  # a gradient whose shape no longer matches its parameter
    before = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match="shape"):
        opt.step()
    assert_unchanged(opt, ps, before)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_parameter_replaced_after_first_step(info, backend_device):
    backend, _ = backend_device
    opt, ps = stepped(info, backend)
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
