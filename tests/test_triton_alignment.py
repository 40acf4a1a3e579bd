"""The aligned (128-bit) and masked variants of the Triton norm and clipping kernels give torch's
results: aligned rows and channels, views at an odd offset, sizes that are no multiple of the
vector or the block, tails of chunks. Run on the CPU under TRITON_INTERPRET=1 (tests/conftest.py),
on the GPU when there is one; tests/test_triton_codegen.py checks what the aligned variants compile to.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import TRITON_DEVICE, require_backend



@pytest.fixture(autouse=True)
def _triton():
    require_backend("triton", TRITON_DEVICE)


def _view(numel, dtype, offset, seed):
    """numel random values, starting `offset` elements into a fresh buffer (offset 1: misaligned)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(numel + offset, generator=g, dtype=torch.float32).to(dtype)[offset:].to(TRITON_DEVICE)


TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n, offset, aligned", [(64, 0, True), (64, 1, False), (40, 0, None), (7, 0, False)],
                         ids=["aligned", "offset1", "n40", "n7"])
def test_layer_norm_variants(dtype, n, offset, aligned):
    from fused_optim.triton import common, layer_norm
    m = 5
    x = _view(m * n, dtype, offset, 0).view(m, n)
    dy = _view(m * n, dtype, offset, 1).view(m, n)
    w, b = _view(n, torch.float32, 0, 2), _view(n, torch.float32, 0, 3)
    vec = common.vector_width(dtype)
    expected_aligned = n % vec == 0 and offset == 0
    assert aligned in (None, expected_aligned)
    assert common.is_aligned([x, dy, w, b], [n], vec) == expected_aligned
    y, mean, rstd = layer_norm.layer_norm_forward(x, w, b, 1e-5)
    xr = x.float().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    yr = F.layer_norm(xr, (n,), wr, br, 1e-5)
    yr.backward(dy.float())
    torch.testing.assert_close(y.float(), yr.detach().to(dtype).float(), **TOLERANCE[dtype])
    dx, dw, db = layer_norm.layer_norm_backward(dy, x, w, mean, rstd, True, True, True)
    torch.testing.assert_close(dx.float(), xr.grad.to(dtype).float(), **TOLERANCE[dtype])
    torch.testing.assert_close(dw, wr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(db, br.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["planar", "channels_last"])
@pytest.mark.parametrize("stride, offset", [(16, 0), (16, 1), (7, 0)], ids=["aligned", "offset1", "stride7"])
def test_batch_norm_variants(channels_last, stride, offset):
    """stride: the contiguous extent (C channels_last, S planar) the aligned variant needs a multiple of 4 of."""
    from fused_optim.triton import batch_norm
    batch, other = 3, 5
    shape = (batch, other, stride)  # (N, S, C) channels_last, (N, C, S) planar
    x = _view(batch * other * stride, torch.float32, offset, 0).view(shape)
    dy = _view(batch * other * stride, torch.float32, offset, 1).view(shape)
    channels = shape[2] if channels_last else shape[1]
    grid = batch_norm._Grid(x, channels_last)
    assert grid.aligned([x, dy], channels_last) == (stride % 4 == 0 and offset == 0)
    w, b = _view(channels, torch.float32, 0, 2), _view(channels, torch.float32, 0, 3)
    rm, rv = torch.zeros(channels, device=x.device), torch.ones(channels, device=x.device)
    y, mean, rstd = batch_norm.batch_norm_forward(x, channels_last, w, b, rm, rv, True, 0.1, 1e-5)
    # torch's (N, C, *) view of the same values
    planar = (lambda t: t.transpose(1, 2)) if channels_last else (lambda t: t)
    xr = planar(x).detach().clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    rm_ref, rv_ref = torch.zeros_like(rm), torch.ones_like(rv)
    yr = F.batch_norm(xr, rm_ref, rv_ref, wr, br, True, 0.1, 1e-5)
    yr.backward(planar(dy))
    torch.testing.assert_close(planar(y), yr.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rm, rm_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rv, rv_ref, atol=1e-6, rtol=1e-6)
    dx, dw, db = batch_norm.batch_norm_backward(dy, x, channels_last, w, mean, rstd, True, True, True, True)
    torch.testing.assert_close(planar(dx), xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dw, wr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(db, br.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "offset1"])
def test_clip_variants(dtype, offset):
    """Whole chunks (aligned: 128-bit path), a tensor's last partial chunk, a tensor smaller than
    a block, and a misaligned list (every chunk masked)."""
    from fused_optim.triton import clip
    sizes = [2 * clip.CHUNK + 37, clip.CHUNK, 5]
    grads = [_view(n, dtype, offset, i) for i, n in enumerate(sizes)]
    expected = [g.float().clone() for g in grads]
    tensors = clip.TensorList(grads)
    assert tensors.aligned == (offset == 0)
    partials = torch.zeros(tensors.n_chunks, dtype=torch.float64, device=grads[0].device)
    clip.norm_partials(tensors, partials, 2.0)
    total, factor = clip.finalize(partials, 2.0, torch.float32, max_norm=1.0)
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in expected]))
    torch.testing.assert_close(total, want, atol=1e-4, rtol=1e-5)
    clip.scale_(tensors, factor)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.float(), (e * factor.float()).to(dtype).float(), atol=1e-6, rtol=1e-2)
    clip.clamp_(tensors, -0.01, 0.01)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g.float(), (e * factor.float()).to(dtype).clamp(-0.01, 0.01).float(),
                                   atol=1e-6, rtol=1e-2)
