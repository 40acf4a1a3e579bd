"""One pytest-benchmark test per (op, workload, provider): the whole step, on its own copy of the
inputs. Grouped by op and workload, so pytest-benchmark's table compares the providers."""

import pytest
import torch

from fused_optim.benchmark import runner, workloads
from fused_optim.benchmark.ops import OPS

#: the inputs of the latest workload, shared by its ops and providers (each provider clones them)
_inputs = runner.InputCache()


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
    step = provider.build(_inputs.get(op, shapes, device, dtype, case.workload, quick))
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
