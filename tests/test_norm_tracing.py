"""LayerNorm and BatchNorm under torch.compile, torch.export, torch.func and double backward.

torch.compile(fullgraph=True) must trace the layers without a graph break (counted with a counter
backend and torch._dynamo.explain) and give torch.nn's results; torch.export must export them in
training and eval; vmap(grad(...)), double backward and gradcheck's batched-gradient check must
give torch's gradients; torch.library.opcheck checks every registered op. Triton cases run under
TRITON_INTERPRET=1 on the CPU, so they are few and tiny.
"""

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import fused_optim as fo
from fused_optim import _backend

from conftest import BACKEND_DEVICES, backend_device_id, require_backend

BN_CLASSES = {1: (fo.BatchNorm1d, torch.nn.BatchNorm1d), 2: (fo.BatchNorm2d, torch.nn.BatchNorm2d),
              3: (fo.BatchNorm3d, torch.nn.BatchNorm3d)}
BN_SHAPES = {1: (4, 3, 5), 2: (4, 3, 3, 5), 3: (2, 3, 2, 3, 2)}


def randomized(module, seed=0):
    """module with random affine parameters and running statistics, so mix-ups show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=generator) + 0.5 if "var" in name or name == "weight" else \
                    torch.randn(t.shape, generator=generator)
                t.copy_(values)
    return module


def pair(kind, backend, dims=2, dtype=torch.float32):
    """(fused_optim module, torch.nn module) with identical parameters and buffers."""
    if kind == "layernorm":
        ours, theirs = fo.LayerNorm((3, 5), backend=backend), torch.nn.LayerNorm((3, 5))
    else:
        ours_class, torch_class = BN_CLASSES[dims]
        ours, theirs = ours_class(3, backend=backend), torch_class(3)
    randomized(ours)
    theirs.load_state_dict(ours.state_dict())
    return ours.to(dtype), theirs.to(dtype)


def conv_bn_ln(backend):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), fo.BatchNorm2d(4, backend=backend),
                               torch.nn.ReLU(), torch.nn.Flatten(2), fo.LayerNorm(20, backend=backend))


def torch_twin(model):
    """model with torch.nn's layers in place of fused_optim's, same state."""
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(2), torch.nn.LayerNorm(20))
    twin.load_state_dict(model.state_dict())
    return twin


def step(model, x, dy):
    """Output and gradients of x and every parameter after one forward/backward."""
    x = x.detach().clone().requires_grad_()
    y = model(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    return y.detach(), grads


def assert_all_close(actual, expected, **tolerances):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **tolerances)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph_has_no_graph_breaks(training):
    torch._dynamo.reset()
    model = conv_bn_ln("cpp").train(training)
    twin = torch_twin(model).train(training)
    x = torch.randn(2, 3, 4, 5)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    torch.testing.assert_close(compiled(x), twin(x), rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1
    explanation = torch._dynamo.explain(conv_bn_ln("cpp").train(training))(x)
    assert (explanation.graph_break_count, explanation.graph_count) == (0, 1)


def test_functional_calls_compile_without_graph_breaks():
    """fo.layer_norm / fo.batch_norm with the default backend (read from the environment) in one graph."""
    torch._dynamo.reset()

    def f(norm, x, w, running_mean, running_var):
        return norm.batch_norm(norm.layer_norm(x, (8,), w), running_mean, running_var, training=True)

    x, w = torch.randn(4, 3, 8), torch.rand(8) + 0.5
    stats, expected_stats = [torch.zeros(3), torch.ones(3)], [torch.zeros(3), torch.ones(3)]
    counter = CompileCounter()
    result = torch.compile(f, backend=counter, fullgraph=True)(fo, x, w, *stats)
    torch.testing.assert_close(result, f(torch.nn.functional, x, w, *expected_stats))
    assert counter.frame_count == 1
    assert_all_close(stats, expected_stats)


@pytest.mark.parametrize("kind,dims", [("layernorm", 0), ("batchnorm", 1), ("batchnorm", 2), ("batchnorm", 3)],
                         ids=["layernorm", "batchnorm1d", "batchnorm2d", "batchnorm3d"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_inductor_matches_torch(kind, dims, training):
    """Compiled with the default backend: output, gradients and running statistics as torch.nn's."""
    torch._dynamo.reset()
    ours, theirs = pair(kind, "cpp", dims)
    ours.train(training), theirs.train(training)
    shape = (4, 2, 3, 5) if kind == "layernorm" else BN_SHAPES[dims]
    x, dy = torch.randn(shape), torch.randn(shape)
    compiled = torch.compile(ours, fullgraph=True)
    for _ in range(2):
        assert_all_close(step(compiled, x, dy)[1], step(theirs, x, dy)[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert_all_close(list(ours.buffers()), list(theirs.buffers()))


def test_compile_channels_last_batch_norm():
    torch._dynamo.reset()
    ours, theirs = pair("batchnorm", "cpp", 2)
    x = torch.randn(4, 3, 3, 5).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(4, 3, 3, 5)
    compiled = torch.compile(ours, fullgraph=True)
    y, grads = step(compiled, x, dy)
    expected_y, expected_grads = step(theirs, x, dy)
    torch.testing.assert_close(y, expected_y, rtol=1e-5, atol=1e-5)
    assert_all_close(grads, expected_grads, rtol=1e-5, atol=1e-5)
    assert_all_close(list(ours.buffers()), list(theirs.buffers()))


@pytest.mark.parametrize("kind,dims", [("layernorm", 0), ("batchnorm", 1), ("batchnorm", 2)],
                         ids=["layernorm", "batchnorm1d", "batchnorm2d"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_export(kind, dims, training):
    ours, theirs = pair(kind, "cpp", dims)
    ours.train(training), theirs.train(training)
    shape = (4, 3, 5) if kind == "layernorm" else BN_SHAPES[dims]
    x = torch.randn(shape)
    program = torch.export.export(ours, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("fused_optim" in target for target in targets), targets
    torch.testing.assert_close(program.module()(x), theirs(x), rtol=1e-5, atol=1e-5)
    if kind == "batchnorm" and training:  # the exported program updates its copy of the buffers
        assert_all_close(list(program.module().buffers())[:2], list(theirs.buffers())[:2])


@pytest.mark.parametrize("backend_device", BACKEND_DEVICES, ids=backend_device_id)
@pytest.mark.parametrize("kind", ["layernorm", "batchnorm"])
def test_vmap_of_grad(backend_device, kind):
    backend, device = backend_device
    require_backend(backend, device)
    ours, theirs = pair(kind, backend, 1)
    ours, theirs = ours.eval().to(device), theirs.eval().to(device)  # eval: no in-place stat update under vmap
    xs = torch.randn(3, 4, 3, 5, device=device)

    def per_sample(model):
        params = dict(model.named_parameters())
        return torch.func.vmap(torch.func.grad(lambda x: torch.func.functional_call(model, params, (x,)).pow(2).sum()))

    torch.testing.assert_close(per_sample(ours)(xs), per_sample(theirs)(xs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend_device", BACKEND_DEVICES, ids=backend_device_id)
@pytest.mark.parametrize("kind,training", [("layernorm", True), ("batchnorm", True), ("batchnorm", False)],
                         ids=["layernorm", "batchnorm-train", "batchnorm-eval"])
def test_double_backward_matches_torch(backend_device, kind, training):
    """A gradient penalty: the gradient of |dL/dx|^2 with respect to x and the weight."""
    backend, device = backend_device
    require_backend(backend, device)
    ours, theirs = pair(kind, backend, 1, torch.float64)
    ours, theirs = ours.train(training).to(device), theirs.train(training).to(device)
    x = torch.randn(4, 3, 5, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for model in (ours, theirs):
        (gx,) = torch.autograd.grad(model(x).pow(3).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [x, model.weight, model.bias], allow_unused=True))
    for a, e in zip(*results):
        if e is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def gradcheck_cases():
    """Every kind on reference and cpp; the Triton interpreter is slow, so triton checks one."""
    kinds = (("layernorm", True), ("batchnorm", True), ("batchnorm", False))
    return [pytest.param(pair, kind, training,
                         id=f"{kind if kind == 'layernorm' else kind + ('-train' if training else '-eval')}-"
                            f"{backend_device_id(pair)}")
            for pair in BACKEND_DEVICES for kind, training in kinds
            if pair[0] != "triton" or (kind, training) == ("batchnorm", True)]


@pytest.mark.parametrize("backend_device,kind,training", gradcheck_cases())
def test_gradcheck_batched_and_gradgradcheck(backend_device, kind, training):
    backend, device = backend_device
    require_backend(backend, device)
    ours, _ = pair(kind, backend, 1, torch.float64)
    ours = ours.train(training).to(device)
    x = torch.randn(3, 3, 2 if backend == "triton" else 5, dtype=torch.float64, device=device, requires_grad=True)
    params = list(ours.parameters())

    def f(x, *p):
        return torch.func.functional_call(ours, dict(zip(["weight", "bias"], p)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, *params), check_batched_grad=backend != "triton")


def opcheck_cases():
    """(name, op, args) for every registered op on every backend (tiny shapes for Triton)."""
    ops = torch.ops.fused_optim
    cases = []
    for backend, device in BACKEND_DEVICES:
        if _backend.unavailable_reason(backend, torch.device(device).type) is not None:
            continue
        x = torch.randn(4, 3, 5, device=device, requires_grad=True)
        w = torch.randn(3, 5, device=device, requires_grad=True)
        b = torch.randn(3, 5, device=device, requires_grad=True)
        cases.append((f"layer_norm_forward-{backend}", ops.layer_norm_forward, (x, w, b, 2, 1e-5, backend)))
        cases.append((f"layer_norm_forward-noaffine-{backend}", ops.layer_norm_forward, (x, None, None, 1, 1e-5,
                                                                                          backend)))
        _, mean, rstd = ops.layer_norm_forward(x, w, b, 2, 1e-5, backend)
        cases.append((f"layer_norm_backward-{backend}", ops.layer_norm_backward,
                      (torch.randn(4, 3, 5, device=device), x.detach(), w.detach(), mean, rstd, 2, True, True, True,
                       backend)))
        for name, x in (("planar", torch.randn(4, 3, 6, device=device)),
                        ("channels_last", torch.randn(4, 3, 2, 3, device=device).contiguous(
                            memory_format=torch.channels_last))):
            x.requires_grad_()
            w = torch.rand(3, device=device, requires_grad=True)
            b = torch.randn(3, device=device, requires_grad=True)
            for training in (True, False):
                stats = (torch.randn(3, device=device), torch.rand(3, device=device) + 0.5)
                cases.append((f"batch_norm_forward-{name}-{training}-{backend}", ops.batch_norm_forward,
                              (x, w, b, *stats, training, 0.1, 1e-5, backend)))
            _, mean, rstd, _, _ = ops.batch_norm_forward(x, w, b, None, None, True, 0.1, 1e-5, backend)
            cases.append((f"batch_norm_backward-{name}-{backend}", ops.batch_norm_backward,
                          (torch.randn(x.shape, device=device), x.detach(), w.detach(), mean, rstd, True, True, False,
                           True, backend)))
    return cases


@pytest.mark.parametrize("name,op,args", opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, op, args):
    torch.library.opcheck(op, args)


def test_extension_is_not_loaded_while_tracing(monkeypatch):
    """Tracing a model never reaches the extension's loader (its lock and files): the backend is
    resolved when the compiled code runs."""
    from fused_optim import _cpp

    torch._dynamo.reset()
    calls = []
    real_get = _cpp.get
    monkeypatch.setattr(_cpp, "get", lambda: calls.append(torch.compiler.is_compiling()) or real_get())
    model = conv_bn_ln("cpp")
    torch.compile(model, backend="eager", fullgraph=True)(torch.randn(2, 3, 4, 5))
    assert calls and not any(calls)


@pytest.mark.slow
def test_compiled_model_trains_like_eager():
    """Three SGD steps of the compiled Conv-BN-LN model equal three of torch.nn's in eager."""
    torch._dynamo.reset()
    model = conv_bn_ln("cpp")
    twin = torch_twin(copy.deepcopy(model))
    compiled = torch.compile(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(2, 3, 4, 5, generator=generator)
        for m, opt in zip((compiled, twin), opts):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    assert_all_close(list(model.state_dict().values()), list(twin.state_dict().values()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["clip_grad_norm_", "clip_grad_value_", "get_total_norm"])
def test_clipping_compiles_without_graph_breaks(name):
    """Traced clipping is plain torch ops: one graph, torch.nn.utils' results and gradients."""
    torch._dynamo.reset()

    def parameters():
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3, generator=generator)), torch.nn.Parameter(torch.randn(7))]
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 3
        return params

    calls = {"clip_grad_norm_": lambda f, ps: f(ps, 1.0), "clip_grad_value_": lambda f, ps: f(ps, 0.5),
             "get_total_norm": lambda f, ps: f([p.grad for p in ps], 3.0)}[name]
    ours, theirs = parameters(), parameters()
    counter = CompileCounter()
    result = torch.compile(lambda ps: calls(getattr(fo, name), ps), backend=counter, fullgraph=True)(ours)
    expected = calls(getattr(torch.nn.utils, name), theirs)
    assert counter.frame_count == 1
    if expected is not None:
        torch.testing.assert_close(result, expected)
    assert_all_close([p.grad for p in ours], [p.grad for p in theirs])


@pytest.mark.parametrize("kind", ["layernorm", "batchnorm"])
def test_compiled_backward_runs_the_backward_op(kind):
    """The traced backward is fused_optim's backward op, not the differentiable-ops fallback."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch._dynamo.reset()
    graphs = []

    def keep(graph, _):
        graphs.append(graph)
        return make_boxed_func(graph.forward)

    ours, _ = pair(kind, "cpp", 2)
    x = torch.randn(4, 2, 3, 5) if kind == "layernorm" else torch.randn(4, 3, 3, 5)
    torch.compile(ours, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True)(
        x.requires_grad_()).sum().backward()
    forward, backward = ({str(n.target) for n in g.graph.nodes if n.op == "call_function"} for g in graphs)
    assert f"fused_optim.{kind.replace('norm', '_norm')}_forward.default" in forward
    assert f"fused_optim.{kind.replace('norm', '_norm')}_backward.default" in backward
    assert not any("mean" in target or "rsqrt" in target for target in backward), backward


def _batch_norm_inputs(shape, channels_last, dtype, stats, generator):
    x = torch.randn(shape, generator=generator).to(dtype)
    if channels_last:
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    c = shape[1]
    w, b = torch.rand(c, generator=generator) + 0.5, torch.randn(c, generator=generator)
    rm, rv = (torch.randn(c, generator=generator), torch.rand(c, generator=generator) + 0.5) if stats else (None, None)
    return x, w, b, rm, rv


@pytest.mark.parametrize("shape,channels_last", [((4, 3, 5), False), ((2, 5, 3, 7), True), ((3, 4, 1), False),
                                                 ((2, 3, 2, 3, 2), False), ((0, 3, 4), False)],
                         ids=["1d", "2d-channels-last", "spatial-1", "3d", "empty"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inductor_lowerings_match_the_ops(shape, channels_last, training, dtype):
    """The torch-ops lowerings inductor gets give what the ops give: values, strides, dtypes."""
    from fused_optim.ops import batch_norm

    lowered = batch_norm.inductor_lowerings()
    forward, backward = torch.ops.fused_optim.batch_norm_forward.default, torch.ops.fused_optim.batch_norm_backward.default
    generator = torch.Generator().manual_seed(3)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for stats in ([True, False] if training else [True]):
        x, w, b, rm, rv = _batch_norm_inputs(shape, channels_last, dtype, stats, generator)
        args = (x, w, b, rm, rv, training, 0.1, 1e-5, "cpp")
        ours, op = lowered[forward](*args), forward(*args)
        for a, e in zip(ours, op):
            assert (a.shape, a.dtype) == (e.shape, e.dtype)
            if a.numel():
                assert a.stride() == e.stride()
                torch.testing.assert_close(a, e, equal_nan=True, **tolerance)
        dy = torch.randn(x.shape, generator=generator).to(dtype)
        _, mean, rstd, _, _ = op
        for need in ((True, True, True), (True, False, False), (False, True, True)):
            bargs = (dy, x, w, mean, rstd, training, *need, "cpp")
            for a, e in zip(lowered[backward](*bargs), backward(*bargs)):
                assert (a.shape, a.dtype) == (e.shape, e.dtype)
                if a.numel():
                    assert a.stride() == e.stride()
                    torch.testing.assert_close(a, e, **tolerance)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_inductor_fuses_batch_norm(channels_last):
    """Under inductor, BatchNorm is generated code (no call to the op) and gives torch.nn's
    results, forward and backward, running statistics included."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    ours, theirs = pair("batchnorm", "cpp", 2)
    # no conv bias: BatchNorm removes it, so its gradient is rounding noise around 0
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1, bias=False), ours)
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1, bias=False), theirs)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 6, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(4, 3, 6, 5)
    compiled = torch.compile(model, fullgraph=True)
    (y, grads), code = run_and_get_code(lambda: step(compiled, x, dy))
    assert len(code) == 2 and not any("torch.ops.fused_optim" in c for c in code)  # forward and backward
    expected_y, expected_grads = step(twin, x, dy)
    torch.testing.assert_close(y, expected_y, rtol=1e-5, atol=1e-5)
    assert_all_close(grads, expected_grads, rtol=1e-4, atol=1e-5)
    assert_all_close(list(ours.buffers()), list(theirs.buffers()))


@pytest.mark.parametrize("imports", [
    ["import torch._inductor.decomposition as d", "import fused_optim"],
    ["import torch._inductor.decomposition as d", "d.select_decomp_table()", "import fused_optim"],
    ["import fused_optim", "import torch._inductor.decomposition as d"],
], ids=["inductor-first", "inductor-table-built-first", "fused-optim-first"])
def test_lowerings_reach_inductor_in_either_import_order(imports):
    import subprocess
    import sys

    script = "; ".join(["import sys", "import torch", *imports,
                        "import torch._inductor.decomposition as d",
                        "ops = [torch.ops.fused_optim.batch_norm_forward.default,"
                        " torch.ops.fused_optim.batch_norm_backward.default]",
                        "print(all(op in d.decompositions and op in d.select_decomp_table() for op in ops))"])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_import_does_not_load_inductor():
    import subprocess
    import sys

    script = "import sys, torch, fused_optim; print('torch._inductor' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_lowering_tag_follows_the_sources(tmp_path):
    """The tag in the compile caches' key changes with any source file the lowerings are made of."""
    import types

    from fused_optim import __version__
    from fused_optim._inductor import lowering_tag

    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for i, f in enumerate(files):
        f.write_text(f"x = {i}\n")
    modules = [types.SimpleNamespace(__file__=str(f)) for f in files]
    tag = lowering_tag(modules)
    assert tag.startswith(f"fused_optim-{__version__}-") and tag == lowering_tag(modules)
    files[1].write_text("x = 2\n")
    assert lowering_tag(modules) != tag


def test_compile_caches_are_keyed_on_the_lowerings(tmp_path):
    """AOT autograd's on-disk cache, which keys on the traced graph where the ops are opaque, also
    keys on the lowerings' tag: the same lowerings hit, other lowerings miss; a tag the user set
    stays in the key."""
    import json
    import os
    import subprocess
    import sys

    script = """
import json, torch, fused_optim as fo
import torch._inductor.decomposition
from torch._dynamo.utils import counters
from fused_optim._inductor import lowering_tag
cfg = torch.compiler.config
ours = lowering_tag()
tag = cfg.cache_key_tag
def run():
    torch._dynamo.reset()
    before = counters["aot_autograd"]["autograd_cache_hit"]
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, bias=False), fo.BatchNorm2d(3))
    torch.compile(model)(torch.randn(2, 3, 6, 6)).sum().backward()
    return counters["aot_autograd"]["autograd_cache_hit"] > before
first, again = run(), run()
cfg.cache_key_tag = tag.replace(ours, "fused_optim-0-another")
other = run()
print(json.dumps(dict(tag=tag, ours=ours, hits=[first, again, other])))
"""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path), TORCH_COMPILE_CACHE_KEY_TAG="mine",
               TORCHINDUCTOR_FX_GRAPH_CACHE="1", TORCHINDUCTOR_AUTOGRAD_CACHE="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tag"] == f"mine {result['ours']}"
    assert result["hits"] == [False, True, False]
