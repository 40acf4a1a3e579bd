"""What the Triton kernels compile to on a GPU, checked on a machine without one.

Each row of _launches() runs a real launcher (LayerNorm, BatchNorm, clipping, an optimizer's step) on
CPU tensors with its kernels replaced by recorders, so every kernel launch it would make on a GPU is
captured with the exact arguments, constexprs and num_warps the launcher chose. Each captured launch is bound the way
Triton's JIT binds it on a GPU (argument types, 16-byte pointer alignment, integer divisibility),
compiled ahead of time with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90 or 80, 32))``
(Triton ships ptxas), and checked:

- it compiles;
- ptxas reports no spill stores or loads (float32, bfloat16, float16; float64 rows say why
  where they may spill);
- in an aligned variant (the launcher found every pointer 16-byte aligned and the row or channel
  stride a multiple of 128 bits), every global load and store of a streamed tensor (KERNELS names
  them) is 128 bits wide: ld.global.v4.b32 / v2.b64 (8 bfloat16 or float16, 4 float32, 2 float64
  per access). Kernels with a masked tail (clipping's last chunk of each tensor) may keep scalar
  accesses under a predicate; their unpredicated accesses, the full-chunk path, must be 128-bit;
- no 32-bit integer multiply in the kernel (an element index that could pass 2^31 would wrap);
- every float scalar argument is typed float64 (eps, momentum and p exact for float64 tensors).

The compile runs in a subprocess: the test process runs Triton under TRITON_INTERPRET=1, where
kernels cannot be compiled. By default a representative subset of the rows runs (1.5 minutes on 2 cores);
FUSED_OPTIM_CODEGEN=full runs every row, FUSED_OPTIM_CODEGEN=<regex> the rows whose id matches.
``python tests/test_triton_codegen.py [--full]`` prints the table of registers, spills and access
widths.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELECT = os.environ.get("FUSED_OPTIM_CODEGEN", "")  # "", "full", or a regular expression on row ids
SMS = 132  # streaming multiprocessors of the H100 / H200 the program budgets are sized for


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """What the checks need to know of a kernel. streamed: the pointer arguments of its bulk
    tensors ("*table" for the addresses it reads from its argument ``table``); an access counts as
    streamed when its address is computed from one of them. masked_tail: its last partial chunk
    may stay scalar under a predicate. fp64_spills: why float64 may spill (None: it may not)."""
    streamed: tuple
    masked_tail: bool = False
    fp64_spills: str = None
    #: 32-bit scalar loads through the table that are not a stream: an optimizer's per-tensor
    #: counter (step count or first-step flag), read once per program before the loop
    counter_loads: int = 0


# channels_last float64 on sm_80 (at 4 warps, 16 doubles per thread per array): ptxas allots 64 to 128
# registers and spills 8 bytes; sm_90 does not spill.
SM80_FP64_TILE = "sm_80 spills 8 bytes of the float64 channels_last tile"

# The fused_optim.triton modules whose kernels (names ending in _kernel) are recorded.
MODULES = ("layer_norm", "batch_norm", "clip", "optim", "adam", "sgd", "rmsprop", "adagrad")

# Every kernel the checks know, by module and name. A kernel launched but missing here fails.
KERNELS = {
    "layer_norm.layer_norm_forward_kernel": KernelSpec(("x_ptr", "y_ptr", "w_ptr", "b_ptr")),
    "layer_norm.layer_norm_backward_kernel": KernelSpec(("dy_ptr", "x_ptr", "w_ptr", "dx_ptr", "partial_ptr")),
    "layer_norm.column_sums_kernel": KernelSpec(("partial_ptr", "out_ptr")),
    "batch_norm.batch_norm_moments_kernel": KernelSpec(("x_ptr",), fp64_spills=SM80_FP64_TILE),
    "batch_norm.batch_norm_combine_kernel": KernelSpec((), fp64_spills=SM80_FP64_TILE),
    "batch_norm.batch_norm_affine_kernel": KernelSpec(("x_ptr", "y_ptr")),
    "batch_norm.batch_norm_grad_sums_kernel": KernelSpec(("dy_ptr", "x_ptr")),
    "batch_norm.batch_norm_grad_combine_kernel": KernelSpec(()),
    "batch_norm.batch_norm_dx_kernel": KernelSpec(("dy_ptr", "x_ptr", "dx_ptr")),
    "clip.norm_partials_kernel": KernelSpec(("*table",), masked_tail=True),
    "clip.norm_finalize_kernel": KernelSpec(()),
    "clip.scale_kernel": KernelSpec(("*table",), masked_tail=True),
    "clip.clamp_kernel": KernelSpec(("*table",), masked_tail=True),
    # the optimizers: one launch over whole chunks of aligned tensors (ALIGNED), one over the rest
    "adam.adam_kernel": KernelSpec(("*table",), counter_loads=1),
    "sgd.sgd_kernel": KernelSpec(("*table",), counter_loads=1),
    "rmsprop.rmsprop_kernel": KernelSpec(("*table",)),
    "adagrad.adagrad_kernel": KernelSpec(("*table",), counter_loads=1),
    "optim.advance_counters_kernel": KernelSpec(()),
}

# The optimizer configurations compiled: every kernel flag on in one of them.
OPTIMIZERS = {
    "adam": ("Adam", dict(amsgrad=True, weight_decay=0.1)),
    "adamw": ("AdamW", dict(weight_decay=0.1)),
    "sgd": ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.1)),
    "rmsprop": ("RMSprop", dict(momentum=0.9, centered=True, weight_decay=0.1)),
    "adagrad": ("Adagrad", dict(lr_decay=0.1, weight_decay=0.1)),
}


# --- launcher configurations (run in the compile subprocess) ---------------------------------------

def _layer_norm(n, dtype, backward=False, offset=0, m=8):
    import torch
    from fused_optim.triton import layer_norm
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(m * n + offset, dtype=dtype)[offset:].view(m, n)
    w, b = torch.ones(n, dtype=compute), torch.zeros(n, dtype=compute)
    if not backward:
        return lambda: layer_norm.layer_norm_forward(x, w, b, 1e-5)
    mean, rstd = torch.zeros(m, dtype=compute), torch.ones(m, dtype=compute)
    return lambda: layer_norm.layer_norm_backward(x, x, w, mean, rstd, True, True, True)


def _batch_norm(shape, dtype, channels_last, backward=False, offset=0):
    import math
    import torch
    from fused_optim.triton import batch_norm
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(math.prod(shape) + offset, dtype=dtype)[offset:].view(shape)
    c = shape[2] if channels_last else shape[1]
    w, b = torch.ones(c, dtype=compute), torch.zeros(c, dtype=compute)
    rm, rv = torch.zeros(c, dtype=compute), torch.ones(c, dtype=compute)
    if not backward:
        return lambda: batch_norm.batch_norm_forward(x, channels_last, w, b, rm, rv, True, 0.1, 1e-5)
    mean, rstd = torch.zeros(c, dtype=compute), torch.ones(c, dtype=compute)
    return lambda: batch_norm.batch_norm_backward(x, x, channels_last, w, mean, rstd, True, True, True, True)


def _clip(sizes, dtype, op, offset=0):
    import torch
    from fused_optim.triton import clip
    grads = [torch.randn(n + offset, dtype=dtype)[offset:] for n in sizes]

    def launch():
        tensors = clip.TensorList(grads)
        if op == "norm":
            partials = torch.zeros(tensors.n_chunks, dtype=torch.float64)
            clip.norm_partials(tensors, partials, 2.0)
            clip.finalize(partials, 2.0, dtype, max_norm=1.0)
        elif op == "scale":
            clip.scale_(tensors, torch.ones((), dtype=torch.float64))
        else:
            clip.clamp_(tensors, -1.0, 1.0)
    return launch


def _optimizer(name, dtype, offset=0):
    """One step of the optimizer with max_grad_norm (so the gradient norm's launch is recorded too)
    on a 3.5-chunk tensor, a one-chunk tensor and a 7-element tensor."""
    import torch
    import fused_optim
    from fused_optim import _backend
    cls, kwargs = OPTIMIZERS[name]
    params = [torch.nn.Parameter(torch.randn(n + offset, dtype=dtype)[offset:]) for n in (4096 * 3 + 100, 4096, 7)]
    for p in params:
        p.grad = torch.randn(p.numel() + offset, dtype=dtype)[offset:]
    opt = getattr(fused_optim, cls)(params, lr=1e-3, backend="triton", max_grad_norm=1.0, **kwargs)

    def step():
        # the kernels are recorded, not run: CPU tensors may take the Triton path here
        resolve, _backend.resolve = _backend.resolve, lambda name, device: "triton"
        try:
            opt.step()
        finally:
            _backend.resolve = resolve
    return step


def _launches():
    """(id, in the default subset, launch factory) for every launcher configuration checked."""
    import torch
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    rows = []
    for name, dtype in dtypes.items():
        for n in (1024, 4096, 8192, 16384):
            for direction in ("fwd", "bwd"):
                quick = n in (1024, 8192) and name in ("fp32", "bf16") or (n == 8192 and direction == "bwd")
                rows.append((f"layer_norm-{direction}-N{n}-{name}", quick,
                             lambda n=n, d=dtype, b=direction == "bwd": _layer_norm(n, d, b)))
        rows.append((f"layer_norm-fwd-N1000-offset1-{name}", name == "fp32",
                     lambda d=dtype: _layer_norm(1000, d, offset=1)))
        for layout, shape in (("planar", (8, 64, 3136)), ("channels_last", (8, 3136, 64)),
                              ("channels_last", (8, 196, 512)), ("planar", (8, 512, 196))):
            last = layout == "channels_last"
            for direction in ("fwd", "bwd"):
                quick = name in ("fp32", "bf16") and shape[1] in (64, 3136) or (last and name == "fp16")
                rows.append((f"batch_norm-{direction}-{layout}-{'x'.join(map(str, shape))}-{name}", quick,
                             lambda s=shape, d=dtype, cl=last, b=direction == "bwd": _batch_norm(s, d, cl, b)))
        for op in ("norm", "scale", "clamp"):
            rows.append((f"clip-{op}-{name}", name != "fp64" or op == "norm",
                         lambda d=dtype, op=op: _clip([8192 * 3 + 100, 4096, 7], d, op)))
        rows.append((f"clip-norm-offset1-{name}", name == "bf16", lambda d=dtype: _clip([1000], d, "norm", offset=1)))
        for opt in OPTIMIZERS:
            quick = (opt, name) in {("adam", "fp32"), ("adam", "bf16"), ("rmsprop", "fp32"), ("sgd", "fp16"),
                                    ("adagrad", "bf16")}
            rows.append((f"optim-{opt}-{name}", quick, lambda o=opt, d=dtype: _optimizer(o, d)))
        rows.append((f"optim-adam-offset1-{name}", name == "fp32", lambda d=dtype: _optimizer("adam", d, offset=1)))
    return rows


# --- the compile subprocess ------------------------------------------------------------------------

_INSTRUCTION = re.compile(r"^(@!?%p\d+\s+)?([a-z][\w.:]*)\s+(.*);$")
_ACCESS = re.compile(r"^(ld|st)\.global\b")
_REGISTER = re.compile(r"%[a-z]+\d+")
_PARAM = re.compile(r"_param_(\d+)\b")
_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_MULI = re.compile(r"%[\w#]+ = arith\.muli [^:\n]*: (?:tensor<[\dx]+xi32|i32)\b")


def _record(modules):
    """Replace every kernel of ``modules`` by a recorder; returns (launch list, restore)."""
    from triton.runtime.jit import JITFunction
    launches, saved = [], []

    class Recorder:
        def __init__(self, module, name, fn):
            self.key, self.fn = f"{module.__name__.rsplit('.', 1)[1]}.{name}", fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.key, self.fn, args, kwargs))

    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and name.endswith("_kernel"):
                saved.append((module, name, value))
                setattr(module, name, Recorder(module, name, value))

    def restore():
        for module, name, value in saved:
            setattr(module, name, value)
    return launches, restore


def _bind(fn, args, kwargs, backend):
    """(signature, constexprs, attrs, options) as Triton's JIT builds them for this launch on a GPU."""
    from triton.runtime.jit import create_function_from_signature, find_paths_if, get_iterable_path
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    values = [s[0] for s in specialization]
    signature = {p.name: v for p, v in zip(fn.params, values)}
    constexprs = {path: get_iterable_path(list(bound.values()), path)
                  for path in find_paths_if(values, lambda _, v: v == "constexpr")}
    attr_values = ["" if s[0] == "constexpr" else s[1] for s in specialization]
    attrs = {path: backend.parse_attr(get_iterable_path(attr_values, path))
             for path in find_paths_if(attr_values, lambda _, v: isinstance(v, str))}
    return signature, constexprs, attrs, options


def _address_sources(ptx, params):
    """For each global load and store of the PTX, (kind, bits, predicated, sources): the kernel
    arguments its address is computed from, by data flow over the PTX registers. A value loaded
    from memory carries "*name" for the pointer argument it was loaded through, so an address read
    from a launch table has source "*table" and the table's own entries have source "table"."""
    body = []
    for text in ptx.splitlines():
        text = text.split("//")[0].strip()
        if m := _INSTRUCTION.match(text):
            body.append(m.groups())
    sources, changed = {}, True
    while changed:
        changed = False
        for predicate, op, operands in body:
            if op.startswith("st."):
                continue
            if "[" in operands:
                dests, address = operands.split("[", 1)
                if m := _PARAM.search(address):
                    new = {params[int(m.group(1))]} if int(m.group(1)) < len(params) else set()
                else:
                    new = {"*" + s for r in _REGISTER.findall(address) for s in sources.get(r, ()) if s[0] != "*"}
            else:
                dests, _, srcs = operands.partition(",") if not operands.startswith("{") else operands.partition("}")
                new = {s for r in _REGISTER.findall(srcs) for s in sources.get(r, ())}
            for r in _REGISTER.findall(dests):
                if not new <= sources.setdefault(r, set()):
                    sources[r] |= new
                    changed = True
    accesses = []
    for predicate, op, operands in body:
        if m := _ACCESS.match(op):
            suffixes = op.split(".")
            vec = next((int(x[1:]) for x in suffixes if re.fullmatch(r"v\d", x)), 1)
            width = next(int(x[1:]) for x in reversed(suffixes) if re.fullmatch(r"[bufs]\d+", x))
            address = operands[operands.index("["):operands.index("]")]
            origin = set().union(*(sources.get(r, set()) for r in _REGISTER.findall(address)))
            accesses.append((m.group(1), vec * width, bool(predicate), sorted(origin)))
    return accesses


def _int32_products(ttgir):
    """The 32-bit integer multiplies in the TTGIR: where an element index (a row times a stride, a
    split times its size) would wrap past 2^31. The kernels form every product in int64."""
    return [m.group(0) for m in _MULI.finditer(ttgir)]


def _selected(select):
    """The LAUNCHES rows to compile: the default subset, all ("full"), or those whose id matches."""
    return [(row, factory) for row, quick, factory in _launches()
            if (select == "full" or (re.search(select, row) if select else quick))]


def compile_all(select):
    """Compile every captured launch of the selected LAUNCHES rows for sm_90 (and some for sm_80)."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import torch
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    import importlib
    modules = [importlib.import_module(f"fused_optim.triton.{name}") for name in MODULES]
    from fused_optim.triton import batch_norm, layer_norm

    # The program budgets the launchers size their grids with on a GPU of SMS multiprocessors.
    layer_norm.BACKWARD_PROGRAMS_CPU = layer_norm.BACKWARD_PROGRAMS_PER_SM * SMS
    batch_norm.PROGRAMS_CPU = batch_norm.PROGRAMS_PER_SM * SMS
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # ptxas reports registers and spills only when it runs
    torch.manual_seed(0)
    results, cache = [], {}
    for row, factory in _selected(select):
        launches, restore = _record(modules)
        try:
            factory()()
        finally:
            restore()
        for arch in (90, 80) if (select == "full" or "fp32" in row) else (90,):
            target = GPUTarget("cuda", arch, 32)
            backend = make_backend(target)
            for key, fn, args, kwargs in launches:
                signature, constexprs, attrs, options = _bind(fn, args, kwargs, backend)
                source = ASTSource(fn, signature, constexprs, attrs)
                cache_key = (arch, source.hash(), json.dumps(options, sort_keys=True, default=str))
                if cache_key not in cache:
                    log = io.StringIO()
                    with contextlib.redirect_stdout(log):
                        compiled = triton.compile(source, target=target, options=options)
                    stack, spill_stores, spill_loads = map(int, _PTXAS.search(log.getvalue()).groups())
                    params = [name for name, kind in signature.items() if kind != "constexpr"]
                    streamed = set(KERNELS.get(key, KernelSpec(())).streamed)
                    cache[cache_key] = dict(
                        regs=int(_REGS.search(log.getvalue()).group(1)), stack=stack,
                        spills=spill_stores + spill_loads, shared=compiled.metadata.shared,
                        muls=_int32_products(compiled.asm["ttgir"]),
                        accesses=[a[:3] for a in _address_sources(compiled.asm["ptx"], params)
                                  if streamed & set(a[3])],
                    )
                aligned = kwargs.get("ALIGNED", False)
                dtype = next(str(v).removeprefix("*") for v in signature.values() if str(v).startswith("*"))
                narrow_floats = [name for name, kind in signature.items() if kind in ("fp32", "fp16", "bf16")]
                results.append(dict(row=row, arch=arch, kernel=key, aligned=bool(aligned), dtype=dtype,
                                    num_warps=options.get("num_warps", 4), narrow_floats=narrow_floats,
                                    **cache[cache_key]))
    return results


# --- the checks ------------------------------------------------------------------------------------

def _triton_nvidia_reason():
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the installed triton
        return f"Triton's NVIDIA backend is not installed ({e})"
    return None


@pytest.fixture(scope="module")
def compiled():
    reason = _triton_nvidia_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    args = [sys.executable, os.path.abspath(__file__), "--json"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def _describe(r):
    return f"{r['row']} {r['kernel']} sm_{r['arch']} aligned={r['aligned']} num_warps={r['num_warps']}"


def test_every_launch_compiled_and_known(compiled):
    assert compiled, "no launch was captured"
    assert not [r["kernel"] for r in compiled if r["kernel"] not in KERNELS]
    assert {row for row, _ in _selected(SELECT)} == {r["row"] for r in compiled}


def test_no_spills(compiled):
    bad = [f"{_describe(r)}: {r['spills']} B spilled, {r['stack']} B stack" for r in compiled
           if (r["spills"] or r["stack"]) and not (r["dtype"] == "fp64" and KERNELS[r["kernel"]].fp64_spills)]
    assert not bad, "\n".join(bad)


def test_aligned_variants_are_chosen(compiled):
    """A view at an odd offset runs the masked variant (its correctness is the interpreter tests'
    business); every kernel with streamed tensors is compiled in its aligned variant somewhere."""
    assert not [_describe(r) for r in compiled if "offset1" in r["row"] and r["aligned"]]
    streaming = {r["kernel"] for r in compiled if KERNELS[r["kernel"]].streamed}
    assert streaming == {r["kernel"] for r in compiled if r["aligned"] and KERNELS[r["kernel"]].streamed}


def test_aligned_variants_move_128_bits(compiled):
    bad = []
    for r in compiled:
        spec = KERNELS[r["kernel"]]
        if not (r["aligned"] and spec.streamed):
            continue
        accesses = [tuple(a) for a in r["accesses"]]
        kinds = {kind for kind, _, _ in accesses}
        if not kinds or not any(bits == 128 for kind, bits, _ in accesses if kind == "ld"):
            bad.append(f"{_describe(r)}: no 128-bit load of a streamed tensor")
        if "st" in kinds and not any(bits == 128 for kind, bits, _ in accesses if kind == "st"):
            bad.append(f"{_describe(r)}: no 128-bit store of a streamed tensor")
        narrow = [a for a in accesses if a[1] != 128 and not (spec.masked_tail and a[2])]
        for _ in range(spec.counter_loads):
            if ("ld", 32, False) in narrow:
                narrow.remove(("ld", 32, False))
        if narrow:
            bad.append(f"{_describe(r)}: {len(narrow)} narrower accesses, e.g. {narrow[:3]}")
    assert not bad, "\n".join(bad)


def test_float_arguments_are_float64(compiled):
    """A Python float argument is typed float32 by the JIT unless the kernel declares it: eps,
    momentum and p must reach float64 kernels exactly."""
    bad = [f"{_describe(r)}: {r['narrow_floats']}" for r in compiled if r["narrow_floats"]]
    assert not bad, "\n".join(bad)


def test_no_32_bit_index_products(compiled):
    bad = [f"{_describe(r)}: {r['muls']}" for r in compiled if r["muls"]]
    assert not bad, "\n".join(bad)


def _table(results):
    lines = ["| configuration | kernel | sm | warps | aligned | registers | spills (B) "
             "| 128-bit / all streamed accesses |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        wide = sum(bits == 128 for _, bits, _ in r["accesses"])
        lines.append(f"| {r['row']} | {r['kernel'].split('.')[1]} | {r['arch']} | {r['num_warps']} | "
                     f"{'yes' if r['aligned'] else 'no'} | {r['regs']} | {r['spills']} "
                     f"| {wide} / {len(r['accesses'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    out = compile_all("full" if "--full" in sys.argv else SELECT)
    if "--json" in sys.argv:
        print(json.dumps(out))
    else:
        print(_table(out))
