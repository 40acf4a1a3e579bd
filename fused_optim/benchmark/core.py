"""What the op table is made of: providers, targets, check results, ops, and the comparison every
check uses. The ops themselves are in optim (ops.py), clip_ops and norm_ops."""

import dataclasses
import math
from typing import Callable, Optional, Tuple

import torch

from .. import _backend

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
    #: "pct_of_copy": % of the measured copy bandwidth; "speedup_vs": time of ``against`` / time;
    #: "speedup_vs_torch_best": time of the fastest torch provider / time
    metric: str
    threshold: float
    against: Optional[str] = None
    dtype: str = "float32"
    device_type: str = "cuda"

    def describe(self):
        if self.metric == "pct_of_copy":
            goal = f">= {self.threshold:g}% of copy bandwidth"
        elif self.metric == "speedup_vs_torch_best":
            goal = f">= {self.threshold:g}x faster than torch's fastest"
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
    #: run when no --op is given (False: by name only)
    default: bool = True


def fused_reason(backend, device_type):
    reason = _backend.unavailable_reason(backend, device_type)
    if reason is None and backend == "triton" and device_type != "cuda":
        reason = "Triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1), which is for tests, not timing"
    return reason


#: torch.testing.assert_close's default tolerances (rtol, atol) per dtype
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}

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
