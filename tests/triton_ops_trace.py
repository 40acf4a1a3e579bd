"""Traces LayerNorm, BatchNorm and clipping on FakeTensors on "cuda" (no GPU needed) through AOT
autograd and prints, as JSON, the Triton kernels each forward and backward graph launches.

Run in its own process without TRITON_INTERPRET (under the interpreter the kernels are not traceable
JIT functions). Without a GPU, Triton has no active driver; the kernels' mutation analysis, which
only compiles them to Triton IR, is given a CUDA target.
"""

import json
import sys

import torch
import triton
from torch._functorch.aot_autograd import aot_function
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from functorch.compile import make_boxed_func

import fused_optim as fo
from fused_optim.ops import batch_norm as ops_batch_norm, clip as ops_clip, layer_norm as ops_layer_norm

if not torch.cuda.is_available():
    from triton.backends.compiler import GPUTarget

    class _TargetOnly:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    triton.runtime.driver.set_active(_TargetOnly())

for module in (ops_layer_norm, ops_batch_norm, ops_clip):
    module.load_triton_ops()

WRAPPERS = ("triton_kernel_wrapper_functional", "triton_kernel_wrapper_mutation")


def kernels_of(gm):
    """(kernel names launched, anything else the test rejects: fused_optim ops called, symbolic
    compile-time constants) of the nodes of a graph."""
    kernels, ops = [], []
    for node in gm.graph.nodes:
        name = getattr(node.target, "__name__", str(node.target))
        if node.op == "call_function" and name in WRAPPERS:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            kernels.append(getattr(kernel, "fn", kernel).__name__)
            constants = kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"])
            # Tile sizes and flags must be plain values, also under dynamic shapes.
            ops.extend(f"symbolic constant {name}" for name, value in constants.items()
                       if isinstance(value, (torch.SymInt, torch.SymBool, torch.SymFloat)))
        elif node.op == "call_function" and "fused_optim" in str(node.target):
            ops.append(str(node.target))
    return kernels, ops


def _symbolic_cuda(mode, shape, dtype):
    """A FakeTensor on "cuda" whose sizes are all symbolic (dynamic shapes)."""
    every_dim = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * len(shape))
    sizes = mode.from_tensor(torch.empty(shape, dtype=dtype), symbolic_context=every_dim).shape
    with mode:
        return torch.empty(sizes, dtype=dtype, device="cuda")


def trace(fn, *shapes_dtypes, dynamic=False):
    """The kernels and ops of fn's graph, traced by AOT autograd on FakeTensors on "cuda" (with
    dynamic: of symbolic sizes). No input requires grad: autograd cannot record CUDA tensors where
    torch has no CUDA, so each backward op is traced on its own."""
    graphs = []

    def compiler(gm, _):
        graphs.append(kernels_of(gm))
        return make_boxed_func(gm.forward)

    compiled = aot_function(fn, fw_compiler=compiler)
    mode = FakeTensorMode(shape_env=ShapeEnv() if dynamic else None)
    if dynamic:
        args = [_symbolic_cuda(mode, shape, dtype) for shape, dtype in shapes_dtypes]
    else:
        with mode:
            args = [torch.empty(shape, device="cuda", dtype=dtype) for shape, dtype in shapes_dtypes]
    with mode:
        compiled(*args)
    (graph,) = graphs
    return graph


F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16


def main(backend):
    results = {}
    results["layer_norm"] = trace(lambda x, w, b: fo.layer_norm(x, (3, 5), w, b, backend=backend),
                                  ((4, 3, 5), BF16), ((3, 5), F32), ((3, 5), F32))
    results["layer_norm_backward"] = trace(
        lambda dy, x, w, m, r: torch.ops.fused_optim.layer_norm_backward_triton(dy, x, w, m, r, True, True, True),
        ((4, 15), F32), ((4, 15), F32), ((15,), F32), ((4,), F32), ((4,), F32))
    # Training without running statistics: writing them back (copy_ into an input) needs torch's CUDA
    # device guard, which a build without CUDA lacks even for FakeTensors.
    results["batch_norm_train"] = trace(lambda x, w, b: fo.batch_norm(x, None, None, w, b, training=True,
                                                                      backend=backend),
                                        ((4, 3, 2, 5), F64), ((3,), F32), ((3,), F32))
    results["batch_norm_eval"] = trace(lambda x, w, b, rm, rv: fo.batch_norm(x, rm, rv, w, b, backend=backend),
                                       ((4, 3, 2, 5), F64), ((3,), F32), ((3,), F32), ((3,), F32), ((3,), F32))
    for training in (True, False):
        results[f"batch_norm_backward_{'train' if training else 'eval'}"] = trace(
            lambda dy, x, w, m, r: torch.ops.fused_optim.batch_norm_backward_triton(dy, x, True, w, m, r, training,
                                                                                     True, True, True),
            ((4, 10, 3), F32), ((4, 10, 3), F32), ((3,), F32), ((3,), F32), ((3,), F32))

    def clip(a, b):
        a, b = a * 1.0, b * 1.0  # intermediates, clipped in place
        total = fo.ops.clip.total_norm([a, b], 2.0, False, backend, max_norm=1.0)
        fo.ops.clip.clamp_([a, b], 0.5, backend)
        fo.ops.clip.clip_with_norm([a, b], 2.0, total, backend)
        return a.sum() + b.sum() + total

    results["clip"] = trace(clip, ((7, 3), F32), ((9,), BF16))

    # Symbolic sizes: tile sizes stay compile-time constants, grids and sizes symbolic.
    results["layer_norm_dynamic"] = trace(
        lambda x, w: torch.ops.fused_optim.layer_norm_forward_triton(x, w, None, 1e-5)[0] * 2,
        ((6, 37), F32), ((37,), F32), dynamic=True)
    results["layer_norm_backward_dynamic"] = trace(
        lambda dy, x, m, r: torch.ops.fused_optim.layer_norm_backward_triton(dy, x, None, m, r, True, True, True),
        ((70, 37), F32), ((70, 37), F32), ((70,), F32), ((70,), F32), dynamic=True)
    results["batch_norm_dynamic"] = trace(
        lambda x, w, b: fo.batch_norm(x, None, None, w, b, training=True, backend=backend),
        ((5, 3, 7, 9), F32), ((3,), F32), ((3,), F32), dynamic=True)
    results["clip_dynamic"] = trace(clip, ((7, 3), F32), ((9000,), BF16), dynamic=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "auto")
