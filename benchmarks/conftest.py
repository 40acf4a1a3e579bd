"""pytest-benchmark suites over the same op table and workloads as ``fused-optim bench``.

    pytest benchmarks --benchmark-only                       # full sizes on cuda if present, else cpu
    pytest benchmarks --benchmark-only --fo-quick --benchmark-max-time=0.05   # tiny sizes: a smoke run
    pytest benchmarks --benchmark-only --fo-device cpu --fo-dtype bfloat16 -k gpt2
"""

import pytest
import torch

from fused_optim.benchmark import runner
from fused_optim.benchmark.ops import OPS


def pytest_addoption(parser):
    group = parser.getgroup("fused_optim benchmarks")
    group.addoption("--fo-device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    group.addoption("--fo-dtype", default="float32", choices=list(runner.DTYPES), help="parameter dtype (default: float32)")
    group.addoption("--fo-quick", action="store_true", help="tiny sizes, as fused-optim bench --quick")
    group.addoption("--fo-reference", action="store_true", help="also time the slow reference on large workloads")


def bench_device(config):
    name = config.getoption("--fo-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--fo-device {name}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--fo-device {name}: CUDA is not available here")
    return device


def pytest_configure(config):
    bench_device(config)  # a bad --fo-device stops the run with its message before collection


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = bench_device(config)
    dtype = config.getoption("--fo-dtype")
    cases, ids = [], []
    for case in runner.plan_cases(list(OPS), runner.default_workloads(device.type), [dtype]):
        for provider in OPS[case.op].providers(device, runner.DTYPES[dtype]):
            cases.append((case, provider.name))
            ids.append(f"{case.op}-{case.workload}-{dtype}-{provider.name.replace(' ', '_')}")
    metafunc.parametrize("bench_case", cases, ids=ids)


@pytest.fixture
def bench_options(request):
    config = request.config
    return {
        "device": bench_device(config),
        "quick": config.getoption("--fo-quick"),
        "reference": config.getoption("--fo-reference"),
    }


def pytest_report_header(config):
    device = bench_device(config)
    sizes = "tiny (--fo-quick)" if config.getoption("--fo-quick") else "full"
    names = ", ".join(runner.default_workloads(device.type))
    return [f"fused_optim benchmarks: device {device}, dtype {config.getoption('--fo-dtype')}, {sizes} sizes, workloads {names}"]
