"""LayerNorm and BatchNorm2d in the op table: forward + backward (and, as the ``-fwd`` ops, the
forward alone) of fused_optim's modules against torch's native modules (cuDNN on CUDA for
BatchNorm)."""

import dataclasses

import torch

from .. import _backend
from ..nn import normalization as fo_norm
from . import traffic
from .core import FAST_BACKENDS, CheckResult, Op, Provider, Target, compare, fused_reason


class Activations:
    """An input, the gradient arriving from above, and the layer's parameters (random affine)."""

    def __init__(self, shapes, device, dtype, seed, channels_last=False):
        (shape,) = shapes
        generator = torch.Generator(device=device).manual_seed(seed)
        self.x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        self.dy = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
            self.dy = self.dy.contiguous(memory_format=torch.channels_last)
        features = shape[-1] if not channels_last and len(shape) == 2 else shape[1]
        self.weight = 1.0 + 0.1 * torch.randn(features, generator=generator, device=device, dtype=dtype)
        self.bias = 0.1 * torch.randn(features, generator=generator, device=device, dtype=dtype)


def _forward_backward(module, inputs):
    """One timed call: forward, then the gradients of input, weight and bias (no accumulation)."""
    x = inputs.x.detach().requires_grad_(True)
    params = (x, module.weight, module.bias)

    def step():
        return torch.autograd.grad(module(x), params, inputs.dy)

    return step


def _forward(module, inputs):
    """One timed call: the forward alone, without autograd (inference, or the forward share of a step)."""
    x = inputs.x.detach()

    def step():
        with torch.no_grad():
            return module(x)

    return step


def _module(make, inputs):
    module = make().to(device=inputs.x.device, dtype=inputs.x.dtype)
    with torch.no_grad():
        module.weight.copy_(inputs.weight)
        module.bias.copy_(inputs.bias)
    return module


def norm_providers(fused_class, torch_class, features_of, device, dtype, timed=_forward_backward):
    """``timed(module, inputs)``: the call each provider times (_forward_backward or _forward)."""
    device = torch.device(device)

    def fused(backend):
        return lambda inputs: timed(_module(lambda: fused_class(features_of(inputs), backend=backend), inputs), inputs)

    def native(inputs):
        return timed(_module(lambda: torch_class(features_of(inputs)), inputs), inputs)

    providers = [Provider(f"fused_optim {b}", "fused_optim", fused(b), fused_reason(b, device.type)) for b in FAST_BACKENDS]
    providers.append(Provider("torch native", "torch", native))
    providers.append(Provider("reference", "fused_optim", fused("reference"), None, slow=True))
    return providers


def check_norm(name, fused_class, make_inputs, features_of, device, dtype):
    """Each fused_optim backend against the reference: output, input/weight/bias gradients and, for
    BatchNorm, the running statistics after two training steps, on awkward shapes."""
    device = torch.device(device)
    dtype_name = str(dtype).replace("torch.", "")
    rows = []
    for backend in FAST_BACKENDS:
        reason = _backend.unavailable_reason(backend, device.type)
        if reason is not None:
            rows.append(CheckResult(name, backend, dtype_name, str(device), None, reason=reason))
            continue
        max_abs, max_ratio, problems, runs = 0.0, 0.0, [], 0
        for seed, inputs in enumerate(make_inputs(device, dtype)):
            results = []
            for which in (backend, "reference"):
                module = _module(lambda: fused_class(features_of(inputs), backend=which), inputs)
                out = {}
                for step in range(2):
                    x = inputs.x.detach().requires_grad_(True)
                    y = module(x)
                    dx, dw, db = torch.autograd.grad(y, (x, module.weight, module.bias), inputs.dy)
                    out.update({f"y {step}": y, f"dx {step}": dx, f"dweight {step}": dw, f"dbias {step}": db})
                out.update({f"buffer {k}": v.float() for k, v in module.named_buffers()})
                results.append(out)
            runs += 1
            case_abs, case_ratio, problem = compare(results[0], results[1], dtype)
            max_abs, max_ratio = max(max_abs, case_abs), max(max_ratio, case_ratio)
            if problem or case_ratio > 1.0:
                problems.append(f"input {list(inputs.x.shape)}: {problem or 'outside tolerance'}")
        rows.append(CheckResult(name, backend, dtype_name, str(device), not problems, max_abs, max_ratio, runs,
                                problems[0] if problems else None))
    return rows


def _layer_norm_check_inputs(device, dtype):
    return [Activations([s], device, dtype, seed) for seed, s in enumerate([(1, 1), (7, 7), (3, 1000), (2, 4097)])]


def _batch_norm_check_inputs(device, dtype, channels_last):
    return [Activations([s], device, dtype, seed, channels_last)
            for seed, s in enumerate([(2, 3, 1, 1), (5, 7, 3, 4), (4, 16, 9, 11)])]


def _features_last(inputs):
    return inputs.x.shape[-1]


def _channels(inputs):
    return inputs.x.shape[1]


# The C++ norm layers against torch's native ones on the CPU, fwd+bwd: at least 10% faster.
CPU_NORM_SPEEDUP = 1.1

LN_TARGETS = tuple(Target(w, "fused_optim triton", "speedup_vs", 1.0, against="torch native")
                   for w in ("ln-1024", "ln-8192", "ln-16384")) + tuple(
    Target(w, "fused_optim cpp", "speedup_vs", CPU_NORM_SPEEDUP, against="torch native", device_type="cpu")
    for w in ("ln-1024", "ln-8192"))

LAYER_NORM_OP = Op(
    name="layernorm",
    summary="LayerNorm forward + backward (affine)",
    workloads=("ln-1024", "ln-8192", "ln-16384"),
    config=dict(eps=1e-5, elementwise_affine=True),
    make_inputs=Activations,
    bytes_per_element=traffic.layer_norm,
    memory_per_element=lambda dtype: 6 * traffic.element_size(dtype),
    providers=lambda device, dtype: norm_providers(fo_norm.LayerNorm, torch.nn.LayerNorm, _features_last, device, dtype),
    check=lambda device, dtype: check_norm("layernorm", fo_norm.LayerNorm, _layer_norm_check_inputs, _features_last,
                                           device, dtype),
    targets=LN_TARGETS,
)


def batch_norm_op(channels_last):
    name = "batchnorm2d-cl" if channels_last else "batchnorm2d"

    def make_inputs(shapes, device, dtype, seed):
        return Activations(shapes, device, dtype, seed, channels_last)

    return Op(
        name=name,
        summary=f"BatchNorm2d forward + backward in training, {'channels_last' if channels_last else 'NCHW'} input",
        workloads=("resnet-bn",),
        config=dict(eps=1e-5, momentum=0.1, channels_last=channels_last),
        make_inputs=make_inputs,
        bytes_per_element=traffic.batch_norm,
        memory_per_element=lambda dtype: 6 * traffic.element_size(dtype),
        providers=lambda device, dtype: norm_providers(fo_norm.BatchNorm2d, torch.nn.BatchNorm2d, _channels, device,
                                                       dtype),
        check=lambda device, dtype: check_norm(
            name, fo_norm.BatchNorm2d, lambda d, t: _batch_norm_check_inputs(d, t, channels_last), _channels, device,
            dtype),
        targets=(Target("resnet-bn", "fused_optim triton", "speedup_vs", 0.8, against="torch native"),
                 Target("resnet-bn", "fused_optim cpp", "speedup_vs", CPU_NORM_SPEEDUP, against="torch native",
                        device_type="cpu")),
    )


def forward_op(op, bytes_per_element, fused_class, torch_class, features_of):
    """``op`` timing the forward alone (in training mode for BatchNorm: batch statistics, running
    statistics updated), run by name only; checked as ``op`` is, whose check covers the forward's
    output."""
    name = f"{op.name}-fwd"
    return dataclasses.replace(
        op, name=name, check=lambda device, dtype: [dataclasses.replace(r, op=name) for r in op.check(device, dtype)], summary=op.summary.replace("forward + backward", "forward"),
        bytes_per_element=bytes_per_element, memory_per_element=lambda dtype: 3 * traffic.element_size(dtype),
        providers=lambda device, dtype: norm_providers(fused_class, torch_class, features_of, device, dtype, _forward),
        targets=(), default=False,
    )


BATCH_NORM_OPS = (batch_norm_op(False), batch_norm_op(True))
NORM_OPS = (
    LAYER_NORM_OP,
    forward_op(LAYER_NORM_OP, traffic.layer_norm_forward, fo_norm.LayerNorm, torch.nn.LayerNorm, _features_last),
    *BATCH_NORM_OPS,
    *(forward_op(op, traffic.batch_norm_forward, fo_norm.BatchNorm2d, torch.nn.BatchNorm2d, _channels)
      for op in BATCH_NORM_OPS),
)
