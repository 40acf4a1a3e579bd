"""max_grad_norm: clipping inside the step equals clip_grad_norm_ followed by step()."""

import copy

import pytest
import torch

import fused_optim as fo
from optim_db import OPTIMIZERS, assert_same_state, clone_params, config_id, configs_for, info_id, make_params, set_grads

CASES = configs_for("clip")


@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "no-clip"])
@pytest.mark.parametrize("config", CASES, ids=config_id)
def test_fused_clip_equals_clip_then_step(config, max_norm, backend_device):
    backend, device = backend_device
    params = make_params(device)
    expected = clone_params(params)
    fused_opt = config.fused(params, backend=backend, max_grad_norm=max_norm, **config.kwargs)
    torch_opt = config.torch(expected, foreach=False, **config.kwargs)
    for step in range(6):
        set_grads([params, expected], step)
        raw = [None if p.grad is None else p.grad.clone() for p in params]
        fused_opt.step()
        norm = torch.nn.utils.clip_grad_norm_(expected, max_norm)
        torch_opt.step()
        torch.testing.assert_close(fused_opt.last_grad_norm, norm, rtol=1e-5, atol=0)
        for p, g in zip(params, raw):  # the gradients themselves are left unclipped
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert_same_state(fused_opt, torch_opt, params, expected)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_fused_clip_over_groups_and_dtypes(info, backend_device):
    """One norm over all groups and dtypes of the optimizer, as clip_grad_norm_ over all its params."""
    backend, device = backend_device
    config = info.configs_for("clip_groups")[0]
    g = torch.Generator().manual_seed(0)
    shapes = [(7,), (33, 5), (1000,), (20011,)]
    params = [torch.randn(s, generator=g).to(device, dt).requires_grad_()
              for s, dt in zip(shapes, [torch.float32, torch.bfloat16, torch.float32, torch.float64])]
    expected = [p.detach().clone().requires_grad_() for p in params]
    fused_opt = config.fused([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], backend=backend,
                             max_grad_norm=1.0, **config.kwargs)
    reference_opt = config.fused([{"params": expected[:2]}, {"params": expected[2:], "lr": 0.02}], backend="reference",
                                 **config.kwargs)
    for _ in range(3):
        for p, q in zip(params, expected):
            grad = torch.randn(p.shape, generator=g).to(device, p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        fused_opt.step()
        norm = fo.clip_grad_norm_(expected, 1.0, backend="reference")
        reference_opt.step()
        assert fused_opt.last_grad_norm.dtype == norm.dtype == torch.float64
        torch.testing.assert_close(fused_opt.last_grad_norm, norm, rtol=1e-6, atol=0)
    # The reference clips first, rounding the clipped bfloat16 gradients to bfloat16; the fused step
    # scales them in float32. RMSprop and Adagrad divide by the root of the squared gradients, which
    # turns that rounding into up to a few bfloat16 ulps.
    bf16_rtol = 2**-5 if info.name in ("RMSprop", "Adagrad") else 2**-7
    for p, q in zip(params, expected):
        torch.testing.assert_close(p, q, rtol=bf16_rtol if p.dtype == torch.bfloat16 else 1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, "1.0"], ids=repr)
@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_invalid_max_grad_norm(info, bad):
    with pytest.raises(ValueError, match="max_grad_norm"):
        info.fused([torch.zeros(3, requires_grad=True)], max_grad_norm=bad)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_max_grad_norm_survives_pickling(info, backend_device):
    backend, device = backend_device
    config = info.configs_for("pickle")[0]
    opt = config.fused(make_params(device), backend=backend, max_grad_norm=2.5, **config.kwargs)
    assert copy.deepcopy(opt).max_grad_norm == 2.5
