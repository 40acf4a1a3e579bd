"""Property-based: random shapes and hyperparameters, every fast backend against the reference."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_optim as fo
from conftest import BACKEND_DEVICES, require_backend

FAST = [pair for pair in BACKEND_DEVICES if pair[0] != "reference"]
EXAMPLES = {"cpp": 60, "triton": 20}

shapes = st.lists(st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5)
unit = st.floats(0.0, 0.999)


@st.composite
def adam_settings(draw):
    return dict(lr=draw(st.floats(1e-4, 0.5)), betas=(draw(unit), draw(unit)), eps=draw(st.floats(1e-10, 1e-2)),
                weight_decay=draw(st.floats(0.0, 0.5)), amsgrad=draw(st.booleans()), maximize=draw(st.booleans()))


@st.composite
def sgd_settings(draw):
    momentum = draw(st.sampled_from([0.0, draw(st.floats(0.0, 0.99))]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(lr=draw(st.floats(1e-4, 0.5)), momentum=momentum,
                dampening=0.0 if nesterov else draw(st.floats(0.0, 0.9)), weight_decay=draw(st.floats(0.0, 0.5)),
                nesterov=nesterov, maximize=draw(st.booleans()))


def run_against_reference(optimizer, kwargs, backend, device, shape_list, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).to(device, dtype).requires_grad_() for s in shape_list]
    expected = [p.detach().clone().requires_grad_() for p in params]
    fast = optimizer(params, backend=backend, **kwargs)
    reference = optimizer(expected, backend="reference", **kwargs)
    for step in range(3):
        for i, (p, q) in enumerate(zip(params, expected)):
            grad = None if (i + step) % 3 == 2 else torch.randn(p.shape, generator=g).to(device, dtype)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        fast.step()
        reference.step()
    for p, q in zip(params, expected):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, q in zip(params, expected):
        assert fast.state[p].keys() == reference.state[q].keys()
        for key, value in reference.state[q].items():
            torch.testing.assert_close(fast.state[p][key], value, rtol=1e-5, atol=1e-6)


def property_test(pair, strategy, optimizers):
    backend, device = pair

    @settings(max_examples=EXAMPLES[backend], deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(shape_list=shapes, kwargs=strategy, optimizer=st.sampled_from(optimizers),
           dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
    def check(shape_list, kwargs, optimizer, dtype, seed):
        run_against_reference(optimizer, kwargs, backend, device, shape_list, dtype, seed)

    require_backend(backend, device)
    check()


@pytest.mark.parametrize("pair", FAST, ids=lambda p: f"{p[0]}-{p[1]}")
def test_adam_random_settings(pair):
    property_test(pair, adam_settings(), [fo.Adam, fo.AdamW])


@pytest.mark.parametrize("pair", FAST, ids=lambda p: f"{p[0]}-{p[1]}")
def test_sgd_random_settings(pair):
    property_test(pair, sgd_settings(), [fo.SGD])
