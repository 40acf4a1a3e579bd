"""LayerNorm and BatchNorm2d on the CPU: fused_optim's C++ backend against torch's native kernels.

Forward + backward (and forward alone) of the module, in one process, the two implementations
called in turn (alternating which goes first) after a warm-up; times are the median (and min)
of the repeats, the speed-up the median of the per-repeat ratios torch / fused.
GB/s counts the memory traffic the fused kernels need (LayerNorm: read x, write y; read x and
dy, write dx: 5 passes over the tensor; BatchNorm: x read twice and y written in the forward,
x and dy read twice and dx written in the backward: 8 passes) and is compared with this
machine's copy bandwidth, measured here with torch's copy_ of a 256 MiB buffer (read + write).

    PYTHONPATH=. python benchmarks/norm_cpu.py [--repeats 25] [--threads N] [--out benchmarks/results/norm_cpu.md]
"""

import argparse
import datetime
import os
import platform
import statistics
import time

import torch

import fused_optim as fo


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "n/a"


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(functions, repeats, warmup=3):
    """{name: [seconds per call]}: the functions called in turn, in alternating order, so load
    changes on a shared machine hit all of them alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    order = list(functions.items())
    for _ in range(repeats):
        for name, fn in order:
            times[name].append(timed(fn))
        order.reverse()
    return times


def copy_bandwidth(repeats):
    source = torch.randn(64 * 1024 * 1024)
    destination = torch.empty_like(source)
    seconds = interleaved({"copy": lambda: destination.copy_(source)}, repeats)["copy"]
    return 2 * source.numel() * source.element_size() / statistics.median(seconds) / 1e9


def forward_backward(module, x, dy):
    params = list(module.parameters())

    def run():
        y = module(x)
        torch.autograd.grad(y, [x] + params, dy)

    return run


def forward_only(module, x):
    def run():
        with torch.no_grad():
            module(x)

    return run


def cases():
    """(name, make the torch module, make the fused module, input shape, memory format, passes of traffic)."""
    yield ("LayerNorm (4096, 1024)", lambda: torch.nn.LayerNorm(1024), lambda: fo.LayerNorm(1024, backend="cpp"),
           (4096, 1024), torch.contiguous_format, 5)
    yield ("LayerNorm (1024, 8192)", lambda: torch.nn.LayerNorm(8192), lambda: fo.LayerNorm(8192, backend="cpp"),
           (1024, 8192), torch.contiguous_format, 5)
    for memory_format, label in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
        yield (f"BatchNorm2d (32, 64, 56, 56) {label}", lambda: torch.nn.BatchNorm2d(64),
               lambda: fo.BatchNorm2d(64, backend="cpp"), (32, 64, 56, 56), memory_format, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [
        "# fused_optim normalization on the CPU: C++ backend vs torch native",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, torch threads: {torch.get_num_threads()}",
        f"- torch {torch.__version__}, fused_optim {fo.__version__}, float32, {args.repeats} interleaved repeats",
        f"- load average at start: {load_average()} (other processes share the CPUs: compare the ratios, "
        "measured call by call)",
    ]
    bandwidth = copy_bandwidth(args.repeats)
    lines += [f"- copy bandwidth (torch copy_, 256 MiB, read + write): {bandwidth:.1f} GB/s", ""]
    lines += ["| case | pass | torch median (min) ms | fused median (min) ms | speed-up | fused GB/s | of copy |",
              "|---|---|---|---|---|---|---|"]
    for name, make_torch, make_fused, shape, memory_format, passes in cases():
        x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
        dy = torch.randn(shape).contiguous(memory_format=memory_format)
        modules = {"torch": make_torch(), "fused": make_fused()}
        for label, make_run in (("fwd+bwd", lambda m: forward_backward(m, x, dy)),
                                ("fwd", lambda m: forward_only(m, x.detach()))):
            times = interleaved({k: make_run(m) for k, m in modules.items()}, args.repeats)
            median = {k: statistics.median(v) for k, v in times.items()}
            fastest = {k: min(v) for k, v in times.items()}
            speedup = statistics.median(t / f for t, f in zip(times["torch"], times["fused"]))
            traffic = (passes if label == "fwd+bwd" else (2 if passes == 5 else 3)) * x.numel() * x.element_size()
            rate = traffic / median["fused"] / 1e9
            lines.append(
                f"| {name} | {label} | {median['torch'] * 1e3:.2f} ({fastest['torch'] * 1e3:.2f}) | "
                f"{median['fused'] * 1e3:.2f} ({fastest['fused'] * 1e3:.2f}) | "
                f"{speedup:.2f}x | {rate:.1f} | {rate / bandwidth:.0%} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"- load average at end: {load_average()}"]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
