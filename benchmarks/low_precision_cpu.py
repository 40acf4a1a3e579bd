"""Adam on one 16.8M-element tensor on the CPU under each low-precision option: time per step,
GB/s of the byte model (fused_optim.benchmark.traffic.low_precision_step), percent of the
measured copy bandwidth (the roofline) and of an in-place add's (``a += b``: like an optimizer,
it writes what it read, so no cache line is fetched only to be overwritten, and it reaches more
than a copy into a fresh buffer does), and ratios to fp32 Adam and to torch's fused Adam on the
same bfloat16 parameters, all measured in one process, interleaved, medians.

    PYTHONPATH=. python benchmarks/low_precision_cpu.py [--repeats 15] [--threads N] [--json PATH]
"""

import argparse
import json
import os
import statistics
import time

import torch

import fused_optim as fo
from fused_optim.benchmark import environment, report, traffic

N = 1 << 24  # 16.8M elements


def _bandwidth(op, moved_bytes, repeats):
    """GB/s of ``op()``, which moves ``moved_bytes``: the median of ``repeats`` timings."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
    return moved_bytes / statistics.median(times) / 1e9


def copy_gbps(repeats):
    src = torch.empty(N * 2, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    return _bandwidth(lambda: dst.copy_(src), 2 * src.numel() * 4, repeats)


def inplace_gbps(repeats):
    a = torch.empty(N * 2, dtype=torch.float32).normal_()
    b = torch.empty_like(a).normal_()
    return _bandwidth(lambda: a.add_(b), 3 * a.numel() * 4, repeats)


def case(dtype, master=None, state=None, torch_fused=False):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(N, generator=g).to(dtype).requires_grad_()
    p.grad = (torch.randn(N, generator=g) * 1e-2).to(dtype)
    if torch_fused:
        opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    else:
        opt = fo.Adam([p], lr=1e-3, backend="cpp", master_weights=master, state_dtype=state)
    opt.step()  # state created, plans built
    return opt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = torch.bfloat16
    cases = {
        "fp32 Adam (fp32 state)": (torch.float32, None, None, False),
        "torch fused=True, bf16 params": (bf16, None, None, True),
        "bf16, fp32 state": (bf16, None, None, False),
        "bf16, bf16 state": (bf16, None, bf16, False),
        "bf16, bf16 state, stochastic": (bf16, "stochastic", bf16, False),
        "bf16, fp32 state, stochastic": (bf16, "stochastic", None, False),
        "bf16, bf16 state, kahan": (bf16, "kahan", bf16, False),
        "bf16, bf16 state, fp32 master": (bf16, "fp32", bf16, False),
    }
    bandwidth, inplace = copy_gbps(args.repeats), inplace_gbps(args.repeats)
    optimizers = {name: case(*spec) for name, spec in cases.items()}
    times = {name: [] for name in cases}
    for _ in range(3):  # warm-up
        for opt in optimizers.values():
            opt.step()
    for _ in range(args.repeats):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    bandwidth = max(bandwidth, copy_gbps(args.repeats))
    inplace = max(inplace, inplace_gbps(args.repeats))
    load = os.getloadavg()[0]
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = []
    machine = report.describe_machine(environment.environment(), "cpu")
    print(machine)
    print(f"copy bandwidth {bandwidth:.1f} GB/s, in-place add {inplace:.1f} GB/s, "
          f"load average {load:.1f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"{'case':34} {'ms':>7} {'B/el':>5} {'GB/s':>6} {'%copy':>6} {'%inpl':>6} {'vs fp32':>8} {'vs torch':>8}")
    for name, (dtype, master, state, torch_fused) in cases.items():
        per_element = traffic.low_precision_step(dtype, 2, master, state)
        gbps = N * per_element / median[name] / 1e9
        row = dict(case=name, ms=median[name] * 1e3, bytes_per_element=per_element, gbps=gbps,
                   pct_of_copy=100 * gbps / bandwidth, pct_of_inplace=100 * gbps / inplace,
                   speedup_vs_fp32=median["fp32 Adam (fp32 state)"] / median[name],
                   speedup_vs_torch_fused=median["torch fused=True, bf16 params"] / median[name])
        rows.append(row)
        print(f"{name:34} {row['ms']:7.2f} {per_element:5d} {gbps:6.1f} {row['pct_of_copy']:6.1f} "
              f"{row['pct_of_inplace']:6.1f} {row['speedup_vs_fp32']:8.2f} {row['speedup_vs_torch_fused']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, copy_gbps=bandwidth, inplace_add_gbps=inplace, load_average=load, cpus=os.cpu_count(),
                           threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
