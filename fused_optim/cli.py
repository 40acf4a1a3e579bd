"""The ``fused-optim`` command (also ``python -m fused_optim``): bench, check, info, lr-find, compare.

    fused-optim bench [--op adam,sgd] [--workload gpt2] [--device cuda] [--dtype float32] [--quick] [--cold]
                      [--reference] [--threads N] [--time-per-case S] [--json PATH] [--csv PATH] [--plot PATH]
    fused-optim check [--op ...] [--device ...] [--dtype ...] [--json PATH]
    fused-optim info  [--json PATH]
    fused-optim lr-find [--model mlp|cnn] [--optimizers adam,sgd] [--implementation fused|torch] [--plot PATH] ...
    fused-optim compare [--model mlp|cnn] [--epochs N] [--optimizers ...] [--implementation ...] [--plot PATH] ...

Exit status: 0 on success, 1 when ``check`` finds a failure (or the fast backend for the device
cannot run), 2 for bad arguments, 130 when interrupted.
"""

import argparse
import dataclasses
import sys

from ._argtypes import output_path, positive_int, positive_number

SCHEMA_BENCH = "fused_optim.bench/1"
SCHEMA_CHECK = "fused_optim.check/1"
SCHEMA_INFO = "fused_optim.info/1"


def _names(values, known, what, parser):
    """Names from repeated and/or comma-separated options, validated; [] when none given."""
    names = []
    for value in values or []:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in known:
                parser.error(f"unknown {what} {name!r}: choose from {', '.join(known)}")
            if name not in names:
                names.append(name)
    if values and not names:
        parser.error(f"--{what} needs at least one name: choose from {', '.join(known)}")
    return names


def _device(text, parser):
    import torch

    if text is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        parser.error(f"invalid --device {text!r}: expected cpu, cuda or cuda:N")
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        parser.error(f"--device {text!r}: fused_optim benchmarks cpu and cuda devices, not {device.type}")
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        parser.error(f"--device {text}: CUDA is not available here (torch {torch.__version__}: {why})")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        parser.error(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (indices from 0)")
    return torch.device("cuda", index)


def build_parser():
    from .benchmark import runner, workloads
    from .benchmark.ops import OPS

    parser = argparse.ArgumentParser(
        prog="fused-optim",
        description="Benchmark, check and describe fused_optim on this machine; find learning rates and compare optimizers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    bench = commands.add_parser(
        "bench", help="time every provider of every op on this device and compare with torch",
        description="Time fused_optim (per backend), torch (for-loop, foreach, fused) and the reference on each op "
        "and workload; print median time, spread, GB/s, %% of measured copy bandwidth and speedup over torch's best.",
    )
    bench.add_argument("--op", action="append", metavar="OP", help=f"ops to run, comma-separated or repeated: {', '.join(OPS)} (default: all but the -fwd ones)")
    bench.add_argument(
        "--workload", action="append", metavar="NAME",
        help="workloads, comma-separated or repeated: " + "; ".join(f"{w.name}: {w.description}" for w in workloads.WORKLOADS.values())
        + " (default: all but 1b on CPU, all on CUDA)",
    )
    bench.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    bench.add_argument("--dtype", action="append", metavar="DTYPE", help=f"parameter dtypes, comma-separated or repeated: {', '.join(runner.DTYPES)} (default: float32)")
    bench.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads for torch and the C++ kernels (default: torch's default, usually one per core)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes and short timing (a smoke run, seconds)")
    bench.add_argument("--cold", action="store_true", help="also time every step cold, as in training: each after "
                       "untimed work that streams through a buffer twice the size of the caches (reported beside the "
                       "back-to-back times, interleaved across providers)")
    bench.add_argument("--reference", action="store_true", help="also time the (slow) reference on large workloads")
    bench.add_argument("--time-per-case", type=positive_number("seconds"), metavar="SECONDS", help="timing budget per op and workload, all providers together (default: 1, --quick: 0.02)")
    bench.add_argument("--json", metavar="PATH", help="write all results as JSON (rewritten after each case)")
    bench.add_argument("--csv", metavar="PATH", help="write the result rows as CSV")
    bench.add_argument("--master-weights", choices=["fp32", "kahan", "stochastic"], help="fused_optim's optimizers with this master_weights option (use --dtype bfloat16 or float16); the byte model counts what it moves")
    bench.add_argument("--state-dtype", choices=["float32", "bfloat16"], help="fused_optim's optimizers with this state_dtype; the byte model counts what it moves")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG chart of speedups over torch's best (needs matplotlib)")

    check = commands.add_parser(
        "check", help="run every op on this device against the reference and report pass/fail",
        description="Step every op on every fused_optim backend that runs on this device (and torch.optim) from random "
        "inputs in awkward shapes, compare params and state with the reference, print pass/fail with the max error.",
    )
    check.add_argument("--op", action="append", metavar="OP", help=f"ops to check: {', '.join(OPS)} (default: all but the -fwd ones, whose check is their full op's)")
    check.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    check.add_argument("--dtype", action="append", metavar="DTYPE", help=f"dtypes to check (default: all of {', '.join(runner.DTYPES)})")
    check.add_argument("--json", metavar="PATH", help="write the rows as JSON")

    info = commands.add_parser("info", help="versions, devices, and which backends are available (and why not)")
    info.add_argument("--json", metavar="PATH", help="write the same as JSON")

    from .training import _commands as training_commands

    lr_find = commands.add_parser(
        "lr-find", help="learning-rate range test on a small model (scikit-learn's digits) and the suggested rates",
        description="Sweep the learning rate of each optimizer upwards over a short run on scikit-learn's digits, "
        "print the suggested learning rates (valley, steepest, minimum) and plot loss against learning rate.",
    )
    compare = commands.add_parser(
        "compare", help="train a small model (scikit-learn's digits) with several optimizers and compare the curves",
        description="Train the same model from the same weights on the same batches with each optimizer; print final "
        "and best train/validation loss, validation accuracy and time per step; plot the curves.",
    )
    training_commands.add_arguments(lr_find, compare)
    lr_find.set_defaults(handler=training_commands.cmd_lr_find, command_parser=lr_find)
    compare.set_defaults(handler=training_commands.cmd_compare, command_parser=compare)

    # Errors found after parsing are reported by the subcommand's own parser ("fused-optim bench: error: ...").
    bench.set_defaults(handler=cmd_bench, command_parser=bench)
    check.set_defaults(handler=cmd_check, command_parser=check)
    info.set_defaults(handler=cmd_info, command_parser=info)
    return parser


def _stamp(schema, env):
    return {"schema": schema, "created": env["date"], "command": ["fused-optim"] + sys.argv[1:], "environment": env}


def cmd_bench(args, parser):
    from .benchmark import environment, report, runner, timing, workloads
    from .benchmark.ops import OPS

    device = _device(args.device, parser)
    ops = _names(args.op, OPS, "op", parser) or runner.default_ops()
    workload_names = _names(args.workload, workloads.WORKLOADS, "workload", parser) or runner.default_workloads(device.type)
    dtypes = _names(args.dtype, runner.DTYPES, "dtype", parser) or ["float32"]
    json_path = output_path(args.json, "--json", parser)
    csv_path = output_path(args.csv, "--csv", parser)
    plot_path = output_path(args.plot, "--plot", parser)
    if plot_path and report.plot_available():
        parser.error(report.plot_available())
    if args.master_weights or args.state_dtype:
        import torch

        from .benchmark.ops import with_low_precision

        OPS.update(with_low_precision(ops, args.master_weights, getattr(torch, args.state_dtype) if args.state_dtype else None))
    cases = runner.plan_cases(ops, workload_names, dtypes)
    if not cases:
        parser.error(f"none of the ops {', '.join(ops)} runs on the workloads {', '.join(workload_names)}")

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = timing.Settings.default(args.quick)
    if args.time_per_case:
        settings = dataclasses.replace(settings, budget_s=args.time_per_case)
    env = environment.environment()
    document = _stamp(SCHEMA_BENCH, env)
    document.update(
        complete=False,
        settings={"device": str(device), "ops": ops, "workloads": workload_names, "dtypes": dtypes, "quick": args.quick,
                  "reference": args.reference, "cold": args.cold, "timing": dataclasses.asdict(settings),
                  "configs": {name: OPS[name].config for name in ops}},
        copy_bandwidth=None, results=[], targets=[], other_cpu_share=None,
    )
    print(report.header("bench", env, device), flush=True)
    other_cpu = environment.OtherCpuUse()
    progress = report.Progress(len(cases))
    progress.update(0, "measuring copy bandwidth")
    bandwidth = timing.copy_bandwidth(device, runner.copy_bytes(device.type, args.quick), settings)
    document["copy_bandwidth"] = bandwidth
    progress.clear()
    print(report.copy_line(bandwidth), flush=True)
    busy = report.busy_note(other_cpu.share(), "while it was measured")
    print((busy + "\n") if busy else "", flush=True)
    evict = None
    if args.cold:
        gpu_cache = env["cuda"]["devices"][device.index or 0]["l2_cache_bytes"] if device.type == "cuda" else None
        evict = timing.CacheEvictor(device, env["cpu"]["last_level_cache_bytes"], gpu_cache)
        document["settings"]["evict_bytes"] = evict.nbytes
    inputs = runner.InputCache()
    for index, case in enumerate(cases):
        progress.update(index, case.label)

        def on_round(done, planned, index=index, label=case.label):
            progress.update(index + done / planned, label)

        rows = runner.run_case(case, device, args.quick, args.reference, settings, bandwidth["gbps"], on_round, inputs,
                               evict)
        document["results"].extend(rows)
        progress.clear()
        for mode in dict.fromkeys(r["timing"] for r in rows):
            print(report.case_table([r for r in rows if r["timing"] == mode], OPS[case.op].summary) + "\n", flush=True)
        if json_path:
            report.write_json(json_path, document)
    inputs.clear()
    progress.update(len(cases), "done")
    progress.clear()
    document["targets"] = runner.evaluate_targets(cases, document["results"], device)
    if document["targets"]:
        print(report.targets_table(document["targets"]) + "\n")
    document["other_cpu_share"] = other_cpu.share()
    busy = report.busy_note(document["other_cpu_share"], "during the run")
    if busy:
        print(busy + "\n")
    document["complete"] = True
    if json_path:
        report.write_json(json_path, document)
        print(f"wrote {json_path}")
    if csv_path:
        report.write_csv(csv_path, document["results"])
        print(f"wrote {csv_path}")
    if plot_path:
        report.write_plot(plot_path, document["results"], report.header("bench", env, device).splitlines()[0])
        print(f"wrote {plot_path}")
    return 0


def cmd_check(args, parser):
    from . import _backend
    from .benchmark import environment, report, runner
    from .benchmark.ops import OPS

    device = _device(args.device, parser)
    ops = _names(args.op, OPS, "op", parser) or runner.default_ops()
    dtypes = _names(args.dtype, runner.DTYPES, "dtype", parser) or list(runner.DTYPES)
    json_path = output_path(args.json, "--json", parser)
    env = environment.environment()
    print(report.header("check", env, device), flush=True)
    progress = report.Progress(len(ops) * len(dtypes))
    rows = runner.run_check(ops, device, dtypes, on_op=lambda done, total, label: progress.update(done, label))
    progress.clear()
    print(report.check_table(rows))
    failed = [r for r in rows if r.passed is False]
    fast = "triton" if device.type == "cuda" else "cpp"
    fast_reason = _backend.unavailable_reason(fast, device.type)
    print()
    if failed:
        print(f"FAILED: {len(failed)} of {sum(r.passed is not None for r in rows)} checks "
              f"({', '.join(sorted({f'{r.op}/{r.backend}/{r.dtype}' for r in failed}))})")
    else:
        print(f"passed: {sum(r.passed is True for r in rows)} checks")
    if fast_reason:
        print(f"FAILED: the {fast} backend cannot run {device.type} tensors here, so fused_optim would use the "
              f"slow reference: {fast_reason}")
    if json_path:
        document = _stamp(SCHEMA_CHECK, env)
        document.update(device=str(device), ops=ops, dtypes=dtypes, rows=[dataclasses.asdict(r) for r in rows],
                        fast_backend={"name": fast, "reason": fast_reason},
                        passed=not failed and not fast_reason)
        report.write_json(json_path, document)
        print(f"wrote {json_path}")
    return 1 if failed or fast_reason else 0


def cmd_info(args, parser):
    from .benchmark import environment, report

    json_path = output_path(args.json, "--json", parser)
    env = environment.environment()
    cpu, cuda = env["cpu"], env["cuda"]
    print(f"fused_optim {env['fused_optim']}" + (f" (commit {env['git_commit']})" if env["git_commit"] else ""))
    print(f"python {env['python']}, torch {env['torch']}, triton {env['triton'] or 'not installed'}, numpy {env['numpy']}")
    print(f"platform: {env['platform']}")
    print(f"cpu: {cpu['model']}, {cpu['usable_cores']} of {cpu['logical_cores']} logical cores usable, "
          f"{cpu['torch_threads']} torch threads, SIMD: {', '.join(cpu['simd']) or 'none detected'}"
          + (f", load average {' '.join(f'{x:g}' for x in cpu['load_average'])}" if cpu["load_average"] else ""))
    if cuda["devices"]:
        for gpu in cuda["devices"]:
            print(f"cuda:{gpu['index']}: {gpu['name']}, {gpu['memory_gib']} GiB, compute capability {gpu['capability']}, "
                  f"{gpu['multiprocessors']} SMs (torch built with CUDA {cuda['torch_cuda_version']})")
    else:
        why = "torch was built without CUDA" if cuda["torch_cuda_version"] is None else "no CUDA device is visible"
        print(f"cuda: not available ({why})")
    ext = env["cpp_extension"]
    print(f"C++ extension: {'loaded from ' + str(ext['file']) if ext['loaded'] else 'not loaded: ' + str(ext['reason'])}")
    if env["triton_interpret"]:
        print("TRITON_INTERPRET is set: Triton kernels run in its (slow) interpreter, also for CPU tensors")
    print("backends:")
    for backend, by_device in env["backends"].items():
        for device_type, reason in by_device.items():
            print(f"  {backend:<10} {device_type:<5} {'available' if reason is None else 'unavailable: ' + reason}")
    if json_path:
        document = _stamp(SCHEMA_INFO, env)
        report.write_json(json_path, document)
        print(f"wrote {json_path}")
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args, args.command_parser)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
