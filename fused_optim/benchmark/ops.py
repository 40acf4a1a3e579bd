"""The table of ops that ``fused-optim bench`` times and ``fused-optim check`` verifies.

Each entry of ``OPS`` says how to make an op's inputs from a workload's shapes, the bytes a step
must move, which providers run it (fused_optim per backend, torch's implementations), how to
check each fused_optim backend against the reference, and the GPU targets read off a bench run.
A new op (clipping, a norm layer) is one more entry, built by a helper like ``optimizer_op``.
"""

import dataclasses
import functools
import math
from typing import Callable, Optional, Tuple

import torch

from .. import _backend
from .. import optim as fo_optim
from ..reference.optim import state_dtype
from . import traffic

#: fused_optim backends timed by the bench, besides the reference (listed separately: it is slow)
FAST_BACKENDS = ("cpp", "triton")


@dataclasses.dataclass(frozen=True)
class Provider:
    """One implementation of an op, e.g. 'fused_optim cpp' or 'torch fused'."""

    name: str
    #: "fused_optim" or "torch": speedups are over the best "torch" provider
    family: str
    #: build(inputs) -> a function running one step on the provider's own copy of the inputs
    build: Callable
    #: why it cannot run on this device and dtype; None when it can
    reason: Optional[str] = None
    #: slow enough that the default run times it on small workloads only
    slow: bool = False


@dataclasses.dataclass(frozen=True)
class Target:
    """A performance goal read off a bench run on a device type (the GPU targets of the project)."""

    workload: str
    provider: str
    #: "pct_of_copy": % of the measured copy bandwidth; "speedup_vs": time of ``against`` / time
    metric: str
    threshold: float
    against: Optional[str] = None
    dtype: str = "float32"
    device_type: str = "cuda"

    def describe(self):
        if self.metric == "pct_of_copy":
            goal = f">= {self.threshold:g}% of copy bandwidth"
        else:
            goal = f">= {self.threshold:g}x faster than {self.against}"
        return f"{self.provider} on {self.workload} ({self.dtype}): {goal}"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One row of ``fused-optim check``: an op on one backend and dtype against the reference."""

    op: str
    backend: str
    dtype: str
    device: str
    #: True / False; None when the backend could not run here (see ``reason``)
    passed: Optional[bool]
    max_abs_error: Optional[float] = None
    #: the largest |error| / (atol + rtol * |reference|); 1.0 is the tolerance
    error_ratio: Optional[float] = None
    #: optimizer runs compared (configs x layouts)
    runs: int = 0
    reason: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    summary: str
    #: the workloads it runs on (names in workloads.WORKLOADS)
    workloads: Tuple[str, ...]
    #: hyperparameters of the benchmarked step, recorded with the results
    config: dict
    #: make_inputs(shapes, device, dtype, seed) -> inputs shared by all providers' build()
    make_inputs: Callable
    #: bytes moved per element of the workload for a dtype (see traffic)
    bytes_per_element: Callable
    #: bytes one provider's copy of the inputs and state holds per element for a dtype
    memory_per_element: Callable
    #: providers(device, dtype) -> [Provider]
    providers: Callable
    #: check(device, dtype) -> [CheckResult]
    check: Callable
    targets: Tuple[Target, ...] = ()


# ----- inputs --------------------------------------------------------------------------------

class ParamsAndGrads:
    """Parameters with gradients; every provider steps its own clones."""

    def __init__(self, shapes, device, dtype, seed):
        generator = torch.Generator(device=device).manual_seed(seed)
        self.params = [torch.randn(s, generator=generator, device=device, dtype=dtype) for s in shapes]
        self.grads = [torch.randn(s, generator=generator, device=device, dtype=dtype) for s in shapes]

    def clone(self):
        params = []
        for p, g in zip(self.params, self.grads):
            p = p.clone().requires_grad_(True)
            p.grad = g.clone()
            params.append(p)
        return params


# ----- providers -----------------------------------------------------------------------------

TORCH_MODES = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True), "torch fused": dict(fused=True)}


@functools.lru_cache(maxsize=None)
def _torch_reason(torch_class, mode, device, dtype):
    """Why torch's ``mode`` of ``torch_class`` cannot step ``dtype`` tensors on ``device``, or None.

    Asked of torch itself, on one small tensor: support differs between versions and devices.
    """
    p = torch.zeros(2, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        torch_class([p], **TORCH_MODES[mode]).step()
    except Exception as error:  # any refusal (RuntimeError, ValueError) means: not available here
        return f"torch {torch.__version__}: {str(error).strip().splitlines()[0]}"
    return None


def _fused_reason(backend, device_type):
    reason = _backend.unavailable_reason(backend, device_type)
    if reason is None and backend == "triton" and device_type != "cuda":
        reason = "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1), which is for tests, not timing"
    return reason


def optimizer_providers(fo_class, torch_class, config, device, dtype):
    device = torch.device(device)

    def fused(backend):
        return lambda inputs: fo_class(inputs.clone(), backend=backend, **config).step

    def torch_mode(mode):
        return lambda inputs: torch_class(inputs.clone(), **TORCH_MODES[mode], **config).step

    providers = [Provider(f"fused_optim {b}", "fused_optim", fused(b), _fused_reason(b, device.type)) for b in FAST_BACKENDS]
    providers += [
        Provider(mode, "torch", torch_mode(mode), _torch_reason(torch_class, mode, str(device), dtype)) for mode in TORCH_MODES
    ]
    providers.append(Provider("reference", "fused_optim", fused("reference"), None, slow=True))
    return providers


# ----- check ---------------------------------------------------------------------------------

#: torch.testing.assert_close's default tolerances (rtol, atol) per dtype
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}

#: awkward shapes: 0-dim, single element, odd sizes around the kernels' block sizes, 3-D, empty;
#: one parameter gets no gradient (every step skips it)
CHECK_SHAPES = [(), (1,), (7,), (1023,), (4097,), (3, 5, 7), (0,), (5,)]
CHECK_STEPS = 3
#: checked separately, so a failure of strided tensors does not hide the result of the others
LAYOUTS = ("contiguous", "non-contiguous")


def _check_params(device, dtype, seed, layout):
    """Random parameters and CHECK_STEPS sets of gradients: awkward shapes, or transposed ones."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    if layout == "contiguous":
        params = [rand(*s) for s in CHECK_SHAPES]
        grads = [[rand(*p.shape) if i < len(params) - 1 else None for i, p in enumerate(params)] for _ in range(CHECK_STEPS)]
    else:
        params = [rand(33, 17).t(), rand(4, 6, 5).transpose(0, 2)]
        grads = [[rand(*reversed(p.shape)).t() if p.dim() == 2 else rand(4, 6, 5).transpose(0, 2) for p in params]
                 for _ in range(CHECK_STEPS)]
    return params, grads


def _run_steps(make_optimizer, params, grads):
    params = [p.clone().requires_grad_(True) for p in params]  # clone() keeps the strides
    optimizer = make_optimizer(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()
    tensors = {}
    for index, p in enumerate(params):
        tensors[f"param {index}"] = p.detach()
        for key, value in optimizer.state.get(p, {}).items():
            if key != "step" and isinstance(value, torch.Tensor):
                tensors[f"param {index} {key}"] = value
    return tensors


def compare(result, expected, dtype):
    """(max |error|, max error / tolerance, problem or None) of two {name: tensor} dicts."""
    if result.keys() != expected.keys():
        missing = sorted(expected.keys() - result.keys())
        extra = sorted(result.keys() - expected.keys())
        return math.inf, math.inf, f"state differs: missing {missing}, unexpected {extra}"
    rtol, atol = TOLERANCES[dtype]
    max_abs = 0.0
    max_ratio = 0.0
    for name, want in expected.items():
        got = result[name]
        if got.shape != want.shape:
            return math.inf, math.inf, f"{name}: shape {list(got.shape)}, expected {list(want.shape)}"
        got = got.detach().to("cpu", torch.float64)
        want = want.detach().to("cpu", torch.float64)
        if got.numel() == 0:
            continue
        # Equal values (infinities included) and NaN against NaN agree; any other NaN is an infinite error.
        agree = (got == want) | (got.isnan() & want.isnan())
        error = (got - want).abs().nan_to_num(nan=math.inf, posinf=math.inf).masked_fill(agree, 0.0)
        tolerance = atol + rtol * want.abs().nan_to_num(nan=0.0, posinf=math.inf)
        max_abs = max(max_abs, error.max().item())
        max_ratio = max(max_ratio, (error / tolerance).nan_to_num(nan=math.inf, posinf=math.inf).max().item())
    return max_abs, max_ratio, None


def check_optimizer(name, fo_class, torch_class, configs, device, dtype):
    """Every fused_optim backend that runs on ``device`` (and torch.optim, for float32/float64)
    against the reference, over ``configs`` after CHECK_STEPS steps with fresh random gradients."""
    device = torch.device(device)
    dtype_name = str(dtype).replace("torch.", "")
    rows = []
    candidates = []
    for backend in FAST_BACKENDS:
        reason = _backend.unavailable_reason(backend, device.type)
        candidates.append((backend, reason, lambda ps, config, b=backend: fo_class(ps, backend=b, **config)))
    torch_reason = None if dtype in (torch.float32, torch.float64) else "torch.optim keeps 16-bit state for 16-bit params; compared in float32 and float64 only"
    candidates.append(("torch.optim", torch_reason, lambda ps, config: torch_class(ps, foreach=False, **config)))
    for label, reason, make in candidates:
        if reason is not None:
            rows.append(CheckResult(name, label, dtype_name, str(device), None, reason=reason))
            continue
        max_abs, max_ratio, problems, runs = 0.0, 0.0, [], 0
        for index, config in enumerate(configs):
            for layout in LAYOUTS:
                params, grads = _check_params(device, dtype, index, layout)
                expected = _run_steps(lambda ps: fo_class(ps, backend="reference", **config), params, grads)
                runs += 1
                try:
                    result = _run_steps(lambda ps: make(ps, config), params, grads)
                except Exception as error:  # a crash is a failed check, reported with the others
                    problems.append(f"{layout} {config}: {type(error).__name__}: {error}")
                    continue
                case_abs, case_ratio, problem = compare(result, expected, dtype)
                max_abs, max_ratio = max(max_abs, case_abs), max(max_ratio, case_ratio)
                if problem or case_ratio > 1.0:
                    problems.append(f"{layout} {config}: {problem or 'outside tolerance'}")
        detail = None
        if problems:
            detail = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        rows.append(CheckResult(name, label, dtype_name, str(device), not problems, max_abs, max_ratio, runs, detail))
    return rows


# ----- the table -----------------------------------------------------------------------------

OPTIMIZER_WORKLOADS = ("large", "small", "resnet50", "gpt2", "1b")

#: on CUDA, fused_optim's triton step against torch's fastest on real models' parameter lists
STEP_TARGETS = (
    Target("gpt2", "fused_optim triton", "speedup_vs", 1.2, against="torch fused"),
    Target("resnet50", "fused_optim triton", "speedup_vs", 1.2, against="torch fused"),
)
#: Adam/AdamW over 1B float32 parameters: near the memory system's limit
BANDWIDTH_TARGETS = (Target("1b", "fused_optim triton", "pct_of_copy", 90.0),)


def optimizer_op(name, summary, fo_class, torch_class, config, n_state, check_configs, targets):
    def memory_per_element(dtype):
        param = traffic.element_size(dtype)
        return 2 * param + n_state * traffic.element_size(state_dtype(dtype))

    return Op(
        name=name,
        summary=summary,
        workloads=OPTIMIZER_WORKLOADS,
        config=dict(config),
        make_inputs=ParamsAndGrads,
        bytes_per_element=lambda dtype: traffic.optimizer_step(dtype, n_state),
        memory_per_element=memory_per_element,
        providers=functools.partial(optimizer_providers, fo_class, torch_class, config),
        check=functools.partial(check_optimizer, name, fo_class, torch_class, check_configs),
        targets=tuple(targets),
    )


OPS = {
    op.name: op
    for op in [
        optimizer_op(
            "sgd", "SGD, momentum 0.9", fo_optim.SGD, torch.optim.SGD, dict(lr=1e-3, momentum=0.9), n_state=1,
            check_configs=[
                dict(lr=0.1),
                dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
                dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                dict(lr=0.1, momentum=0.5, maximize=True),
            ],
            targets=STEP_TARGETS,
        ),
        optimizer_op(
            "adam", "Adam", fo_optim.Adam, torch.optim.Adam, dict(lr=1e-3), n_state=2,
            check_configs=[
                dict(lr=1e-2),
                dict(lr=1e-2, weight_decay=0.01, amsgrad=True),
                dict(lr=1e-2, betas=(0.3, 0.99), eps=1e-6, maximize=True),
            ],
            targets=BANDWIDTH_TARGETS + STEP_TARGETS,
        ),
        optimizer_op(
            "adamw", "AdamW, weight decay 0.01", fo_optim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01),
            n_state=2,
            check_configs=[
                dict(lr=1e-2),
                dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
                dict(lr=1e-2, betas=(0.8, 0.9), maximize=True),
            ],
            targets=BANDWIDTH_TARGETS + STEP_TARGETS,
        ),
    ]
}
