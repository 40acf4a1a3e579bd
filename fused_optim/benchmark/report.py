"""Printing and writing results: tables, JSON, CSV, a PNG chart, and a progress bar."""

import csv
import json
import math
import os
import tempfile

from .._progress import Progress  # noqa: F401  (the bench and check progress bar)
from .runner import RESULT_FIELDS


# ----- numbers -------------------------------------------------------------------------------

def human_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 else f"{seconds / scale:.0f} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def human_count(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def human_bytes(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# ----- text ----------------------------------------------------------------------------------

def describe_machine(env, device):
    cpu = env["cpu"]
    arch = f" ({cpu['microarchitecture']})" if cpu.get("microarchitecture") else ""
    text = f"{cpu['model']}{arch}, {cpu['usable_cores']} cores, {cpu['torch_threads']} torch threads"
    if cpu.get("load_average"):
        text += f", load {cpu['load_average'][0]:g}"
    if str(device).startswith("cuda"):
        index = int(str(device).partition(":")[2] or 0)
        gpu = env["cuda"]["devices"][index]
        text = f"{gpu['name']} ({gpu['memory_gib']} GiB, sm {gpu['capability']}), CUDA {env['cuda']['torch_cuda_version']}; host {text}"
    return text


def header(title, env, device):
    versions = f"torch {env['torch']}, triton {env['triton'] or 'none'}, python {env['python']}"
    commit = f", commit {env['git_commit']}" if env.get("git_commit") else ""
    return (f"fused_optim {env['fused_optim']} {title} on {device}: {describe_machine(env, device)}\n"
            f"{versions}{commit}; {env['date']}")


def busy_note(other_share, when):
    """A note when other processes used 10% or more of the CPU (``when``: "so far", "during the run")."""
    if other_share is None or other_share < 0.1:
        return None
    return (f"note: other processes used {100 * other_share:.0f}% of this CPU {when}: other work slows "
            f"multi-threaded providers most (each parallel region waits for a descheduled thread); "
            f"--threads 1 gives steadier comparisons")


def case_table(rows, op_summary):
    """One case's rows as a text table."""
    first = rows[0]
    per_element = first["bytes_per_step"] / first["elements"] if first["elements"] else 0
    title = (f"{first['op']} ({op_summary}) · {first['workload']}: {first['tensors']} tensors, "
             f"{human_count(first['elements'])} elements · {first['dtype']} · {per_element:g} B/element, "
             f"{human_bytes(first['bytes_per_step'])}/step")
    if first.get("timing") == "cold":
        title += " · cold: each step after work that evicts the caches"
    lines = [title, f"  {'provider':<20} {'median':>10} {'IQR':>7} {'GB/s':>8} {'% copy':>7} {'vs torch best':>14}"]
    for row in rows:
        if row["available"]:
            speedup = f"{row['speedup_vs_torch_best']:.2f}x" if row["speedup_vs_torch_best"] is not None else "-"
            pct = f"{row['pct_of_copy']:.0f}%" if row["pct_of_copy"] is not None else "-"
            lines.append(f"  {row['provider']:<20} {human_time(row['median_s']):>10} {row['iqr_pct']:>6.1f}% "
                         f"{row['gbps']:>8.1f} {pct:>7} {speedup:>14}")
        else:
            lines.append(f"  {row['provider']:<20} {row['reason']}")
    return "\n".join(lines)


def copy_line(bandwidth):
    return (f"copy bandwidth (measured): {bandwidth['gbps']:.1f} GB/s "
            f"({bandwidth['bytes_per_copy'] / 2**20:.0f} MiB copied, median of {bandwidth['samples']})")


def targets_table(verdicts):
    lines = ["targets:"]
    for v in verdicts:
        if v["value"] is None:
            value, verdict = "not measured", "n/a"
        else:
            value = f"{v['value']:.0f}%" if v["metric"] == "pct_of_copy" else f"{v['value']:.2f}x"
            value += f" (step {human_time(v['median_s'])})"
            verdict = "MET" if v["met"] else "MISSED"
        lines.append(f"  {verdict:<7} {v['description']}: {value}")
    return "\n".join(lines)


def check_table(rows):
    lines = [f"{'op':<8} {'backend':<12} {'dtype':<9} {'result':<12} {'max abs error':>14} {'error/tol':>10}  detail"]
    for r in rows:
        if r.passed is None:
            lines.append(f"{r.op:<8} {r.backend:<12} {r.dtype:<9} {'unavailable':<12} {'':>14} {'':>10}  {r.reason}")
            continue
        result = "pass" if r.passed else "FAIL"
        lines.append(f"{r.op:<8} {r.backend:<12} {r.dtype:<9} {result:<12} {r.max_abs_error:>14.3g} "
                     f"{r.error_ratio:>10.3g}  {r.reason or f'{r.runs} runs'}")
    return "\n".join(lines)


# ----- files ---------------------------------------------------------------------------------

def _atomic_write(path, write):
    """Write through a temporary file, so an interrupted run leaves the previous complete file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".fused-optim-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; results are ordinary files
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _finite(value):
    """JSON has no infinities or NaN: such numbers (an error that could not be measured) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path, document):
    def write(f):
        json.dump(_finite(document), f, indent=1, allow_nan=False)
        f.write("\n")

    _atomic_write(path, write)


def write_csv(path, results):
    def write(f):
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for row in results:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in RESULT_FIELDS})

    _atomic_write(path, write)


def plot_available():
    """None when --plot can work, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib, which is not installed: pip install 'fused_optim[plot]' (or matplotlib)"
    return None


def write_plot(path, results, title):
    """A PNG of every timed provider's speedup over torch's best, one group of bars per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    timed = [r for r in results if r["available"] and r["speedup_vs_torch_best"] is not None]
    cases = list(dict.fromkeys((r["op"], r["workload"], r["dtype"], r["timing"]) for r in timed))
    providers = list(dict.fromkeys(r["provider"] for r in timed))
    by_key = {(r["op"], r["workload"], r["dtype"], r["timing"], r["provider"]): r["speedup_vs_torch_best"]
              for r in timed}
    figure, axes = plt.subplots(figsize=(min(16.0, 3.0 + 0.6 * len(cases) * max(1.0, len(providers) / 4)), 4.5))
    width = 0.8 / max(len(providers), 1)
    for index, provider in enumerate(providers):
        points = [(c + index * width, by_key[case + (provider,)]) for c, case in enumerate(cases) if case + (provider,) in by_key]
        axes.bar([x for x, _ in points], [y for _, y in points], width, label=provider)
    axes.set_yscale("log")  # speedups from 0.01x to 100x: equal ratios get equal heights
    axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
    axes.set_xticklabels([f"{op}\n{workload}\n{dtype}" + ("\ncold" if mode == "cold" else "")
                          for op, workload, dtype, mode in cases], fontsize=8)
    axes.set_ylabel("speedup over torch's best")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
