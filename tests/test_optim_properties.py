"""Property-based: random shapes and hyperparameters, every fast backend against the reference."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKEND_DEVICES, require_backend
from optim_db import OPTIMIZERS, info_id

FAST = [pair for pair in BACKEND_DEVICES if pair[0] != "reference"]
EXAMPLES = {"cpp": 60, "triton": 20}

shapes = st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5)


def _close(got, want):
    """Within the usual tolerance, NaN where the other has NaN (a degenerate setting can reach
    the square root of a rounding error below zero, on every backend alike)."""
    return torch.isclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True).all().item()


def assert_as_accurate_as_reference(got, reference, exact):
    """``got`` (a fast backend's result) as the float32 reference gives it, or else within the
    usual tolerance of ``exact`` (the same run in float64), widened by how far the float32
    reference itself is from it. Where an update is ill-conditioned (centered RMSprop's
    sqrt(E[g^2] - E[g]^2) cancels when alpha is small) a 1-ulp difference in one operation grows
    past any fixed tolerance, for the reference as much as for the fast path."""
    if _close(got, reference):
        return
    exact = exact.to(torch.float64)
    finite = exact.isfinite() & reference.isfinite()
    assert torch.equal(got.isnan(), reference.isnan()), (got, reference)
    slack = (reference.to(torch.float64) - exact)[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(got.to(torch.float64)[finite], exact[finite], rtol=1e-5, atol=1e-6 + 4 * slack)


def run_against_reference(optimizer, kwargs, backend, device, shape_list, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(device, dtype).requires_grad_() for s in shape_list]
    expected = [p.detach().clone().requires_grad_() for p in params]
    # float32 runs are also computed in float64: the yardstick for ill-conditioned settings
    exact = [p.detach().to(torch.float64).requires_grad_() for p in params] if dtype == torch.float32 else None
    fast = optimizer(params, backend=backend, **kwargs)
    reference = optimizer(expected, backend="reference", **kwargs)
    exact_reference = optimizer(exact, backend="reference", **kwargs) if exact else None
    for step in range(3):
        for i, (p, q) in enumerate(zip(params, expected)):
            grad = None if (i + step) % 3 == 2 else torch.randn(p.shape, generator=g).to(device, dtype)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
            if exact:
                exact[i].grad = None if grad is None else grad.to(torch.float64)
        fast.step()
        reference.step()
        if exact:
            exact_reference.step()
    for i, (p, q) in enumerate(zip(params, expected)):
        if exact:
            assert_as_accurate_as_reference(p, q, exact[i])
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, equal_nan=True)
    for i, (p, q) in enumerate(zip(params, expected)):
        assert fast.state[p].keys() == reference.state[q].keys()
        for key, value in reference.state[q].items():
            if exact and value.is_floating_point():
                assert_as_accurate_as_reference(fast.state[p][key], value, exact_reference.state[exact[i]][key])
            else:
                torch.testing.assert_close(fast.state[p][key], value, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("info", [i for i in OPTIMIZERS if i.random_kwargs is not None], ids=info_id)
@pytest.mark.parametrize("pair", FAST, ids=lambda p: f"{p[0]}-{p[1]}")
def test_random_settings(pair, info):
    backend, device = pair
    dtypes = [d for d in (torch.float32, torch.float64) if d in info.dtypes]

    @settings(max_examples=EXAMPLES[backend], deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shape_list=shapes, kwargs=info.random_kwargs, dtype=st.sampled_from(dtypes), seed=st.integers(0, 2**16))
    def check(shape_list, kwargs, dtype, seed):
        run_against_reference(info.fused, kwargs, backend, device, shape_list, dtype, seed)

    require_backend(backend, device)
    check()
