"""Timing helpers shared by the benchmark scripts: interleaved providers, medians, bandwidth."""

import statistics
import time

import torch


def interleaved_medians(steps, repeats, warmup=3):
    """Median seconds per call of each function, run in turn ``repeats`` times after a warm-up."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(numel=64 * 1024 * 1024, repeats=10):
    """Bytes read + written per second by a large tensor copy."""
    src, dst = torch.randn(numel), torch.empty(numel)
    seconds = interleaved_medians({"copy": lambda: dst.copy_(src)}, repeats)["copy"]
    return 2 * 4 * numel / seconds
