"""The optimizer speed table on this CPU: whole ``opt.step()`` calls of fused_optim's C++ backend
against torch's for-loop, foreach and fused implementations, as ratios measured in one process.

    python benchmarks/optim_cpu.py [--repeats N] [--json PATH]

Providers are interleaved (each repeat runs every provider once, in turn) after a warm-up, and
the median is reported, so slow drifts of a shared machine hit all providers alike. GB/s counts
the bytes each update must move: Adam/AdamW read p, g, m, v and write p, m, v (28 B per fp32
element); SGD with momentum reads p, g, buf and writes p, buf (20 B).
"""

import argparse
import json
import platform
import time

import torch

import fused_optim as fo
from common import copy_bandwidth, interleaved_medians

WORKLOADS = {
    "one 16M tensor": [(16 * 1024 * 1024,)],
    "500x4096 + 500x64": [(4096,)] * 500 + [(64,)] * 500,
    "1000x64": [(64,)] * 1000,
}

OPS = {
    "adam": (28, lambda ps, **kw: torch.optim.Adam(ps, lr=1e-3, **kw), lambda ps: fo.Adam(ps, lr=1e-3, backend="cpp")),
    "adamw": (28, lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-3, **kw), lambda ps: fo.AdamW(ps, lr=1e-3, backend="cpp")),
    "sgd": (20, lambda ps, **kw: torch.optim.SGD(ps, lr=0.1, momentum=0.9, **kw),
            lambda ps: fo.SGD(ps, lr=0.1, momentum=0.9, backend="cpp")),
}

PROVIDERS = ["torch for-loop", "torch foreach", "torch fused", "fused_optim cpp"]


def make_params(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def build(op, provider, shapes):
    _, torch_opt, fused_opt = OPS[op]
    params = make_params(shapes, PROVIDERS.index(provider))
    if provider == "fused_optim cpp":
        return fused_opt(params)
    kwargs = {"torch for-loop": {"foreach": False}, "torch foreach": {"foreach": True}, "torch fused": {"fused": True}}
    return torch_opt(params, **kwargs[provider])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per provider (default: by workload)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")
    rows = []
    header = f"{'op':6} {'workload':18} " + " ".join(f"{p:>16}" for p in PROVIDERS) + f" {'GB/s':>7} {'vs fused':>9}"
    print(header)
    for workload, shapes in WORKLOADS.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        repeats = args.repeats or (20 if numel > 4_000_000 else 200)
        for op, (bytes_per_element, _, _) in OPS.items():
            optimizers = {p: build(op, p, shapes) for p in PROVIDERS}
            medians = interleaved_medians({p: o.step for p, o in optimizers.items()}, repeats)
            del optimizers
            ours = medians["fused_optim cpp"]
            gbps = bytes_per_element * numel / ours / 1e9
            ratio = medians["torch fused"] / ours
            rows.append(dict(op=op, workload=workload, numel=numel, bytes=bytes_per_element * numel,
                             median_ms={p: medians[p] * 1e3 for p in PROVIDERS}, fused_optim_gbps=gbps,
                             speedup_vs_torch_fused=ratio))
            print(f"{op:6} {workload:18} " + " ".join(f"{medians[p] * 1e3:13.3f} ms" for p in PROVIDERS)
                  + f" {gbps:7.1f} {ratio:8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                           processor=platform.processor(), copy_bandwidth_gbps=bandwidth / 1e9,
                           date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
