"""Timing whole calls robustly on a CPU or a CUDA device.

Every provider of a case has been called once by its caller (the first call compiles kernels
and creates state, and shows whether the provider works at all); ``measure`` times one more call
to size its samples, then times in rounds: each round takes one sample of every provider, in an order rotated from round
to round, so a slow phase of a shared machine hits all providers alike. A sample is enough
back-to-back calls to last ``min_sample_s`` (on CUDA, between two events, so queued kernels are
counted, host overhead included when it is the bottleneck). Reported: the median, quartiles and
extremes of the per-call times.

Back to back, a step finds the metadata of its tensors (and small tensors' data) still in the
caches from the previous call. In training it follows a forward and backward pass that has
evicted them: the cold mode (``measure(..., evict=CacheEvictor(...))``) times one call per sample,
each after untimed work that streams through a buffer larger than the caches.
"""

import dataclasses
import gc
import math
import time

import torch

from . import traffic


@dataclasses.dataclass(frozen=True)
class Stats:
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    samples: int
    calls_per_sample: int

    @property
    def iqr_pct(self):
        return 100.0 * (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else 0.0


def quantile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default), for short lists."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples, calls_per_sample):
    values = sorted(samples)
    return Stats(
        median_s=quantile(values, 0.5), q1_s=quantile(values, 0.25), q3_s=quantile(values, 0.75),
        min_s=values[0], max_s=values[-1], samples=len(values), calls_per_sample=calls_per_sample,
    )


class Clock:
    """Times ``calls`` back-to-back calls of a function on one device; returns seconds per call."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def per_call(self, fn, calls=1):
        if self.cuda:
            with torch.cuda.device(self.device):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                for _ in range(calls):
                    fn()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1e3 / calls
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls


#: bytes streamed between cold samples at least (and when the cache sizes are unknown)
MIN_EVICT_BYTES = 64 * 2**20


class CacheEvictor:
    """Untimed work that leaves the caches holding none of a step's data or metadata.

    Each call reads and writes a CPU buffer of twice the last-level cache (at least
    MIN_EVICT_BYTES), and on CUDA also a device buffer of twice the GPU's L2 cache, then waits
    for the device: the next timed call starts cold, as a step does after a backward pass.
    """

    def __init__(self, device, cpu_cache_bytes=None, gpu_cache_bytes=None):
        device = torch.device(device)
        self.cpu = torch.zeros(max(2 * (cpu_cache_bytes or 0), MIN_EVICT_BYTES) // 4)
        self.gpu = None
        if device.type == "cuda":
            self.gpu = torch.zeros(max(2 * (gpu_cache_bytes or 0), MIN_EVICT_BYTES) // 4, device=device)
        self.clock = Clock(device)

    @property
    def nbytes(self):
        return self.cpu.nbytes + (self.gpu.nbytes if self.gpu is not None else 0)

    def __call__(self):
        self.cpu.add_(1.0)
        if self.gpu is not None:
            self.gpu.add_(1.0)
        self.clock.sync()


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to measure one case (all its providers together).

    Rounds go on until ``budget_s`` has passed and ``min_rounds`` were taken; a case whose
    rounds take long (steps of seconds, as GPT-2 on a CPU) stops after ``slow_rounds`` rounds
    once ``slow_case_s`` has passed, and any case after ``max_case_s`` (steps of many seconds
    happen on a CPU that other work keeps busy; the sample count in the results shows it).
    """

    budget_s: float = 1.0
    min_rounds: int = 5
    max_rounds: int = 200
    slow_rounds: int = 3
    slow_case_s: float = 3.0
    max_case_s: float = 20.0
    min_sample_s: float = 0.005
    warmup_s: float = 0.2

    @classmethod
    def default(cls, quick):
        if quick:
            return cls(budget_s=0.02, min_rounds=3, max_rounds=20, slow_case_s=0.06, max_case_s=2.0, min_sample_s=0.0005,
                       warmup_s=0.005)
        return cls()

    def done(self, rounds, elapsed):
        if rounds >= self.max_rounds or elapsed >= self.max_case_s:
            return True
        if rounds >= self.min_rounds and elapsed >= self.budget_s:
            return True
        return rounds >= self.slow_rounds and elapsed >= self.slow_case_s


def measure(fns, clock, settings, on_round=None, first_call_s=None, evict=None):
    """Time every function of ``fns`` ({name: fn}, each already called once); returns {name: Stats}.

    ``first_call_s`` ({name: seconds}) may give the time of that first call: on a CPU, a
    function whose first call took ten samples' worth is timed one call per sample without
    another call to size it (on CUDA a first call may be mostly kernel compilation, so there
    every function is sized). ``on_round(done, planned)`` is called after each round.
    ``evict`` (a CacheEvictor): the cold mode, one call per sample, each after ``evict()``.
    """
    if not fns:
        return {}
    names = list(fns)
    calls = {}
    for name in names:
        fn = fns[name]
        slow_first_call = not clock.cuda and (first_call_s or {}).get(name, 0.0) >= 10 * settings.min_sample_s
        if evict is not None or slow_first_call:
            calls[name] = 1
            continue
        clock.sync()
        estimates = []
        started = time.perf_counter()
        while not estimates or (len(estimates) < 3 and time.perf_counter() - started < settings.warmup_s):
            estimates.append(clock.per_call(fn))
        calls[name] = max(1, min(10_000, math.ceil(settings.min_sample_s / max(min(estimates), 1e-9))))
    samples = {name: [] for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a sample would charge one provider for everyone's garbage
    try:
        started = time.perf_counter()
        for rounds in range(1, settings.max_rounds + 1):
            for offset in range(len(names)):
                name = names[(rounds - 1 + offset) % len(names)]
                if evict is not None:
                    evict()
                samples[name].append(clock.per_call(fns[name], calls[name]))
            elapsed = time.perf_counter() - started
            if on_round:
                by_budget = math.ceil(settings.budget_s * rounds / max(elapsed, 1e-9))
                by_slow = math.ceil(settings.slow_case_s * rounds / max(elapsed, 1e-9))
                planned = min(max(settings.min_rounds, by_budget), max(settings.slow_rounds, by_slow), settings.max_rounds)
                on_round(rounds, max(planned, rounds))
            if settings.done(rounds, elapsed):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: summarize(samples[name], calls[name]) for name in names}


def copy_bandwidth(device, nbytes, settings):
    """The device's measured copy bandwidth: ``dst.copy_(src)`` of ``nbytes``, read + written."""
    numel = max(1, nbytes // 4)
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    clock = Clock(device)
    dst.copy_(src)  # first touch of the destination pages
    stats = measure({"copy": lambda: dst.copy_(src)}, clock, settings)["copy"]
    moved = traffic.copy(src.nbytes)
    return {
        "bytes_per_copy": src.nbytes,
        "gbps": moved / stats.median_s / 1e9,
        "median_s": stats.median_s,
        "q1_s": stats.q1_s,
        "q3_s": stats.q3_s,
        "samples": stats.samples,
    }
