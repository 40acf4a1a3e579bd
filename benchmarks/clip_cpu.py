"""Gradient clipping on this CPU, as ratios to torch measured in one process:

- clip_grad_norm_ over 1,000 tensors (500 x 4096 + 500 x 64) against torch.nn.utils' default
  (foreach) and for-loop implementations;
- Adam with max_grad_norm (clipping fused into the step) against clip_grad_norm_ + torch's
  fused Adam.

    python benchmarks/clip_cpu.py [--repeats N] [--json PATH]

GB/s counts the bytes each must move: clipping reads the gradients for the norm and reads and
writes them to scale (12 B per fp32 element); the fused step reads them for the norm and then
runs Adam (4 + 28 B); clip + step moves 12 + 28 B.
"""

import argparse
import json
import platform
import time

import torch

import fused_optim as fo
from common import copy_bandwidth, interleaved_medians

SHAPES = [(4096,)] * 500 + [(64,)] * 500


def params(seed):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    numel = sum(torch.Size(s).numel() for s in SHAPES)
    bandwidth = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"{len(SHAPES)} tensors, {numel} elements")

    # Clipping alone. max_norm is far above the norm, so repeated calls leave the gradients as they
    # are (every provider still computes the norm and scales by the coefficient 1).
    ps = [params(i) for i in range(3)]
    clip = interleaved_medians({
        "torch default (foreach)": lambda: torch.nn.utils.clip_grad_norm_(ps[0], 1e9),
        "torch for-loop": lambda: torch.nn.utils.clip_grad_norm_(ps[1], 1e9, foreach=False),
        "fused_optim cpp": lambda: fo.clip_grad_norm_(ps[2], 1e9, backend="cpp"),
    }, args.repeats)

    # Clip + step. The torch side clips for real (max_norm 1.0), which shrinks its gradients once
    # and then leaves them; fused_optim never changes the gradients. Both do the same work per call.
    torch_params, fused_params = params(3), params(4)
    torch_adam = torch.optim.Adam(torch_params, lr=1e-3, fused=True)
    fused_adam = fo.Adam(fused_params, lr=1e-3, backend="cpp", max_grad_norm=1.0)

    def torch_clip_step():
        torch.nn.utils.clip_grad_norm_(torch_params, 1.0)
        torch_adam.step()

    step = interleaved_medians({"torch clip_grad_norm_ + fused Adam": torch_clip_step,
                                "fused_optim Adam(max_grad_norm)": fused_adam.step}, args.repeats)

    rows = []
    for name, seconds in clip.items():
        rows.append(dict(case="clip_grad_norm_", provider=name, median_ms=seconds * 1e3,
                         gbps=12 * numel / seconds / 1e9, speedup=clip["torch default (foreach)"] / seconds))
    for name, seconds in step.items():
        moved = (40 if name.startswith("torch") else 32) * numel
        rows.append(dict(case="clip + Adam step", provider=name, median_ms=seconds * 1e3, gbps=moved / seconds / 1e9,
                         speedup=step["torch clip_grad_norm_ + fused Adam"] / seconds))
    for row in rows:
        print(f"{row['case']:16} {row['provider']:36} {row['median_ms']:8.3f} ms {row['gbps']:6.1f} GB/s "
              f"{row['speedup']:6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                           copy_bandwidth_gbps=bandwidth / 1e9, date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
