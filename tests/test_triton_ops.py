"""The torch.library.triton_op versions of the Triton norm and clip launchers.

Without a GPU: the graphs AOT autograd traces on FakeTensors on "cuda" must launch each op's Triton
kernels as triton_kernel_wrapper nodes (in a subprocess without TRITON_INTERPRET, see
triton_ops_trace.py); the ops, run eagerly under TRITON_INTERPRET=1 on tiny CPU tensors, must give
the launchers' bits, the reference's values and, through their registered autograd, torch's
gradients. With CUDA: torch.library.opcheck, and torch.compile(inductor) against torch.nn.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fused_optim as fo
from fused_optim.reference import norm as reference
from fused_optim.ops import batch_norm as ops_batch_norm, clip as ops_clip, layer_norm as ops_layer_norm

from conftest import HAS_CUDA, TRITON_DEVICE, require_backend

HERE = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def triton_ops():
    require_backend("triton", TRITON_DEVICE)
    for module in (ops_layer_norm, ops_batch_norm, ops_clip):
        module.load_triton_ops()


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, seed=0, requires_grad=False):
    t = torch.randn(shape, generator=_generator(seed), dtype=dtype).to(TRITON_DEVICE)
    return t.requires_grad_(requires_grad)


def test_traced_graphs_launch_the_kernels():
    """Every op's forward and backward graph on CUDA FakeTensors, of static and of symbolic sizes,
    holds its kernel launches, and no opaque fused_optim op is left in it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    run = subprocess.run([sys.executable, str(HERE / "triton_ops_trace.py"), "auto"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    graphs = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {
        "layer_norm": ["layer_norm_forward_kernel"],
        "layer_norm_backward": ["layer_norm_backward_kernel", "column_sums_kernel"],
        "batch_norm_train": ["batch_norm_moments_kernel", "batch_norm_combine_kernel", "batch_norm_affine_kernel"],
        "batch_norm_eval": ["batch_norm_combine_kernel", "batch_norm_affine_kernel"],
        "batch_norm_backward_train": ["batch_norm_grad_sums_kernel", "batch_norm_grad_combine_kernel",
                                      "batch_norm_dx_kernel"],
        "batch_norm_backward_eval": ["batch_norm_grad_sums_kernel", "batch_norm_grad_combine_kernel",
                                     "batch_norm_dx_kernel"],
        # Two tensors: a partials launch each, one finalize, a scale each; a clamp each; a scale each.
        "clip": ["tensor_norm_partials_kernel"] * 2 + ["norm_finalize_kernel"] + ["tensor_scale_kernel"] * 2
                + ["tensor_clamp_kernel"] * 2 + ["tensor_scale_kernel"] * 2,
    }
    # Symbolic sizes: the same launches, every compile-time constant a plain value.
    for name in ("layer_norm", "layer_norm_backward", "batch_norm_train", "clip"):
        expected[name.replace("_train", "") + "_dynamic"] = expected[name]
    assert {name: kernels for name, (kernels, _) in graphs.items()} == expected
    assert all(not ops for _, ops in graphs.values()), graphs


def test_only_cuda_triton_calls_take_the_ops():
    cpu, meta = torch.empty(2, 3), torch.empty(2, 3, device="meta")
    assert not ops_layer_norm.uses_triton_ops(cpu, "triton")
    assert not ops_batch_norm.uses_triton_ops(meta, "auto")
    with torch._subclasses.fake_tensor.FakeTensorMode():
        cuda = torch.empty(2, 3, device="cuda")
        empty = torch.empty(0, 3, device="cuda")
        assert ops_layer_norm.uses_triton_ops(cuda, "auto") and ops_batch_norm.uses_triton_ops(cuda, "triton")
        assert not ops_layer_norm.uses_triton_ops(cuda, "reference") and not ops_batch_norm.uses_triton_ops(cuda,
                                                                                                            "cpp")
        assert not ops_layer_norm.uses_triton_ops(empty, "auto")
        assert ops_clip.uses_triton_ops([cuda], "auto") and not ops_clip.uses_triton_ops([cuda], "auto", 0.0)
    assert not ops_clip.uses_triton_ops([torch.empty(3)], "triton")  # eager tensors: the fast path


@pytest.mark.parametrize("shape,dtype", [((5, 37), torch.float32), ((3, 9000), torch.float32),
                                         ((6, 16), torch.bfloat16), ((4, 10), torch.float64)],
                         ids=["odd", "looped", "bf16", "f64"])
def test_layer_norm_ops_match_launchers_and_torch(shape, dtype):
    from fused_optim.triton import layer_norm as launchers

    x = _randn(*shape, dtype=dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    w, b = _randn(shape[1], dtype=compute, seed=1), _randn(shape[1], dtype=compute, seed=2)
    dy = _randn(*shape, dtype=dtype, seed=3)
    ours = torch.ops.fused_optim.layer_norm_forward_triton(x, w, b, 1e-5)
    theirs = launchers.layer_norm_forward(x, w, b, 1e-5)
    for a, e in zip(ours, theirs, strict=True):
        assert torch.equal(a, e)
    for a, e in zip(ours, reference.layer_norm_forward(x, w, b, 1e-5), strict=True):
        torch.testing.assert_close(a, e)
    grads = torch.ops.fused_optim.layer_norm_backward_triton(dy, x, w, ours[1], ours[2], True, True, True)
    expected = launchers.layer_norm_backward(dy, x, w, ours[1], ours[2], True, True, True)
    for a, e in zip(grads, expected, strict=True):
        assert torch.equal(a, e)
    none = torch.ops.fused_optim.layer_norm_backward_triton(dy, x, None, ours[1], ours[2], False, True, False)
    assert none[0].numel() == 0 and none[2].numel() == 0 and torch.equal(none[1], grads[1])


def test_layer_norm_op_autograd_gives_torchs_gradients():
    x = _randn(4, 3, 5).requires_grad_()
    w, b = _randn(3, 5, seed=1).requires_grad_(), _randn(3, 5, seed=2).requires_grad_()
    dy = _randn(4, 3, 5, seed=3)
    y = ops_layer_norm._layer_norm_triton(x, w, b, 2, 1e-5)
    ours = torch.autograd.grad(y, (x, w, b), dy)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y2 = torch.nn.functional.layer_norm(x2, (3, 5), w2, b2)
    torch.testing.assert_close(y, y2)
    for a, e in zip(ours, torch.autograd.grad(y2, (x2, w2, b2), dy), strict=True):
        torch.testing.assert_close(a, e)
    # A backward whose graph is built takes differentiable ops: double backward works.
    gx, = torch.autograd.grad(ops_layer_norm._layer_norm_triton(x, w, b, 2, 1e-5), x, dy, create_graph=True)
    gx2, = torch.autograd.grad(torch.nn.functional.layer_norm(x2, (3, 5), w2, b2), x2, dy, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(gx.pow(2).sum(), w)[0],
                               torch.autograd.grad(gx2.pow(2).sum(), w2)[0])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["planar", "nhwc"])
def test_batch_norm_op_matches_torch(training, memory_format):
    x = _randn(3, 4, 3, 5).to(memory_format=memory_format).requires_grad_()
    w, b = _randn(4, seed=1).requires_grad_(), _randn(4, seed=2).requires_grad_()
    rm, rv = _randn(4, seed=3), _randn(4, seed=4).abs() + 0.5
    rm2, rv2 = rm.clone(), rv.clone()
    dy = _randn(3, 4, 3, 5, seed=5)
    y, new_mean, new_var = ops_batch_norm._batch_norm_triton(x, w, b, rm, rv, training, 0.1, 1e-5)
    assert torch.equal(rm, rm2) and torch.equal(rv, rv2)  # the op returns the updates, it does not write them
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y2 = torch.nn.functional.batch_norm(x2, rm2, rv2, w2, b2, training, 0.1, 1e-5)
    torch.testing.assert_close(y, y2)
    assert y.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(new_mean, rm2)
    torch.testing.assert_close(new_var, rv2)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(y2, (x2, w2, b2), dy), strict=True):
        torch.testing.assert_close(a, e)


def test_batch_norm_ops_match_launchers():
    from fused_optim.triton import batch_norm as launchers

    x, dy = _randn(5, 7, 3), _randn(5, 7, 3, seed=1)
    w, b, rm, rv = _randn(7, seed=2), _randn(7, seed=3), _randn(7, seed=4), _randn(7, seed=5).abs() + 0.5
    ours = torch.ops.fused_optim.batch_norm_forward_triton(x, True, w, b, rm, rv, True, 0.1, 1e-5)
    rm2, rv2 = rm.clone(), rv.clone()
    theirs = launchers.batch_norm_forward(x, True, w, b, rm2, rv2, True, 0.1, 1e-5)
    for a, e in zip(ours, (*theirs, rm2, rv2), strict=True):
        assert torch.equal(a, e)
    grads = torch.ops.fused_optim.batch_norm_backward_triton(dy, x, True, w, ours[1], ours[2], True, True, True, True)
    for a, e in zip(grads, launchers.batch_norm_backward(dy, x, True, w, ours[1], ours[2], True, True, True, True),
                    strict=True):
        assert torch.equal(a, e)


def _gradients():
    """Awkward tensors: transposed, several chunks, complex, bfloat16."""
    return [_randn(5, 3).t(), _randn(9000, seed=1), _randn(3, dtype=torch.complex64, seed=2),
            _randn(11, dtype=torch.bfloat16, seed=3)]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0])
def test_clip_ops_match_the_launchers(norm_type):
    grads = _gradients()
    if norm_type != 2.0:
        grads = [g for g in grads if not g.is_complex()]
    expected = [g.clone() for g in grads]
    ours = [g.clone() for g in grads]
    total, factor = torch.ops.fused_optim.total_norm_triton(ours, norm_type, 1.0)
    torch.ops.fused_optim.scale_triton_(ours, factor)
    expected_total = ops_clip._clip_triton(expected, 1.0, norm_type, False)
    assert torch.equal(total, expected_total)
    exact = torch.nn.utils.get_total_norm([g.to(torch.complex128 if g.is_complex() else torch.float64) for g in grads],
                                          norm_type)
    torch.testing.assert_close(total, exact.to(total.dtype))
    for a, e in zip(ours, expected, strict=True):
        assert torch.equal(a, e)
    total, factor = torch.ops.fused_optim.total_norm_triton(grads, norm_type, None)
    assert factor.numel() == 0 and torch.equal(total, expected_total)


def test_clamp_op_matches_torch():
    grads = _gradients()
    ours = [g.clone() for g in grads]
    torch.ops.fused_optim.clamp_triton_(ours, -0.5, 0.5)
    for a, g in zip(ours, grads, strict=True):
        real = torch.view_as_real(g) if g.is_complex() else g
        assert torch.equal(torch.view_as_real(a) if a.is_complex() else a, real.clamp(-0.5, 0.5))
    assert not ours[0].is_contiguous()  # written back into the transposed tensor


@pytest.mark.parametrize("name,args", [
    ("layer_norm_forward_triton", lambda: (_randn(3, 7, requires_grad=True), _randn(7), None, 1e-5)),
    ("batch_norm_forward_triton", lambda: (_randn(2, 3, 4), False, _randn(3), _randn(3), _randn(3),
                                           _randn(3).abs() + 1, True, 0.1, 1e-5)),
    ("layer_norm_backward_triton", lambda: (_randn(3, 7), _randn(3, 7, seed=1), _randn(7, seed=2),
                                            _randn(3, seed=3), _randn(3, seed=4).abs(), True, True, False)),
    ("batch_norm_backward_triton", lambda: (_randn(2, 5, 3), _randn(2, 5, 3, seed=1), True, None, _randn(3),
                                            _randn(3).abs(), True, True, False, True)),
    ("total_norm_triton", lambda: ([_randn(5), _randn(2, 3)], 2.0, 1.0)),
    ("scale_triton_", lambda: ([_randn(5), _randn(3, 2).t()], torch.tensor(0.5, dtype=torch.float64,
                                                                           device=TRITON_DEVICE))),
    ("clamp_triton_", lambda: ([_randn(5), _randn(2, 3)], -0.1, 0.1)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    """The schema (declared mutations and aliasing) and the autograd registration; with CUDA, the
    fake implementation and AOT dispatch too (under the interpreter the kernels cannot take
    FakeTensors)."""
    utils = None if HAS_CUDA else ("test_schema", "test_autograd_registration")
    torch.library.opcheck(getattr(torch.ops.fused_optim, name), args(), test_utils=utils or
                          ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="compiles the Triton kernels for a GPU")


def _capturing_backend(graphs):
    """An AOT-autograd backend that keeps the Triton kernels each forward and backward graph launches."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    def compiler(gm, _):
        graphs.append([kernel_side_table.get_kernel(node.kwargs["kernel_idx"]).fn.__name__ for node in gm.graph.nodes
                       if node.op == "call_function" and "triton_kernel_wrapper" in str(node.target)])
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


def _model_pair():
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), fo.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(2), fo.LayerNorm(20)).cuda()
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.Flatten(2), torch.nn.LayerNorm(20)).cuda()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@cuda_only
def test_compiled_graphs_launch_the_kernels_on_cuda():
    torch._dynamo.reset()
    graphs = []
    model, _ = _model_pair()
    x = torch.randn(2, 3, 4, 5, device="cuda", requires_grad=True)
    torch.compile(model, backend=_capturing_backend(graphs), fullgraph=True)(x).sum().backward()
    forward, backward = graphs
    assert {"batch_norm_affine_kernel", "layer_norm_forward_kernel"} <= set(forward)
    assert {"batch_norm_dx_kernel", "layer_norm_backward_kernel", "column_sums_kernel"} <= set(backward)


@cuda_only
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_inductor_matches_torch_on_cuda(training):
    torch._dynamo.reset()
    ours, theirs = _model_pair()
    ours.train(training), theirs.train(training)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(2, 3, 4, 5, device="cuda")
    for _ in range(2):
        xs = [x.clone().requires_grad_() for _ in range(2)]
        ys = [compiled(xs[0]), theirs(xs[1])]
        torch.testing.assert_close(ys[0], ys[1])
        for y in ys:
            y.pow(2).sum().backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        for a, e in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a.grad, e.grad)
    for a, e in zip(ours.buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, e)


@cuda_only
def test_compiled_clipping_matches_torch_on_cuda():
    torch._dynamo.reset()
    grads = [torch.randn(5, 3, device="cuda").t(), torch.randn(9000, device="cuda"),
             torch.randn(7, device="cuda", dtype=torch.bfloat16)]

