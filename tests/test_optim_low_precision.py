"""float16 / bfloat16 parameters: float32 state, float32 math, one rounding at the store."""

import pytest
import torch

from optim_db import OPTIMIZERS, config_id, configs_for, info_id

LOW = [torch.bfloat16, torch.float16]
# One step of float32 math rounded once: at most one unit in the last place of the 16-bit type
# apart from torch's float32 result rounded the same way (2**-7 relative for bfloat16, 2**-10 for
# float16), plus the smallest normal for values that round near zero.
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
CASES = [(c, dtype) for info in OPTIMIZERS for dtype in LOW if dtype in info.dtypes
         for c in info.configs_for("low_precision")]
CASE_IDS = [f"{c.id}-{str(dtype).replace('torch.', '')}" for c, dtype in CASES]


def low_precision_params(device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(), (1,), (7,), (1023,), (4097,), (3, 5, 7), (0,), (33, 31)]
    params = [torch.randn(s, generator=g).to(device, dtype).requires_grad_() for s in shapes]
    params.append(torch.randn(10, 8, generator=g).to(device, dtype).t().detach().requires_grad_())
    return params


def random_grads(params, generator):
    return [None if i % 5 == 4 else torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
            for i, p in enumerate(params)]


@pytest.mark.parametrize("config,dtype", CASES, ids=CASE_IDS)
def test_backends_match_reference(config, dtype, backend_device):
    """Every backend computes what the reference defines, to the last bit but for rare ties."""
    backend, device = backend_device
    params = low_precision_params(device, dtype)
    expected = [p.detach().clone().requires_grad_() for p in params]
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    reference_opt = config.fused(expected, backend="reference", **config.kwargs)
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        for p, q, grad in zip(params, expected, random_grads(params, g)):
            p.grad = grad
            q.grad = None if grad is None else grad.clone()
        fused_opt.step()
        reference_opt.step()
    for p, q in zip(params, expected):
        torch.testing.assert_close(p, q, rtol=ULP[dtype], atol=1e-6)
    for state, reference_state in zip(fused_opt.state.values(), reference_opt.state.values()):
        for key, value in state.items():
            assert value.dtype == torch.float32, f"{key} of a {dtype} parameter must be float32"
            torch.testing.assert_close(value, reference_state[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config,dtype", CASES, ids=CASE_IDS)
def test_one_step_matches_float32_torch(config, dtype, backend_device):
    """One step on 16-bit parameters equals torch's float32 step on the same values, rounded."""
    backend, device = backend_device
    params = low_precision_params(device, dtype)
    wide = [p.detach().float().requires_grad_() for p in params]
    g = torch.Generator().manual_seed(2)
    for p, q, grad in zip(params, wide, random_grads(params, g)):
        p.grad = grad
        q.grad = None if grad is None else grad.float()
    config.fused(params, backend=backend, **config.kwargs).step()
    config.torch(wide, foreach=False, **config.kwargs).step()
    for p, q in zip(params, wide):
        torch.testing.assert_close(p.float(), q.to(dtype).float(), rtol=ULP[dtype], atol=1e-6)


@pytest.mark.parametrize("info", [i for i in OPTIMIZERS if torch.float16 in i.dtypes], ids=info_id)
def test_float16_state_stays_finite(info, backend_device):
    """Tiny and large float16 gradients: a float16 exp_avg_sq would underflow to zero (with eps
    1e-8 flushed to zero too: 0/0) or overflow (grad**2 > 65504); float32 state does neither."""
    backend, device = backend_device
    values = torch.tensor([1e-4, -3e-5, 300.0, -250.0, 1.0, 0.0])
    param = torch.zeros(6, dtype=torch.float16, device=device, requires_grad=True)
    wide = torch.zeros(6, requires_grad=True)
    opt = info.fused([param], lr=1e-3, backend=backend)
    wide_opt = info.torch([wide], lr=1e-3, foreach=False)
    for _ in range(5):
        param.grad = values.to(device, torch.float16)
        wide.grad = values.to(torch.float16).float()
        opt.step()
        wide_opt.step()
    assert torch.isfinite(param).all()
    for value in opt.state[param].values():
        assert torch.isfinite(value).all()
    torch.testing.assert_close(param.float().cpu(), wide.detach().to(torch.float16).float(), rtol=ULP[torch.float16],
                               atol=1e-6)


@pytest.mark.parametrize("config", configs_for("state_dict_float32", [i for i in OPTIMIZERS if torch.bfloat16 in i.dtypes]),
                         ids=config_id)
def test_state_dict_keeps_float32_state_exactly(config, backend_device):
    """Saving and loading fused_optim state for bfloat16 parameters does not round it to bfloat16."""
    backend, device = backend_device
    params = low_precision_params(device, torch.bfloat16)
    opt = config.fused(params, backend=backend, **config.kwargs)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        for p, grad in zip(params, random_grads(params, g)):
            p.grad = grad
        opt.step()
    saved = opt.state_dict()
    restored = config.fused(params, backend=backend, **config.kwargs)
    restored.load_state_dict(saved)
    for p in params:
        for key, value in opt.state[p].items():
            assert restored.state[p][key].dtype == value.dtype
            assert torch.equal(restored.state[p][key], value), key
