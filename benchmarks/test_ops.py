"""One pytest-benchmark test per (op, workload, provider): the whole step, on its own copy of the
inputs. Grouped by op and workload, so pytest-benchmark's table compares the providers."""

import pytest
import torch

from fused_optim.benchmark import runner, workloads
from fused_optim.benchmark.ops import OPS

_inputs = {}


def shared_inputs(op, key, shapes, device, dtype):
    """The inputs of the last case, reused by its other providers (each clones them)."""
    if key not in _inputs:
        _inputs.clear()  # one case's master copy at a time
        _inputs[key] = op.make_inputs(shapes, device, dtype, seed=0)
    return _inputs[key]


def test_step(benchmark, bench_case, bench_options):
    case, provider_name = bench_case
    device, quick = bench_options["device"], bench_options["quick"]
    op = OPS[case.op]
    dtype = runner.DTYPES[case.dtype]
    provider = next(p for p in op.providers(device, dtype) if p.name == provider_name)
    if provider.reason:
        pytest.skip(f"{provider.name} unavailable: {provider.reason}")
    shapes = workloads.WORKLOADS[case.workload].shapes(device.type, quick)
    elements = workloads.numel(shapes)
    if provider.slow and not bench_options["reference"] and elements > runner.REFERENCE_LIMIT:
        pytest.skip(f"{provider.name} is slow at {elements} elements (--fo-reference times it)")
    inputs = shared_inputs(op, (case.op, case.workload, case.dtype, str(device), quick), shapes, device, dtype)
    step = provider.build(inputs)
    step()  # state creation, kernel compilation

    if device.type == "cuda":
        def timed():
            step()
            torch.cuda.synchronize(device)
    else:
        timed = step

    bytes_per_step = elements * op.bytes_per_element(dtype)
    benchmark.group = f"{case.op} {case.workload} {case.dtype} {device}"
    benchmark.extra_info.update(provider=provider.name, tensors=len(shapes), elements=elements,
                                bytes_per_step=bytes_per_step)
    benchmark(timed)
    if benchmark.stats is not None:  # None under --benchmark-disable: the step ran once, untimed
        benchmark.extra_info["gbps"] = bytes_per_step / benchmark.stats.stats.median / 1e9
