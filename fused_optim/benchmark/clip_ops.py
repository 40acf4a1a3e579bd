"""Gradient clipping in the op table: ``clip_grad_norm_`` against torch.nn.utils'."""

import math

import torch

from .. import _backend
from ..nn import clip_grad as fo_clip
from . import traffic
from .core import FAST_BACKENDS, CheckResult, Op, ParamsAndGrads, Provider, Target, compare, fused_reason

#: clipping for real: after the first call the gradients' norm sits at max_norm, so every later
#: call still scales them (by 1 / (1 + 1e-6)): the full work on every provider
MAX_NORM = 1.0
TORCH_CLIP_MODES = {"torch foreach": dict(foreach=True), "torch for-loop": dict(foreach=False)}


def clip_providers(device, dtype):
    device = torch.device(device)

    def fused(backend):
        def build(inputs):
            params = inputs.clone()
            return lambda: fo_clip.clip_grad_norm_(params, MAX_NORM, backend=backend)
        return build

    def torch_mode(mode):
        def build(inputs):
            params = inputs.clone()
            return lambda: torch.nn.utils.clip_grad_norm_(params, MAX_NORM, **TORCH_CLIP_MODES[mode])
        return build

    providers = [Provider(f"fused_optim {b}", "fused_optim", fused(b), fused_reason(b, device.type)) for b in FAST_BACKENDS]
    providers += [Provider(mode, "torch", torch_mode(mode)) for mode in TORCH_CLIP_MODES]
    providers.append(Provider("reference", "fused_optim", fused("reference"), None, slow=True))
    return providers


def check_clip(device, dtype):
    """Each fused_optim backend against the reference: the total norm and the clipped gradients,
    for norms 2, 1 and inf, on awkward shapes with one gradient missing and one non-contiguous."""
    device = torch.device(device)
    dtype_name = str(dtype).replace("torch.", "")
    generator = torch.Generator().manual_seed(0)
    shapes = [(), (1,), (7,), (1023,), (4097,), (3, 5, 7), (33, 17)]
    base = [torch.randn(s, generator=generator, dtype=torch.float64).to(device, dtype) for s in shapes]
    rows = []
    for backend in FAST_BACKENDS:
        reason = _backend.unavailable_reason(backend, device.type)
        if reason is not None:
            rows.append(CheckResult("clip", backend, dtype_name, str(device), None, reason=reason))
            continue
        max_abs, max_ratio, problems, runs = 0.0, 0.0, [], 0
        for norm_type in (2.0, 1.0, math.inf):
            results = []
            for name in (backend, "reference"):
                params = [torch.zeros_like(g, requires_grad=True) for g in base] + [
                    torch.zeros(5, device=device, dtype=dtype, requires_grad=True)]
                for p, g in zip(params, base):
                    p.grad = g.t().contiguous().t() if g.dim() == 2 else g.clone()  # one transposed
                total = fo_clip.clip_grad_norm_(params, 0.5, norm_type, backend=name)
                results.append({"total": total, **{f"grad {i}": p.grad for i, p in enumerate(params[:-1])}})
            runs += 1
            case_abs, case_ratio, problem = compare(results[0], results[1], dtype)
            max_abs, max_ratio = max(max_abs, case_abs), max(max_ratio, case_ratio)
            if problem or case_ratio > 1.0:
                problems.append(f"norm {norm_type}: {problem or 'outside tolerance'}")
        rows.append(CheckResult("clip", backend, dtype_name, str(device), not problems, max_abs, max_ratio, runs,
                                problems[0] if problems else None))
    return rows


CLIP_OP = Op(
    name="clip",
    summary=f"clip_grad_norm_(max_norm={MAX_NORM}), 2-norm",
    workloads=("small", "mixed", "resnet50", "gpt2"),
    config=dict(max_norm=MAX_NORM, norm_type=2.0),
    make_inputs=ParamsAndGrads,
    bytes_per_element=traffic.clip,
    memory_per_element=lambda dtype: 2 * traffic.element_size(dtype),
    providers=clip_providers,
    check=check_clip,
    targets=(
        Target("small", "fused_optim triton", "speedup_vs", 3.0, against="torch foreach"),
        Target("mixed", "fused_optim cpp", "speedup_vs", 3.0, against="torch foreach", device_type="cpu"),
    ),
)
