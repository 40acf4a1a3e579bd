"""The eager cpp path of LayerNorm and BatchNorm: one call into a C++ autograd Function.

Plain CPU tensors on the cpp backend skip the Python autograd.Function: the forward is one call
into the extension and the backward runs in C++, handing back to the Python composite backward
only where the kernels cannot serve (a graph being built, batched gradients). These tests pin what
that path must keep: torch's results and gradients for every combination of affine parameters
and gradients asked for, outputs that are new tensors (in-place ops on them allowed, as on
torch's), channels_last output, running statistics with odd strides, double backward.
"""

import pytest
import torch
import torch.nn.functional as F

import fused_optim as fo
from fused_optim import _backend
from fused_optim.nn import BatchNorm2d, LayerNorm

pytestmark = pytest.mark.skipif(_backend.unavailable_reason("cpp", "cpu") is not None,
                                reason="the C++ extension is unavailable")


def _is_cpp_node(t):
    return "CppNode" in t.grad_fn.name()


def _inputs(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype) * 2 + 0.5, torch.randn(shape, generator=g).to(dtype)


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("wanted", ["all", "x", "params", "weight", "bias"])
def test_layer_norm_gradients_asked_for(affine, wanted):
    """Each subset of (x, weight, bias) gradients, with each affine combination: weight=None must
    not shift which input a gradient belongs to."""
    x, dy = _inputs((5, 3, 11))
    g = torch.Generator().manual_seed(1)
    weight = 1 + 0.5 * torch.randn(3, 11, generator=g) if affine in ("both", "weight") else None
    bias = torch.randn(3, 11, generator=g) if affine in ("both", "bias") else None
    wants = {"all": (True, True, True), "x": (True, False, False), "params": (False, True, True),
             "weight": (False, True, False), "bias": (False, False, True)}[wanted]
    results = []
    for fn, kwargs in ((fo.layer_norm, dict(backend="cpp")), (F.layer_norm, {})):
        leaves = [t if t is None else t.clone().requires_grad_(want) for t, want in zip((x, weight, bias), wants)]
        y = fn(leaves[0], (3, 11), leaves[1], leaves[2], **kwargs)
        asked = [t for t in leaves if t is not None and t.requires_grad]
        grads = torch.autograd.grad(y, asked, dy) if asked else ()
        results.append((y, grads))
        if fn is fo.layer_norm and asked:
            assert _is_cpp_node(y)
    (y, grads), (y_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    assert len(grads) == len(grads_ref)
    for actual, expected in zip(grads, grads_ref):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_batch_norm_gradients_and_layout(affine, channels_last):
    x, dy = _inputs((4, 6, 5, 3))
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    weight = 1 + 0.5 * torch.randn(6, generator=g) if affine in ("both", "weight") else None
    bias = torch.randn(6, generator=g) if affine in ("both", "bias") else None
    results = []
    for fn, kwargs in ((fo.batch_norm, dict(backend="cpp")), (F.batch_norm, {})):
        leaves = [t if t is None else t.clone().requires_grad_() for t in (x, weight, bias)]
        stats = [torch.zeros(6), torch.ones(6)]
        y = fn(leaves[0], stats[0], stats[1], leaves[1], leaves[2], training=True, momentum=0.3, **kwargs)
        grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
        results.append((y, grads, stats))
    (y, grads, stats), (y_ref, grads_ref, stats_ref) = results
    assert _is_cpp_node(y)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert grads[0].stride() == y.stride()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for actual, expected in zip(grads + tuple(stats), grads_ref + tuple(stats_ref)):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def test_outputs_allow_in_place_ops():
    """As torch's: an in-place op on the output (ReLU(inplace=True) after a norm) keeps gradients right."""
    x, dy = _inputs((4, 6, 5, 3))
    for ours, theirs in ((LayerNorm(3, backend="cpp"), torch.nn.LayerNorm(3)),
                         (BatchNorm2d(6, backend="cpp"), torch.nn.BatchNorm2d(6))):
        grads = []
        for module in (ours, theirs):
            leaf = x.clone().requires_grad_()
            y = module(leaf)
            assert not y._is_view()
            y.relu_()
            grads.append(torch.autograd.grad(y, (leaf, module.weight), dy))
        for actual, expected in zip(*grads):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-4)


def test_odd_strided_running_statistics_are_updated():
    x, _ = _inputs((8, 4, 3))
    results = []
    for fn, kwargs in ((fo.batch_norm, dict(backend="cpp")), (F.batch_norm, {})):
        mean, var = torch.zeros(8)[::2], torch.ones(8)[::2]
        fn(x.clone().requires_grad_(), mean, var, training=True, momentum=0.25, **kwargs)
        results.append((mean, var))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["layer_norm", "batch_norm"])
def test_double_backward_through_the_cpp_path(kind):
    """create_graph=True: the C++ backward hands over to the composite backward, which builds a graph."""
    x, _ = _inputs((6, 4, 3), dtype=torch.float64)
    w = torch.linspace(0.5, 1.5, 4 if kind == "batch_norm" else 3, dtype=torch.float64)

    def ours(a, weight):
        if kind == "layer_norm":
            return fo.layer_norm(a, (3,), weight, backend="cpp")
        return fo.batch_norm(a, None, None, weight, training=True, backend="cpp")

    def theirs(a, weight):
        if kind == "layer_norm":
            return F.layer_norm(a, (3,), weight)
        return F.batch_norm(a, None, None, weight, training=True)

    second = []
    for fn in (ours, theirs):
        a, weight = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(a, weight)
        if fn is ours:
            assert _is_cpp_node(y)
        (ga,) = torch.autograd.grad(y.pow(3).sum(), a, create_graph=True)
        second.append(torch.autograd.grad(ga.sin().sum(), (a, weight)))
    for actual, expected in zip(*second):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
    a, weight = x.clone().requires_grad_(), w.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(ours, (a, weight))


def test_batched_gradients_through_the_cpp_path():
    x, _ = _inputs((5, 7), dtype=torch.float64)
    a = x.clone().requires_grad_()
    y = fo.layer_norm(a, (7,), backend="cpp")
    assert _is_cpp_node(y)
    dys = torch.randn(3, 5, 7, dtype=torch.float64)
    (batched,) = torch.autograd.grad(y, a, dys, retain_graph=True, is_grads_batched=True)
    for i in range(3):
        (single,) = torch.autograd.grad(y, a, dys[i], retain_graph=True)
        torch.testing.assert_close(batched[i], single, rtol=1e-10, atol=1e-10)


def test_errors_leave_state_unchanged():
    """A rejected call (here: weight of the wrong dtype family) raises before the statistics move."""
    x, _ = _inputs((4, 3, 2))
    mean, var = torch.zeros(3), torch.ones(3)
    with pytest.raises(RuntimeError):
        fo.batch_norm(x, mean, var, torch.ones(3, dtype=torch.int64), training=True, backend="cpp")
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(var, torch.ones(3))


def test_backward_under_a_dispatch_mode_and_in_inference_mode():
    """A backward run while a dispatch mode is active goes through the registered ops (the C++
    backward hands over); a forward in inference mode records nothing."""
    from torch.utils.flop_counter import FlopCounterMode

    x, _ = _inputs((4, 3, 2, 5))
    grads = []
    for ln, bn in ((LayerNorm(5, backend="cpp"), BatchNorm2d(3, backend="cpp")),
                   (torch.nn.LayerNorm(5), torch.nn.BatchNorm2d(3))):
        leaf = x.clone().requires_grad_()
        loss = ln(leaf).pow(2).sum() + bn(leaf).pow(2).sum()
        with FlopCounterMode(display=False):
            loss.backward()
        grads.append(leaf.grad)
        with torch.inference_mode():
            assert ln(x).is_inference() and bn(x).is_inference()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-4)
