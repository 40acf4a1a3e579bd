"""Outputs larger than the last-level cache are written with streaming stores (csrc/stream_store.h):
the same values, bit for bit, as the normal stores that smaller calls use."""

import pytest
import torch

import fused_optim as fo
from fused_optim import available_backends

pytestmark = pytest.mark.skipif("cpp" not in available_backends(), reason="needs the C++ extension")

# Input and output together above any last-level cache this suite runs on (sysfs index3, else 32 MiB):
# 2 x 4.5M float32 values = 36 MB.
ROWS, HIDDEN = 4403, 1024  # an odd row count: the threads' pieces start at odd rows


def test_layer_norm_streamed_rows_equal_the_rows_computed_alone():
    torch.manual_seed(0)
    x = torch.randn(ROWS, HIDDEN)
    weight, bias = torch.randn(HIDDEN), torch.randn(HIDDEN)
    big = fo.layer_norm(x, (HIDDEN,), weight, bias, backend="cpp")
    for start, stop in ((0, 7), (1000, 1333), (ROWS - 5, ROWS)):
        small = fo.layer_norm(x[start:stop], (HIDDEN,), weight, bias, backend="cpp")
        assert torch.equal(big[start:stop], small)
    no_affine = fo.layer_norm(x, (HIDDEN,), backend="cpp")
    assert torch.equal(no_affine[:9], fo.layer_norm(x[:9], (HIDDEN,), backend="cpp"))
    torch.testing.assert_close(big, torch.nn.functional.layer_norm(x, (HIDDEN,), weight, bias))


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_streamed_output_equals_the_normal_stores(channels_last):
    torch.manual_seed(0)
    bn = fo.BatchNorm2d(64, backend="cpp").eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(9, 64, 89, 91)  # 4.7M values; planes of 8099, not a multiple of 16
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        big = bn(x)
        small = bn(x[:2])  # eval: each value depends on its channel only
    assert big.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(big[:2], small)
    reference = torch.nn.BatchNorm2d(64).eval()
    reference.load_state_dict(bn.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(big, reference(x))


def test_batch_norm_training_streamed_matches_torch():
    torch.manual_seed(1)
    x = torch.randn(9, 64, 89, 91).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours, theirs = fo.BatchNorm2d(64, backend="cpp"), torch.nn.BatchNorm2d(64)
    y, expected = ours(x), theirs(x)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_streamed_dx_equals_the_normal_stores(channels_last):
    torch.manual_seed(2)
    bn = fo.BatchNorm2d(64, backend="cpp").eval()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
    x = torch.randn(9, 64, 89, 91)
    dy = torch.randn_like(x)
    if channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    x.requires_grad_()
    (dx,) = torch.autograd.grad(bn(x), x, dy)  # eval: dx = dy * weight * rstd, channel by channel
    x2 = x.detach()[:2].requires_grad_()
    (dx2,) = torch.autograd.grad(bn(x2), x2, dy[:2])
    assert torch.equal(dx[:2], dx2)
    reference = torch.nn.BatchNorm2d(64).eval()
    reference.load_state_dict(bn.state_dict())
    x3 = x.detach().requires_grad_()
    torch.testing.assert_close(dx, torch.autograd.grad(reference(x3), x3, dy)[0])


def test_batch_norm_training_streamed_gradients_match_torch():
    torch.manual_seed(3)
    x = torch.randn(9, 64, 89, 91).requires_grad_()
    dy = torch.randn_like(x)
    ours, theirs = fo.BatchNorm2d(64, backend="cpp"), torch.nn.BatchNorm2d(64)
    got = torch.autograd.grad(ours(x), [x, ours.weight, ours.bias], dy)
    expected = torch.autograd.grad(theirs(x), [x, theirs.weight, theirs.bias], dy)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
