"""clip_grad_norm_, get_total_norm, clip_grads_with_norm_, clip_grad_value_ against torch.nn.utils
on every backend."""

import math
import warnings

import pytest
import torch

import fused_optim as fo

NORMS = [2.0, 1.0, math.inf, 3.0, 0.5]
# torch rounds each tensor's norm to that tensor's dtype before combining, fused_optim rounds the
# total once: for 16-bit gradients the totals may differ by one unit in the last place (2**-7
# relative for bfloat16, 2**-10 for float16), and the clipped gradients with them.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-15),
       torch.bfloat16: dict(rtol=2**-7, atol=1e-6), torch.float16: dict(rtol=2**-10, atol=1e-6)}
# A clipped 16-bit gradient: the coefficient's last-place difference, then the product's rounding.
GRAD_TOL = {**TOL, torch.bfloat16: dict(rtol=2**-6, atol=1e-6), torch.float16: dict(rtol=2**-9, atol=1e-6)}


def grads_pair(device, dtypes, seed=0, shapes=((3, 4), (), (1023,), (4097,), (0,), (20011,), (6, 10)), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    params, twins = [], []
    for i, shape in enumerate(shapes):
        dtype = dtypes[i % len(dtypes)]
        p = torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)
        grad = (torch.randn(shape, generator=g) * scale).to(device, dtype)
        if i == len(shapes) - 1 and len(shape) == 2:
            grad = grad.t().contiguous().t()  # a transposed (dense, non-contiguous) gradient
        p.grad = grad
        q = torch.zeros_like(p, requires_grad=True)
        q.grad = grad.clone()
        params.append(p)
        twins.append(q)
    none = torch.zeros(5, dtype=dtypes[0], device=device, requires_grad=True)  # no gradient: skipped
    return params + [none], twins + [none.detach().clone().requires_grad_()]


def assert_grads_close(params, twins, tol):
    for p, q in zip(params, twins):
        if p.grad is None:
            assert q.grad is None
            continue
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True, **tol)


@pytest.mark.parametrize("norm_type", NORMS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_clip_grad_norm_matches_torch(norm_type, dtype, backend_device):
    backend, device = backend_device
    shapes = ((3, 4), (), (1023,), (4097,), (20011,), (6, 10)) if math.isinf(norm_type) else None
    params, twins = grads_pair(device, [dtype], shapes=shapes) if shapes else grads_pair(device, [dtype])
    total = fo.clip_grad_norm_(params, 1.5, norm_type, backend=backend)
    expected = torch.nn.utils.clip_grad_norm_(twins, 1.5, norm_type)
    assert total.dtype == expected.dtype and total.device == expected.device and total.dim() == 0
    torch.testing.assert_close(total, expected, **TOL[dtype])
    assert_grads_close(params, twins, GRAD_TOL[dtype])


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0], ids=str)
def test_mixed_dtypes_in_one_call(norm_type, backend_device):
    backend, device = backend_device
    params, twins = grads_pair(device, [torch.float32, torch.bfloat16, torch.float64],
                               shapes=((3, 4), (7,), (1023,), (4097,), (20011,), (6, 10)))
    grads = [p.grad.double() for p in params if p.grad is not None]
    exact = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]), norm_type)
    total = fo.clip_grad_norm_(params, 0.5, norm_type, backend=backend)
    expected = torch.nn.utils.clip_grad_norm_(twins, 0.5, norm_type)
    assert total.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(total, exact.to(total.device), rtol=1e-6, atol=0)
    # torch rounds each bfloat16 tensor's norm to bfloat16 before combining them
    torch.testing.assert_close(total, expected, rtol=2**-7, atol=0)
    assert_grads_close(params, twins, GRAD_TOL[torch.bfloat16])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0], ids=str)
def test_nonfinite_gradients(bad, norm_type, backend_device):
    backend, device = backend_device
    params, twins = grads_pair(device, [torch.float32], shapes=((3, 4), (1023,), (20011,)))
    for grads in (params[1].grad, twins[1].grad):
        grads[17] = bad
    total = fo.clip_grad_norm_(params, 1.0, norm_type, backend=backend)
    expected = torch.nn.utils.clip_grad_norm_(twins, 1.0, norm_type)
    torch.testing.assert_close(total, expected, equal_nan=True)
    assert_grads_close(params, twins, TOL[torch.float32])


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=str)
def test_error_if_nonfinite_leaves_gradients_untouched(bad, backend_device):
    backend, device = backend_device
    params, _ = grads_pair(device, [torch.float32], shapes=((3, 4), (1023,), (20011,)))
    params[2].grad[5] = bad
    before = [p.grad.clone() for p in params if p.grad is not None]
    with pytest.raises(RuntimeError, match="non-finite"):
        fo.clip_grad_norm_(params, 1.0, error_if_nonfinite=True, backend=backend)
    for p, b in zip([p for p in params if p.grad is not None], before):
        assert torch.equal(p.grad, b) or torch.equal(p.grad.isnan(), b.isnan())
    with pytest.raises(RuntimeError, match="non-finite"):
        fo.get_total_norm([p.grad for p in params if p.grad is not None], error_if_nonfinite=True, backend=backend)


def test_single_tensor_empty_and_no_gradients(backend_device):
    backend, device = backend_device
    p = torch.zeros(10, device=device, requires_grad=True)
    p.grad = torch.full((10,), 3.0, device=device)
    q = p.detach().clone().requires_grad_()
    q.grad = p.grad.clone()
    torch.testing.assert_close(fo.clip_grad_norm_(p, 1.0, backend=backend), torch.nn.utils.clip_grad_norm_(q, 1.0))
    torch.testing.assert_close(p.grad, q.grad)
    assert fo.clip_grad_norm_([], 1.0, backend=backend).item() == 0.0
    assert fo.get_total_norm([], backend=backend).item() == 0.0
    no_grad = torch.zeros(3, device=device, requires_grad=True)
    assert fo.clip_grad_norm_([no_grad], 1.0, backend=backend).item() == 0.0
    with pytest.warns(UserWarning, match="empty generator"):
        fo.clip_grad_norm_((x for x in []), 1.0, backend=backend)


def test_large_max_norm_leaves_gradients_unchanged(backend_device):
    backend, device = backend_device
    params, twins = grads_pair(device, [torch.float32])
    fo.clip_grad_norm_(params, 1e9, backend=backend)
    assert_grads_close(params, twins, dict(rtol=0, atol=0))


@pytest.mark.parametrize("norm_type", NORMS + [0.0], ids=str)
def test_get_total_norm_and_clip_with_norm(norm_type, backend_device):
    backend, device = backend_device
    params, twins = grads_pair(device, [torch.float32], shapes=((3, 4), (1023,), (20011,), (6, 10)))
    grads = [p.grad for p in params if p.grad is not None]
    total = fo.get_total_norm(grads, norm_type, backend=backend)
    expected = torch.nn.utils.get_total_norm([q.grad for q in twins if q.grad is not None], norm_type)
    torch.testing.assert_close(total, expected, **TOL[torch.float32])
    fo.clip_grads_with_norm_(params, 2.0, total, backend=backend)
    torch.nn.utils.clip_grads_with_norm_(twins, 2.0, expected)
    assert_grads_close(params, twins, TOL[torch.float32])


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0], ids=str)
def test_complex_gradients(norm_type, backend_device):
    backend, device = backend_device
    g = torch.Generator().manual_seed(5)
    params = [torch.zeros(s, dtype=torch.complex64, device=device, requires_grad=True) for s in [(7,), (30, 3)]]
    twins = [torch.zeros_like(p, requires_grad=True) for p in params]
    for p, q in zip(params, twins):
        p.grad = torch.randn(p.shape, dtype=torch.complex64, generator=g).to(device)
        q.grad = p.grad.clone()
    total = fo.clip_grad_norm_(params, 1.0, norm_type, backend=backend)
    torch.testing.assert_close(total, torch.nn.utils.clip_grad_norm_(twins, 1.0, norm_type), **TOL[torch.float32])
    assert_grads_close(params, twins, TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_clip_grad_value_matches_torch(dtype, backend_device):
    backend, device = backend_device
    params, twins = grads_pair(device, [dtype], scale=2.0)
    for grads in (params[2].grad, twins[2].grad):
        grads[3] = math.nan
        grads[4] = math.inf
    fo.clip_grad_value_(params, 0.75, backend=backend)
    torch.nn.utils.clip_grad_value_(twins, 0.75)
    assert_grads_close(params, twins, dict(rtol=0, atol=0))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf], ids=str)
def test_norm_is_deterministic(norm_type, backend_device):
    """The same gradients give the same bits: fixed chunks, partials combined in a fixed order."""
    backend, device = backend_device
    params, _ = grads_pair(device, [torch.float32], shapes=((3, 4), (1023,), (20011,), (50000,)))
    grads = [p.grad for p in params if p.grad is not None]
    first = fo.get_total_norm(grads, norm_type, backend=backend)
    for _ in range(3):
        assert torch.equal(fo.get_total_norm(grads, norm_type, backend=backend), first)
    if backend == "cpp":
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert torch.equal(fo.get_total_norm(grads, norm_type, backend=backend), first)
        finally:
            torch.set_num_threads(threads)


def test_norm_of_many_tensors_is_accurate(backend_device):
    """Two thousand tensors: the norm agrees with a float64 computation."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(int(n), generator=g).to(device) for n in torch.randint(1, 300, (2000,), generator=g)]
    exact = torch.sqrt(sum((x.double() ** 2).sum() for x in grads))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total = fo.get_total_norm(grads, backend=backend)
    torch.testing.assert_close(total.double(), exact.to(total.device), rtol=1e-6, atol=0)
