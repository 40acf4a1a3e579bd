"""Every optimizer configuration of the registry (optim_db), on every backend, against torch.optim
over 10 steps; and the frontend's behaviour (closures, groups, hyperparameters) per optimizer."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import optim_db
from optim_db import OPTIMIZERS, assert_same_state, clone_params, config_id, configs_for, info_id, make_params, set_grads

STEPS = 10
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


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


@pytest.mark.parametrize("config", optim_db.CONFIGS, ids=config_id)
def test_matches_torch(config, backend_device):
    backend, device = backend_device
    fused_opt, torch_opt, params, expected = run_pair(config, backend, device)
    assert_same_state(fused_opt, torch_opt, params, expected)


@pytest.mark.parametrize("config", [c for info in OPTIMIZERS if torch.float64 in info.dtypes
                                    for c in info.all_configs if c.parity and not c.groups and c.float64], ids=config_id)
def test_float64_matches_torch(config, backend_device):
    backend, device = backend_device
    fused_opt, torch_opt, params, expected = run_pair(config, backend, device, torch.float64, steps=4)
    assert_same_state(fused_opt, torch_opt, params, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("config", configs_for("complex", [i for i in OPTIMIZERS if torch.complex64 in i.dtypes]),
                         ids=config_id)
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


@pytest.mark.parametrize("info", [i for i in OPTIMIZERS if i.supports_sparse], ids=info_id)
def test_sparse_gradients_match_torch(info, backend_device):
    """Sparse gradients (as nn.Embedding(sparse=True) makes them, with repeated rows), beside
    dense ones in the same group: the same results as torch."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("sparse CPU gradients")
    config = info.configs_for("sparse")[0]
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(10, 3, generator=g).requires_grad_(), torch.randn(7, generator=g).requires_grad_()]
    expected = [p.detach().clone().requires_grad_() for p in params]
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    torch_opt = config.torch(expected, foreach=False, **config.kwargs)
    for _ in range(4):
        rows = torch.randint(0, 10, (6,), generator=g)
        sparse = torch.sparse_coo_tensor(rows[None], torch.randn(6, 3, generator=g), (10, 3), check_invariants=True)
        dense = torch.randn(7, generator=g)
        params[0].grad, expected[0].grad = sparse.clone(), sparse.clone()
        params[1].grad, expected[1].grad = dense.clone(), dense.clone()
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params, expected)


@pytest.mark.parametrize("config", configs_for("mixed_dtypes"), ids=config_id)
def test_mixed_dtypes_in_one_group(config, backend_device):
    """A group holding float32, float64 and bfloat16 parameters: one plan per dtype, each right."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(4)
    params = [
        torch.randn(17, generator=g).to(device).requires_grad_(),
        torch.randn(5, 3, dtype=torch.float64, generator=g).to(device).requires_grad_(),
        torch.randn(33, generator=g).to(device, torch.bfloat16).requires_grad_(),
    ]
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    reference = [p.detach().clone().requires_grad_() for p in params]
    reference_opt = config.fused(reference, backend="reference", **config.kwargs)
    for _ in range(3):
        for p, q in zip(params, reference):
            grad = torch.randn(p.shape, generator=g).to(device, p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        fused_opt.step()
        reference_opt.step()
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", configs_for("closure"), ids=config_id)
def test_closure_and_zero_grad(config, backend_device):
    backend, device = backend_device
    w = torch.randn(4, device=device, requires_grad=True)
    x = torch.randn(8, 4, device=device)
    opt = config.fused([w], backend=backend, **config.kwargs)
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


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_add_param_group_mid_training(info, backend_device):
    backend, device = backend_device
    config = info.configs_for("add_param_group")[0]
    params = make_params(device)[:5]
    expected = clone_params(params)
    late = clone_params(make_params(device, seed=9)[5:8])
    late_expected = clone_params(late)
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    torch_opt = config.torch(expected, foreach=False, **config.kwargs)
    for step in range(6):
        if step == 3:
            fused_opt.add_param_group({"params": late, **info.late_group})
            torch_opt.add_param_group({"params": late_expected, **info.late_group})
        if step >= 3:
            set_grads([params + late, expected + late_expected], step)
        else:
            set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params + late, expected + late_expected)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_hyperparameters_changed_between_steps(info, backend_device):
    """Groups are read every step: a hand-set hyperparameter applies at once, as in torch."""
    backend, device = backend_device
    config = info.configs_for("retune")[0]
    params = make_params(device)
    expected = clone_params(params)
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    torch_opt = config.torch(expected, foreach=False, **config.kwargs)
    for step in range(6):
        if step == 2:
            for opt in (fused_opt, torch_opt):
                opt.param_groups[0].update(info.retune)
        set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params, expected)


# Run in a fresh process: the extension is switched off (FUSED_OPTIM_DISABLE_CPP) before the
# package first loads it.
WITHOUT_EXTENSION = textwrap.dedent("""
    import sys
    import torch
    import fused_optim as fo
    import optim_db
    from test_optim_parity import run_pair

    assert not fo.available_backends()["cpp"].available
    (config,) = [c for c in optim_db.CONFIGS if c.id == sys.argv[1]]
    fused_opt, torch_opt, params, expected = run_pair(config, "triton", "cpu", steps=4)
    optim_db.assert_same_state(fused_opt, torch_opt, params, expected)
    print("same as torch")
""")


@pytest.mark.parametrize("config", configs_for("without_extension"), ids=config_id)
def test_triton_without_the_extension(config):
    """Without the C++ extension, the Triton backend keeps its books (scan, checks, launch rows)
    in Python and still steps as torch does."""
    from conftest import HAS_CUDA, TRITON_DEVICE, require_backend

    require_backend("triton", TRITON_DEVICE)
    if HAS_CUDA:
        pytest.skip("the script steps CPU tensors in the Triton interpreter")
    env = dict(os.environ, FUSED_OPTIM_DISABLE_CPP="1", TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
    env.pop("FUSED_OPTIM_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSION, config.id], cwd=TESTS_DIR, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same as torch" in result.stdout
