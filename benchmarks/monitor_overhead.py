"""What TrainingMonitor (every=1) adds to a training step of a small CNN on the CPU.

Two copies of the same model and optimizer (fused_optim SGD with momentum) train on the same
batch, one with the monitor recording every step (gradient norm, weight norm, update ratio, lr,
the loss as a tensor) and one without. In one process, blocks of ``--block`` steps of each are
run in turn (alternating which goes first) after a warm-up. Two overheads, each the median over
the repeats: "end to end", (monitored block time / plain block time) - 1, and "own time", the time
spent in monitor.step() over the rest of the monitored step, which is less noisy on a busy machine.
The monitor is created without the optimizer so that all its work (including measuring the
update) happens in step(); only the read of each group's lr, which needs the optimizer, is left out.
Times are the process's CPU time (``time.process_time``), which other processes on a busy machine
inflate far less than wall-clock time; ``--clock wall`` times wall-clock instead.

    PYTHONPATH=. python benchmarks/monitor_overhead.py [--repeats 30] [--block 10] [--threads N] [--clock cpu|wall]
"""

import argparse
import copy
import datetime
import os
import statistics
import time

import torch

import fused_optim as fo
from fused_optim.training import TrainingMonitor


def cnn(size):
    flat = 32 * ((size - 4) // 2) ** 2
    return torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(flat, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 10))


def trainer(model, monitor_args, clock):
    """One training step; with a monitor, its step() is timed apart (created without the optimizer,
    the monitor measures the update inside step(), so all its work happens there)."""
    opt = fo.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor = TrainingMonitor(model, **monitor_args) if monitor_args is not None else None
    monitor_time = [0.0]

    def step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if monitor is not None:
            start = clock()
            monitor.step(loss)
            monitor_time[0] += clock() - start
        opt.step()

    return step, monitor, monitor_time


def measure(size, batch, repeats, block, monitor_args, clock):
    """Median plain step, median monitored step, median ratio of the two, median ratio of the
    monitor's own time to the rest of the monitored step."""
    torch.manual_seed(0)
    base = cnn(size)
    plain, _, _ = trainer(copy.deepcopy(base), None, clock)
    monitored, monitor, monitor_time = trainer(copy.deepcopy(base), monitor_args, clock)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))

    def timed(step):
        monitor_time[0] = 0.0
        start = clock()
        for _ in range(block):
            step(x, y)
        return (clock() - start) / block, monitor_time[0] / block

    for _ in range(3):
        timed(plain), timed(monitored)
    plain_times, monitored_times, ratios, own_ratios = [], [], [], []
    for r in range(repeats):
        if r % 2:
            (m, own), (p, _) = timed(monitored), timed(plain)
        else:
            (p, _), (m, own) = timed(plain), timed(monitored)
        plain_times.append(p)
        monitored_times.append(m)
        ratios.append(m / p)
        own_ratios.append(own / (m - own))
    monitor.flush()
    assert len(monitor.history["grad_norm"]) == (3 + repeats) * block  # every step was recorded
    assert monitor.update_ratio == all(v > 0 for v in monitor.history["update_ratio"])
    return (statistics.median(plain_times), statistics.median(monitored_times), statistics.median(ratios),
            statistics.median(own_ratios))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} time, load average "
          + " ".join("%.2f" % v for v in os.getloadavg()))
    print(f"{'input':>14} {'monitor':>28} {'plain step':>11} {'monitored':>10} {'end to end':>11} {'own time':>9}")
    for size, batch in ((28, 32), (8, 64)):
        for label, monitor_args in (("every=1", {"every": 1}), ("every=1, update_ratio=False", {"update_ratio": False}),
                                    ("every=1, per_layer", {"every": 1, "per_layer": True})):
            p, m, ratio, own = measure(size, batch, args.repeats, args.block, monitor_args, clock)
            print(f"{batch:>4}x1x{size}x{size:<4} {label:>28} {p * 1e3:>9.3f}ms {m * 1e3:>8.3f}ms "
                  f"{100 * (ratio - 1):>10.1f}% {100 * own:>8.1f}%")


if __name__ == "__main__":
    main()
