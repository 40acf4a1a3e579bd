"""fused_optim.layer_norm / LayerNorm against torch.nn on every backend.

Float32 results are compared with torch's float32 results at 1e-5. Float16 and bfloat16 results
are compared with torch's float32 computation on the same (rounded) inputs, cast to the low
precision: every backend computes in float32 and rounds once, so an element may differ from the
cast float32 value by one unit in the last place where the float32 values differ in their last
bits (rtol: 2**-7 for bfloat16, 2**-10 for float16), plus an absolute margin for values that
cancel to near zero, whose float32 error is relative to the terms, not to the result.
"""

import pytest
import torch
import torch.nn.functional as F

import fused_optim as fo
from fused_optim.nn import LayerNorm

LOW_PRECISION_RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10}


def assert_matches(actual, expected, dtype, atol=1e-5):
    """actual (in dtype) against expected float32 values."""
    assert actual.dtype == dtype
    actual = actual.detach().cpu()
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol)
    elif dtype == torch.float64:
        torch.testing.assert_close(actual, expected.to(torch.float64), rtol=1e-10, atol=1e-10)
    else:
        torch.testing.assert_close(actual.float(), expected.to(dtype).float(), rtol=LOW_PRECISION_RTOL[dtype],
                                   atol=10 * atol)


def run(layer_norm, x, normalized_shape, weight, bias, dy, **kwargs):
    """Output and the gradients of x, weight and bias (None where absent) of one forward/backward."""
    x = x.detach().clone().requires_grad_()
    params = [None if p is None else p.detach().clone().requires_grad_() for p in (weight, bias)]
    y = layer_norm(x, normalized_shape, *params, **kwargs)
    y.backward(dy)
    return [y.detach(), x.grad] + [None if p is None else p.grad for p in params]


def torch_float32(x, normalized_shape, weight, bias, dy, eps=1e-5):
    """torch's float32 results for the same inputs (which may be low-precision)."""
    f = [None if t is None else t.detach().cpu().float() for t in (x, weight, bias, dy)]
    return run(F.layer_norm, f[0], normalized_shape, f[1], f[2], f[3], eps=eps)


def make(shape, normalized_shape, dtype, device, affine="both", seed=0, param_dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 2 + 0.5).to(dtype).to(device)
    dy = torch.randn(shape, generator=generator).to(dtype).to(device)
    weight = bias = None
    if affine in ("both", "weight"):
        weight = (1 + 0.5 * torch.randn(normalized_shape, generator=generator)).to(param_dtype).to(device)
    if affine == "both":
        bias = torch.randn(normalized_shape, generator=generator).to(param_dtype).to(device)
    return x, weight, bias, dy


def check_against_torch(backend, normalized_shape, x, weight, bias, dy, eps=1e-5):
    results = run(fo.layer_norm, x, normalized_shape, weight, bias, dy, eps=eps, backend=backend)
    expected = torch_float32(x, normalized_shape, weight, bias, dy, eps=eps)
    names = ["output", "input grad", "weight grad", "bias grad"]
    dtypes = [x.dtype, x.dtype] + [None if p is None else p.dtype for p in (weight, bias)]
    for name, actual, want, dtype in zip(names, results, expected, dtypes):
        if want is None:
            assert actual is None, name
            continue
        assert actual.shape == want.shape, name
        # Parameter gradients sum over rows: allow for float32 rounding of sums of that many terms.
        rows = max(1, x.numel() // max(1, weight.numel() if weight is not None else x.shape[-1]))
        atol = 1e-5 if name in ("output", "input grad") else 1e-5 * rows**0.5
        assert_matches(actual, want, dtype, atol=atol)


SHAPES = [
    pytest.param((1, 1), (1,), id="1x1"),
    pytest.param((3, 7), (7,), id="3x7"),
    pytest.param((4, 1000), (1000,), id="4x1000"),
    pytest.param((2, 4097), (4097,), id="2x4097"),
    pytest.param((7,), (7,), id="rank1"),
    pytest.param((2, 3, 5), (5,), id="rank3"),
    pytest.param((2, 3, 4, 5), (4, 5), id="rank4-two-dims"),
    pytest.param((2, 1, 3, 2, 6), (3, 2, 6), id="rank5-three-dims"),
]
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (torch.float32, torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES)
def test_matches_torch(backend_device, shape, normalized_shape, dtype):
    backend, device = backend_device
    check_against_torch(backend, normalized_shape, *make(shape, normalized_shape, dtype, device))


@pytest.mark.parametrize("affine", ["weight", "none"])
@pytest.mark.parametrize("shape,normalized_shape", [((5, 7), (7,)), ((3, 2, 8), (2, 8))], ids=["5x7", "two-dims"])
def test_without_bias_or_affine(backend_device, shape, normalized_shape, affine):
    backend, device = backend_device
    check_against_torch(backend, normalized_shape, *make(shape, normalized_shape, torch.float32, device, affine=affine))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_low_precision_parameters(backend_device, dtype):
    """Weight and bias in the input's low precision: their gradients come back in it, rounded once."""
    backend, device = backend_device
    check_against_torch(backend, (40,), *make((6, 40), (40,), dtype, device, param_dtype=dtype))


def test_non_contiguous_input(backend_device):
    backend, device = backend_device
    x, weight, bias, dy = make((6, 9), (6,), torch.float32, device)
    check_against_torch(backend, (6,), x.t(), weight, bias, dy.t())
    wide, weight, bias, dy = make((4, 3, 20), (10,), torch.float32, device)
    check_against_torch(backend, (10,), wide[:, :, ::2], weight, bias, dy[:, :, ::2])


def test_large_eps_and_constant_rows(backend_device):
    """eps sits inside the square root: a constant row normalizes to zeros, not NaN."""
    backend, device = backend_device
    x, weight, bias, dy = make((4, 33), (33,), torch.float32, device)
    x[1] = 3.0
    check_against_torch(backend, (33,), x, weight, bias, dy, eps=0.5)
    check_against_torch(backend, (33,), x, weight, bias, dy)


def test_large_mean_small_spread(backend_device):
    """Moments come from centered values: an offset of 1000 times the spread costs no accuracy.

    With E[x^2] - E[x]^2 in float32 the variance would be off by about ulp(1e6) / 1 = 6e-2 here.
    What float32 statistics cannot avoid is the rounding of the mean itself (ulp(1000) / 2 =
    3e-5), so the output is held to 2e-4 against float64 on the same float32 inputs.
    """
    backend, device = backend_device
    x, weight, bias, dy = make((3, 1000), (1000,), torch.float64, device)
    x = (x + 1000).float()
    results = run(fo.layer_norm, x, (1000,), weight.float(), bias.float(), dy.float(), backend=backend)
    expected = run(F.layer_norm, x.double().cpu(), (1000,), weight.double().cpu(), bias.double().cpu(),
                   dy.double().cpu())
    torch.testing.assert_close(results[0].cpu().double(), expected[0], rtol=0, atol=2e-4)
    torch.testing.assert_close(results[1].cpu().double(), expected[1], rtol=0, atol=2e-4)


def test_loop_over_wide_rows(backend_device, monkeypatch):
    """Rows wider than one Triton tile take the looping kernels (moments merged chunk by chunk)."""
    backend, device = backend_device
    if backend == "triton":
        from fused_optim.triton import layer_norm as triton_layer_norm

        monkeypatch.setattr(triton_layer_norm, "MAX_TILE_COLUMNS", 256)
        monkeypatch.setattr(triton_layer_norm, "LOOP_COLUMNS", 128)
    for dtype in (torch.float32, torch.bfloat16):
        check_against_torch(backend, (1000,), *make((3, 1000), (1000,), dtype, device))
    check_against_torch(backend, (300,), *make((2, 300), (300,), torch.float32, device, affine="none"))


def test_matches_reference(backend_device):
    """Every backend against the reference in float64, where rounding leaves no excuse."""
    backend, device = backend_device
    x, weight, bias, dy = make((5, 3, 37), (3, 37), torch.float64, device, param_dtype=torch.float64)
    results = run(fo.layer_norm, x, (3, 37), weight, bias, dy, backend=backend)
    expected = run(fo.layer_norm, x.cpu(), (3, 37), weight.cpu(), bias.cpu(), dy.cpu(), backend="reference")
    for actual, want in zip(results, expected):
        torch.testing.assert_close(actual.cpu(), want, rtol=1e-12, atol=1e-12)


def test_gradcheck(backend_device):
    """The hand-written backward of each backend against numerical derivatives, in float64."""
    backend, device = backend_device
    x, weight, bias, _ = make((3, 4, 5), (4, 5), torch.float64, device, param_dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(lambda a, w, b: fo.layer_norm(a, (4, 5), w, b, backend=backend), inputs)
    assert torch.autograd.gradcheck(lambda a: fo.layer_norm(a, (5,), backend=backend), [x])


def test_partial_gradients(backend_device):
    """Only the gradients asked for are computed, and they match."""
    backend, device = backend_device
    x, weight, bias, dy = make((6, 19), (19,), torch.float32, device)
    weight.requires_grad_()
    y = fo.layer_norm(x, (19,), weight, bias, backend=backend)
    (dweight,) = torch.autograd.grad(y, weight, dy)
    expected = torch_float32(x, (19,), weight, bias, dy)
    assert_matches(dweight, expected[2], torch.float32)
    x.requires_grad_()
    y = fo.layer_norm(x, (19,), weight.detach(), bias, backend=backend)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert_matches(dx, expected[1], torch.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [5, 37, 70, 133])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_many_rows_every_gradient(rows, affine, dtype, threads):
    """Row counts that leave the kernels' four-row groups and 32-row blocks with remainders, per
    piece of rows, at 1 and 2 threads: every gradient and every combination of them."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, weight, bias, dy = make((rows, 24), (24,), dtype, "cpu", affine=affine, seed=rows,
                                   param_dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        for wanted in ((True, True, True), (True, False, False), (False, True, True)):
            if weight is None and not wanted[0]:
                continue
            xs, ws, bs = (None if t is None else t.detach().clone().requires_grad_(want)
                          for t, want in zip((x, weight, bias), wanted))
            inputs = [t for t in (xs, ws, bs) if t is not None and t.requires_grad]
            grads = torch.autograd.grad(fo.layer_norm(xs, (24,), ws, bs, backend="cpp"), inputs, dy)
            if dtype == torch.float64:
                expected = torch.autograd.grad(F.layer_norm(xs, (24,), ws, bs), inputs, dy)
                for actual, want in zip(grads, expected):
                    torch.testing.assert_close(actual, want, rtol=1e-10, atol=1e-10)
                continue
            full = torch_float32(x, (24,), weight, bias, dy)[1:]
            expected = [e for e, t in zip(full, (xs, ws, bs)) if t is not None and t.requires_grad]
            for actual, want, t in zip(grads, expected, inputs):
                assert_matches(actual, want, t.dtype, atol=1e-5 * rows**0.5)
    finally:
        torch.set_num_threads(torch_threads)


def test_empty_input(backend_device):
    backend, device = backend_device
    x, weight, bias, _ = make((0, 5), (5,), torch.float32, device)
    results = run(fo.layer_norm, x, (5,), weight, bias, torch.empty(0, 5, device=device), backend=backend)
    assert results[0].shape == (0, 5) and results[1].shape == (0, 5)
    assert torch.equal(results[2].cpu(), torch.zeros(5)) and torch.equal(results[3].cpu(), torch.zeros(5))


def test_backward_is_deterministic(backend_device):
    """Repeated backward passes agree bit for bit (on Triton: several programs' partials, added in order)."""
    backend, device = backend_device
    x, weight, bias, dy = make((200, 24), (24,), torch.float32, device)
    check_against_torch(backend, (24,), x, weight, bias, dy)
    first = run(fo.layer_norm, x, (24,), weight, bias, dy, backend=backend)
    second = run(fo.layer_norm, x, (24,), weight, bias, dy, backend=backend)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# ----- module ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-3}],
                         ids=["default", "no-bias", "no-affine", "eps"])
def test_module_matches_torch(backend_device, kwargs):
    backend, device = backend_device
    torch.manual_seed(0)
    reference = torch.nn.LayerNorm((3, 8), **kwargs)
    module = LayerNorm((3, 8), backend=backend, **kwargs).to(device)
    module.load_state_dict(reference.state_dict())
    if module.weight is not None:
        with torch.no_grad():
            for p, q in zip(module.parameters(), reference.parameters()):
                q.normal_()
                p.copy_(q)
    x = torch.randn(4, 3, 8)
    dy = torch.randn(4, 3, 8)
    xs = [x.clone().requires_grad_(), x.clone().to(device).requires_grad_()]
    outputs = [reference(xs[0]), module(xs[1])]
    outputs[0].backward(dy)
    outputs[1].backward(dy.to(device))
    torch.testing.assert_close(outputs[1].detach().cpu(), outputs[0].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs[1].grad.cpu(), xs[0].grad, rtol=1e-5, atol=1e-5)
    for p, q in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-5, atol=1e-5)


def test_module_is_a_drop_in():
    reference = torch.nn.LayerNorm(6, bias=False)
    module = LayerNorm(6, bias=False)
    assert isinstance(module, torch.nn.LayerNorm)
    assert list(module.state_dict()) == list(reference.state_dict()) == ["weight"]
    assert [n for n, _ in module.named_parameters()] == ["weight"]
    assert repr(module) == repr(reference)
    reference.weight.data.normal_()
    module.load_state_dict(reference.state_dict())
    assert torch.equal(module.weight, reference.weight)
    both = LayerNorm([2, 3], eps=1e-3, elementwise_affine=True, device="cpu", dtype=torch.float64)
    assert both.normalized_shape == (2, 3) and both.weight.dtype == torch.float64 and both.eps == 1e-3
    assert LayerNorm(4, elementwise_affine=False).weight is None


def test_module_backend_choice(monkeypatch):
    assert LayerNorm(4).backend == "auto"
    assert LayerNorm(4, backend="reference").backend == "reference"
    monkeypatch.setenv("FUSED_OPTIM_BACKEND", "reference")
    assert LayerNorm(4).backend == "reference"
    with pytest.raises(ValueError, match="unknown"):
        LayerNorm(4, backend="fast")


# ----- errors ---------------------------------------------------------------------------------


def test_errors_match_torch():
    x = torch.randn(4, 3)
    for call in (
        lambda f: f(x, (4,)),
        lambda f: f(x, (3,), torch.ones(4)),
        lambda f: f(x, (3,), None, torch.ones(2)),
        lambda f: f(x, ()),
    ):
        with pytest.raises(RuntimeError) as expected:
            call(F.layer_norm)
        with pytest.raises(RuntimeError) as actual:
            call(fo.layer_norm)
        assert str(actual.value) == str(expected.value)
    with pytest.raises(RuntimeError, match="floating-point"):
        fo.layer_norm(torch.ones(2, 3, dtype=torch.int32), (3,))
    with pytest.raises(ValueError, match="unknown backend"):
        fo.layer_norm(x, (3,), backend="gpu")


def test_cpp_backend_rejects_other_devices():
    x = torch.randn(2, 3, device="meta")
    with pytest.raises(RuntimeError, match="cannot run meta tensors"):
        fo.layer_norm(x, (3,), backend="cpp")
