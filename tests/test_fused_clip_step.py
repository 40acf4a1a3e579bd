"""max_grad_norm: clipping inside the step equals clip_grad_norm_ followed by step()."""

import pytest
import torch

import fused_optim as fo
from optim_cases import assert_same_state, clone_params, make_params, set_grads

CASES = [
    ("SGD", lambda ps, **kw: fo.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, **kw),
     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, foreach=False)),
    ("Adam", lambda ps, **kw: fo.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True, **kw),
     lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True, foreach=False)),
    ("AdamW", lambda ps, **kw: fo.AdamW(ps, lr=0.01, maximize=True, **kw),
     lambda ps: torch.optim.AdamW(ps, lr=0.01, maximize=True, foreach=False)),
]


@pytest.mark.parametrize("max_norm", [0.5, 1e6], ids=["clips", "no-clip"])
@pytest.mark.parametrize("name,fused,reference", CASES, ids=[c[0] for c in CASES])
def test_fused_clip_equals_clip_then_step(name, fused, reference, max_norm, backend_device):
    backend, device = backend_device
    params = make_params(device)
    expected = clone_params(params)
    fused_opt = fused(params, backend=backend, max_grad_norm=max_norm)
    torch_opt = reference(expected)
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


def test_fused_clip_over_groups_and_dtypes(backend_device):
    """One norm over all groups and dtypes of the optimizer, as clip_grad_norm_ over all its params."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(0)
    shapes = [(7,), (33, 5), (1000,), (20011,)]
    params = [torch.randn(s, generator=g).to(device, dt).requires_grad_()
              for s, dt in zip(shapes, [torch.float32, torch.bfloat16, torch.float32, torch.float64])]
    expected = [p.detach().clone().requires_grad_() for p in params]
    fused_opt = fo.Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], lr=0.01, backend=backend,
                        max_grad_norm=1.0)
    reference_opt = fo.Adam([{"params": expected[:2]}, {"params": expected[2:], "lr": 0.02}], lr=0.01,
                            backend="reference")
    for _ in range(3):
        for p, q in zip(params, expected):
            grad = torch.randn(p.shape, generator=g).to(device, p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        fused_opt.step()
        norm = fo.clip_grad_norm_(expected, 1.0, backend="reference")
        reference_opt.step()
        assert fused_opt.last_grad_norm.dtype == norm.dtype == torch.float64
        torch.testing.assert_close(fused_opt.last_grad_norm, norm, rtol=1e-6, atol=0)
    for p, q in zip(params, expected):
        torch.testing.assert_close(p, q, rtol=2**-7 if p.dtype == torch.bfloat16 else 1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, "1.0"], ids=repr)
def test_invalid_max_grad_norm(bad):
    with pytest.raises(ValueError, match="max_grad_norm"):
        fo.AdamW([torch.zeros(3, requires_grad=True)], max_grad_norm=bad)


def test_max_grad_norm_survives_pickling(backend_device):
    backend, device = backend_device
    opt = fo.SGD(make_params(device), lr=0.1, backend=backend, max_grad_norm=2.5)
    import copy

    assert copy.deepcopy(opt).max_grad_norm == 2.5
