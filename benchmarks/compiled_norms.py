"""fwd+bwd time of small models under torch.compile (default mode) on the CPU: fused_optim's layers
compiled against the eager fused_optim model, torch.nn's layers compiled and eager; all interleaved
in one process, medians of per-round times and of per-round ratios after warm-up.

    PYTHONPATH=. python benchmarks/compiled_norms.py [--threads N] [--rounds 40] [--json PATH]

Two controls say what inductor itself does to these models on this CPU, whatever the norm:
``conv`` times the convolution alone, eager and compiled (inductor runs it channels_last and
converts layouts around it), and ``x <= 0`` the boolean mask a compiled ReLU saves for its
backward (inductor's vectorized boolean store). The conv models are also compiled with
``torch._inductor.config.layout_optimization = False`` (``compiled, NCHW``), which keeps the
convolution in the eager layout.
"""
import argparse
import copy
import json
import statistics
import time

import torch
import torch._functorch.config
import torch._inductor.config as inductor_config

import fused_optim as fo
from fused_optim.benchmark import environment, report

SHAPES = {"conv": (16, 32, 28, 28), "linear": (4096, 512)}


def conv(norm=None):
    layers = [torch.nn.Conv2d(32, 32, 3, padding=1, bias=False)]
    return torch.nn.Sequential(*layers, *([norm(32)] if norm else []))


def conv_bn_relu(norm):
    return torch.nn.Sequential(*conv(norm), torch.nn.ReLU())


def linear_ln(norm):
    return torch.nn.Sequential(torch.nn.Linear(512, 512), norm(512))


# name: (builder, fused_optim norm, torch.nn norm, input kind)
CASES = {"conv (control)": (conv, None, None, "conv"),
         "conv-bn": (conv, fo.BatchNorm2d, torch.nn.BatchNorm2d, "conv"),
         "conv-bn-relu": (conv_bn_relu, fo.BatchNorm2d, torch.nn.BatchNorm2d, "conv"),
         "linear-ln": (linear_ln, fo.LayerNorm, torch.nn.LayerNorm, "linear")}


def _with_compiled(prefix, model, kind):
    """{label: (model, inductor config to compile it under or None)}: eager, compiled and, for the
    conv models, compiled keeping the convolution NCHW."""
    out = {f"{prefix}eager": (model, None), f"{prefix}compiled": (torch.compile(copy.deepcopy(model)), {})}
    if kind == "conv":
        out[f"{prefix}compiled, NCHW"] = (torch.compile(copy.deepcopy(model)), {"layout_optimization": False})
    return out


def variants(make, ours, theirs, kind):
    if ours is None:
        return _with_compiled("", make(), kind)
    fo_model, torch_model = make(ours), make(theirs)
    torch_model.load_state_dict(fo_model.state_dict())
    return {**_with_compiled("fo ", fo_model, kind), **_with_compiled("torch ", torch_model, kind)}


def interleaved(steps, rounds):
    """{label: seconds per round}: every step once per round, back to back, after 3 of warm-up."""
    for step in steps.values():
        for _ in range(3):
            step()
    times = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    return times


def time_case(name, rounds):
    make, ours, theirs, kind = CASES[name]
    shape = SHAPES[kind]
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(shape)
    steps = {}
    for label, (model, config) in variants(make, ours, theirs, kind).items():
        params = [x] + list(model.parameters())
        step = (lambda m=model, params=params: torch.autograd.grad(m(x), params, dy))
        if config is not None:  # compiled at the first forward and backward: under its config
            with inductor_config.patch(config):
                step()
        steps[label] = step
    times = interleaved(steps, rounds)
    base = "fo eager" if ours else "eager"
    ms = {label: statistics.median(t) * 1e3 for label, t in times.items()}
    # per-round ratios: each round times every variant back to back, so a slow moment of the
    # machine moves a round's times together and leaves its ratios
    vs_eager = {label: statistics.median(b / t for b, t in zip(times[base], times[label])) for label in times}
    vs_torch = ({label: statistics.median(c / t for c, t in zip(times["torch compiled"], times[label]))
                 for label in times if label.startswith("fo compiled")} if ours else {})
    return dict(model=name, shape=list(shape), ms=ms, speedup_vs_eager=vs_eager, speedup_vs_torch_compiled=vs_torch)


def time_mask(rounds):
    x = torch.randn(SHAPES["conv"])
    compiled = torch.compile(lambda t: t <= 0)
    times = interleaved({"compiled": lambda: compiled(x), "eager": lambda: x <= 0}, rounds)
    return {label: statistics.median(t) * 1e3 for label, t in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # compile afresh, so that every variant's compile happens under this run's settings
    inductor_config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    machine = report.describe_machine(environment.environment(), "cpu")
    print(machine)
    rows = []
    for name in CASES:
        row = time_case(name, args.rounds)
        rows.append(row)
        print(f"{name} {tuple(row['shape'])}, {args.threads} threads: "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items()))
        print("  vs eager: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup_vs_eager"].items()
                                          if "eager" not in k or k == "torch eager"))
        if row["speedup_vs_torch_compiled"]:
            print("  vs torch.nn compiled: " + ", ".join(f"{k} {v:.2f}x"
                                                        for k, v in row["speedup_vs_torch_compiled"].items()))
    mask = time_mask(args.rounds)
    print(f"x <= 0 on {SHAPES['conv']}: compiled {mask['compiled']:.2f} ms, eager {mask['eager']:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, threads=args.threads, rounds=args.rounds,
                           date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rows=rows, mask_ms=mask),
                      f, indent=1)


if __name__ == "__main__":
    main()
