"""Runs the bench (timing every provider of every case) and the check (every backend against
the reference), producing plain dicts and rows that ``report`` prints and writes."""

import dataclasses
import gc

import torch

from . import environment, timing, workloads
from .ops import OPS

#: elements above which the slow reference is left out unless asked for (the default run must
#: stay short; a "small"-sized workload keeps it)
REFERENCE_LIMIT = 4_000_000
#: share of the free memory a case may plan to use; the rest covers temporaries of torch's steps
MEMORY_SHARE = 0.8

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: the fields of a result row, in the order of the CSV columns (documented in the README)
RESULT_FIELDS = (
    "op", "workload", "dtype", "device", "timing", "tensors", "elements", "bytes_per_step", "provider", "family", "available",
    "reason", "median_s", "q1_s", "q3_s", "min_s", "max_s", "iqr_pct", "samples", "calls_per_sample", "gbps",
    "pct_of_copy", "speedup_vs_torch_best", "torch_best",
)


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    workload: str
    dtype: str

    @property
    def label(self):
        return f"{self.op} {self.workload} {self.dtype}"


def plan_cases(ops, workload_names, dtypes):
    """Every (op, workload, dtype) asked for where the op runs on the workload; workload-major,
    so consecutive ops can share one set of inputs (see InputCache)."""
    return [Case(op, w, d) for w in workload_names for d in dtypes for op in ops if w in OPS[op].workloads]


class InputCache:
    """The inputs of the latest workload, kept while the next op needs the same ones.

    Making GPT-2-sized inputs takes seconds on a CPU; ops with the same ``make_inputs`` (the
    optimizers) share them. Providers only clone them, so sharing changes no result. One set is
    kept at a time.
    """

    def __init__(self):
        self.key = None
        self.inputs = None

    @staticmethod
    def _key(op, device, dtype, workload, quick):
        return (op.make_inputs, str(device), dtype, workload, quick)

    def holds(self, op, device, dtype, workload, quick):
        return self.key == self._key(op, device, dtype, workload, quick)

    def get(self, op, shapes, device, dtype, workload, quick):
        if not self.holds(op, device, dtype, workload, quick):
            self.clear()
            self.inputs = op.make_inputs(shapes, device, dtype, seed=0)
            self.key = self._key(op, device, dtype, workload, quick)
        return self.inputs

    def clear(self):
        self.key = self.inputs = None
        gc.collect()


def default_ops():
    """The ops a run without --op times (the others only by name)."""
    return [name for name, op in OPS.items() if op.default]


def default_workloads(device_type):
    return [name for name, w in workloads.WORKLOADS.items() if device_type in w.default_on]


def copy_bytes(device_type, quick):
    """Large enough to stream from memory rather than cache: 1 GiB on CUDA, 256 MiB on CPU."""
    if quick:
        return 16 * 2**20
    return 2**30 if device_type == "cuda" else 256 * 2**20


#: the timing modes: steps back to back, or each after work that evicts the caches (--cold)
WARM, COLD = "warm", "cold"


def _row(case, device, shapes, bytes_per_step, provider, reason=None, stats=None, mode=WARM):
    row = dict.fromkeys(RESULT_FIELDS)
    row.update(
        op=case.op, workload=case.workload, dtype=case.dtype, device=str(device), timing=mode, tensors=len(shapes),
        elements=workloads.numel(shapes), bytes_per_step=bytes_per_step, provider=provider.name,
        family=provider.family, available=stats is not None, reason=reason,
    )
    if stats is not None:
        row.update(
            median_s=stats.median_s, q1_s=stats.q1_s, q3_s=stats.q3_s, min_s=stats.min_s, max_s=stats.max_s,
            iqr_pct=stats.iqr_pct, samples=stats.samples, calls_per_sample=stats.calls_per_sample,
            gbps=bytes_per_step / stats.median_s / 1e9,
        )
    return row


def first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(case, device, quick, include_reference, settings, copy_gbps, on_round=None, inputs=None, evict=None):
    """Time every provider of one case; returns its result rows (unavailable providers included).

    ``inputs``: an InputCache shared by the cases of a run (else the inputs are made here).
    ``evict``: a timing.CacheEvictor: the providers are also timed cold, each step after it; the
    warm rows come first, then the cold ones.
    """
    op = OPS[case.op]
    dtype = DTYPES[case.dtype]
    shapes = workloads.WORKLOADS[case.workload].shapes(device.type, quick)
    elements = workloads.numel(shapes)
    bytes_per_step = elements * op.bytes_per_element(dtype)
    providers = op.providers(device, dtype)
    modes = (WARM, COLD) if evict is not None else (WARM,)
    rows = {}
    runnable = []
    for provider in providers:
        if provider.reason is not None:
            rows[provider.name] = _row(case, device, shapes, bytes_per_step, provider, f"unavailable: {provider.reason}")
        elif provider.slow and not include_reference and elements > REFERENCE_LIMIT:
            rows[provider.name] = _row(case, device, shapes, bytes_per_step, provider,
                                       "not timed: slow at this size (--reference times it)")
        else:
            runnable.append(provider)
    cache = inputs if inputs is not None else InputCache()
    held = cache.holds(op, device, dtype, case.workload, quick)
    if not held:
        cache.clear()  # other inputs are not needed any more: free their memory before counting
        _free(device)
    free = environment.available_memory(device)
    # every provider's copy and state, plus the shared inputs unless they are already there
    needed = (len(runnable) + (0 if held else 1)) * elements * op.memory_per_element(dtype)
    if free is not None and needed > MEMORY_SHARE * free:
        reason = f"skipped: needs about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device}"
        for provider in runnable:
            rows[provider.name] = _row(case, device, shapes, bytes_per_step, provider, reason)
        runnable = []
    fns = {}
    first_call_s = {}
    clock = timing.Clock(device)
    if runnable:
        shared = cache.get(op, shapes, device, dtype, case.workload, quick)
        for provider in runnable:
            try:
                fns[provider.name] = provider.build(shared)
                first_call_s[provider.name] = clock.per_call(fns[provider.name])  # creates state, compiles kernels
            except Exception as error:  # one failing provider must not lose the others' results
                fns.pop(provider.name, None)
                rows[provider.name] = _row(case, device, shapes, bytes_per_step, provider, f"failed: {first_line(error)}")
        del shared
    stats = {}
    try:
        for index, mode in enumerate(modes):
            def progress(done, planned, index=index):
                if on_round:
                    on_round(index * planned + done, len(modes) * planned)

            stats[mode] = timing.measure(fns, clock, settings, progress, first_call_s,
                                         evict=evict if mode == COLD else None)
    finally:
        fns.clear()  # the providers' copies and state: give the memory back before the next case
        _free(device)
    ordered = []
    for mode in modes:
        mode_rows = {}
        for provider in providers:
            if provider.name in stats[mode]:
                mode_rows[provider.name] = _row(case, device, shapes, bytes_per_step, provider,
                                                stats=stats[mode][provider.name], mode=mode)
            else:
                mode_rows[provider.name] = dict(rows[provider.name], timing=mode)
        ordered.extend(_rank([mode_rows[p.name] for p in providers], copy_gbps))
    return ordered


def _rank(rows, copy_gbps):
    """Fills in % of copy bandwidth and the speedup over the fastest torch provider of ``rows``."""
    torch_times = {r["provider"]: r["median_s"] for r in rows if r["family"] == "torch" and r["available"]}
    best = min(torch_times, key=torch_times.get) if torch_times else None
    for row in rows:
        if row["available"]:
            row["pct_of_copy"] = 100.0 * row["gbps"] / copy_gbps if copy_gbps else None
            if best is not None:
                row["torch_best"] = best
                row["speedup_vs_torch_best"] = torch_times[best] / row["median_s"]
    return rows


def evaluate_targets(cases, results, device):
    """The ops' targets for this device type that this run measured, each with its verdict, per
    timing mode measured (the targets hold in both)."""
    verdicts = []
    found = {(r["op"], r["workload"], r["dtype"], r.get("timing", WARM), r["provider"]): r for r in results}
    ran = {(c.op, c.workload, c.dtype) for c in cases}
    modes = [m for m in (WARM, COLD) if any(r.get("timing", WARM) == m for r in results)]
    for op_name in dict.fromkeys(c.op for c in cases):
        for target in OPS[op_name].targets:
            if target.device_type != device.type or (op_name, target.workload, target.dtype) not in ran:
                continue
            for mode in modes:
                row = found.get((op_name, target.workload, target.dtype, mode, target.provider))
                value = None
                if row is not None and row["available"]:
                    if target.metric == "pct_of_copy":
                        value = row["pct_of_copy"]
                    elif target.metric == "speedup_vs_torch_best":
                        value = row["speedup_vs_torch_best"]
                    else:
                        other = found.get((op_name, target.workload, target.dtype, mode, target.against))
                        if other is not None and other["available"]:
                            value = other["median_s"] / row["median_s"]
                verdicts.append({
                    "op": op_name, "workload": target.workload, "dtype": target.dtype, "timing": mode,
                    "provider": target.provider, "metric": target.metric, "against": target.against,
                    "threshold": target.threshold, "value": value,
                    "met": None if value is None else value >= target.threshold,
                    "median_s": row["median_s"] if row is not None and row["available"] else None,
                    "description": f"{op_name}: {target.describe()}" + (" (cold)" if mode == COLD else ""),
                })
    return verdicts


def run_check(op_names, device, dtypes, on_op=None):
    """Check rows for every op and dtype; ``on_op(done, total, label)`` reports progress."""
    rows = []
    total = len(op_names) * len(dtypes)
    for index, (name, dtype) in enumerate((n, d) for n in op_names for d in dtypes):
        if on_op:
            on_op(index, total, f"{name} {dtype}")
        rows.extend(OPS[name].check(device, DTYPES[dtype]))
    if on_op:
        on_op(total, total, "done")
    return rows
