"""Every optimizer configuration, on every backend, against torch.optim over 10 steps."""

import pytest
import torch

import fused_optim as fo
from fused_optim.ops._python_book import PythonBook
from optim_cases import CONFIGS, assert_same_state, clone_params, make_params, set_grads

STEPS = 10


def run_pair(config, backend, device, dtype=torch.float32, steps=STEPS):
    params = make_params(device, dtype)
    expected = clone_params(params)
    fused_opt = config.fused(config.param_groups(params), backend=backend, **config.kwargs)
    torch_opt = config.torch(config.param_groups(expected), foreach=False, **config.kwargs)
    for step in range(steps):
        set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
    return fused_opt, torch_opt, params, expected


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.id)
def test_matches_torch(config, backend_device):
    backend, device = backend_device
    fused_opt, torch_opt, params, expected = run_pair(config, backend, device)
    assert_same_state(fused_opt, torch_opt, params, expected)


# Not tensor_lr: with a float32 tensor lr, torch computes lr / bias_correction in float32, which
# shows at float64 tolerances (4e-10); fused_optim computes it in float64.
@pytest.mark.parametrize("config", [c for c in CONFIGS if "groups" not in c.id and "tensor_lr" not in c.id],
                         ids=lambda c: c.id)
def test_float64_matches_torch(config, backend_device):
    backend, device = backend_device
    fused_opt, torch_opt, params, expected = run_pair(config, backend, device, torch.float64, steps=4)
    assert_same_state(fused_opt, torch_opt, params, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.id in ("SGD-nesterov", "Adam-amsgrad", "AdamW-default")],
                         ids=lambda c: c.id)
def test_complex_matches_torch(config, backend_device):
    """Complex parameters are stepped on their real view, as torch does."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(3)
    shapes = [(5,), (4, 3), ()]
    params = [torch.randn(s, dtype=torch.complex64, generator=g).to(device).requires_grad_() for s in shapes]
    params.append(torch.randn(9, generator=g).to(device).requires_grad_())  # real beside complex
    expected = [p.detach().clone().requires_grad_() for p in params]
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    torch_opt = config.torch(expected, foreach=False, **config.kwargs)
    for step in range(5):
        for p, q in zip(params, expected):
            grad = torch.randn(p.shape, dtype=p.dtype, generator=g).to(device)
            p.grad, q.grad = grad.clone(), grad.clone()
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params, expected)


def test_mixed_dtypes_in_one_group(backend_device):
    """A group holding float32, float64 and bfloat16 parameters: one plan per dtype, each right."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(4)
    params = [
        torch.randn(17, generator=g).to(device).requires_grad_(),
        torch.randn(5, 3, dtype=torch.float64, generator=g).to(device).requires_grad_(),
        torch.randn(33, generator=g).to(device, torch.bfloat16).requires_grad_(),
    ]
    fused_opt = fo.AdamW(params, lr=0.01, backend=backend)
    reference = [p.detach().clone().requires_grad_() for p in params]
    reference_opt = fo.AdamW(reference, lr=0.01, backend="reference")
    for _ in range(3):
        for p, q in zip(params, reference):
            grad = torch.randn(p.shape, generator=g).to(device, p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        fused_opt.step()
        reference_opt.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_closure_and_zero_grad(backend_device):
    backend, device = backend_device
    w = torch.randn(4, device=device, requires_grad=True)
    x = torch.randn(8, 4, device=device)
    opt = fo.SGD([w], lr=0.1, momentum=0.9, backend=backend)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (x @ w).square().mean()
        loss.backward()
        calls.append(torch.is_grad_enabled())
        return loss

    first = opt.step(closure)
    second = opt.step(closure)
    assert calls == [True, True]
    assert second < first
    opt.zero_grad()
    assert w.grad is None


def test_add_param_group_mid_training(backend_device):
    backend, device = backend_device
    params = make_params(device)[:5]
    expected = clone_params(params)
    late, late_expected = clone_params(make_params(device, seed=9)[5:8]), None
    late_expected = clone_params(late)
    fused_opt = fo.Adam(params, lr=0.01, backend=backend)
    torch_opt = torch.optim.Adam(expected, lr=0.01, foreach=False)
    for step in range(6):
        if step == 3:
            fused_opt.add_param_group({"params": late, "lr": 0.03, "amsgrad": True})
            torch_opt.add_param_group({"params": late_expected, "lr": 0.03, "amsgrad": True})
        if step >= 3:
            set_grads([params + late, expected + late_expected], step)
        else:
            set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params + late, expected + late_expected)


def test_hyperparameters_changed_between_steps(backend_device):
    """Groups are read every step: a hand-set lr or momentum applies at once, as in torch."""
    backend, device = backend_device
    params = make_params(device)
    expected = clone_params(params)
    fused_opt = fo.SGD(params, lr=0.1, momentum=0.0, backend=backend)
    torch_opt = torch.optim.SGD(expected, lr=0.1, momentum=0.0, foreach=False)
    for step in range(6):
        if step == 2:
            for opt in (fused_opt, torch_opt):
                opt.param_groups[0]["momentum"] = 0.9  # starts momentum buffers from here
                opt.param_groups[0]["lr"] = 0.02
        set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params, expected)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.id in ("SGD-nesterov", "Adam-amsgrad", "AdamW-groups")],
                         ids=lambda c: c.id)
def test_triton_without_the_extension(config, monkeypatch):
    """Without the C++ extension, Triton plans keep their books (scan, checks, launch rows) in Python."""
    from conftest import TRITON_DEVICE, require_backend

    require_backend("triton", TRITON_DEVICE)
    monkeypatch.setattr(fo._cpp, "get", lambda: None)
    fused_opt, torch_opt, params, expected = run_pair(config, "triton", TRITON_DEVICE, steps=4)
    books = [plan.book for _, group_plans in fused_opt._plans for plan, _, _ in group_plans]
    assert books and all(isinstance(book, PythonBook) for book in books)
    assert_same_state(fused_opt, torch_opt, params, expected)
