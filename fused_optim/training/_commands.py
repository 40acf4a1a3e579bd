"""The ``fused-optim lr-find`` and ``fused-optim compare`` subcommands (options added by ``add_arguments``).

Both train a small model on scikit-learn's bundled digits (no download). Every argument is checked
before anything runs; a bad one is reported through argparse (exit status 2).
"""

import sys

from .._argtypes import output_path, positive_int, positive_number
from . import _digits
from .compare import DEFAULT_NAMES, IMPLEMENTATIONS

DATASETS = ("digits",)
SCHEMA_LR_FIND = "fused_optim.lr-find/1"


def _common(parser, default_optimizers):
    parser.add_argument("--dataset", default="digits", choices=DATASETS, help="the data (default: digits, scikit-learn's bundled 8x8 digits)")
    parser.add_argument("--model", default="mlp", choices=_digits.MODELS, help="mlp (64-64-10) or cnn (two convolutions with BatchNorm); default mlp")
    parser.add_argument("--optimizers", action="append", metavar="NAMES",
                        help=f"comma-separated or repeated, from {', '.join(DEFAULT_NAMES)} (default: {','.join(default_optimizers)})")
    parser.add_argument("--implementation", default="fused", choices=IMPLEMENTATIONS,
                        help="fused: fused_optim's optimizers (torch.optim's for one fused_optim lacks); torch: torch.optim's (default fused)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="training batch size (default 64)")
    parser.add_argument("--train-size", type=positive_int, metavar="N", help="use only the first N training examples (default: all 1,438)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the initial weights and the batch order (default 0)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(lr_find, compare):
    """Options of the two subcommands."""
    _common(lr_find, ("adam",))
    lr_find.add_argument("--start-lr", type=positive_number(), default=1e-7, metavar="LR", help="first learning rate (default 1e-7)")
    lr_find.add_argument("--end-lr", type=positive_number(), default=10.0, metavar="LR", help="last learning rate (default 10)")
    lr_find.add_argument("--num-iter", type=positive_int, default=100, metavar="N", help="iterations of the sweep (default 100)")
    lr_find.add_argument("--step-mode", default="exp", choices=("exp", "linear"), help="exponential or linear sweep (default exp)")
    lr_find.add_argument("--accumulation-steps", type=positive_int, default=1, metavar="N", help="batches per step (default 1)")
    _common(compare, DEFAULT_NAMES)
    compare.add_argument("--epochs", type=positive_int, default=10, metavar="N", help="epochs per optimizer (default 10)")


def _check_common(args, parser, default_names):
    from .. import cli

    names = cli._names(args.optimizers, DEFAULT_NAMES, "optimizers", parser) or list(default_names)
    device = cli._device(args.device, parser)
    json_path = output_path(args.json, "--json", parser)
    plot_path = output_path(args.plot, "--plot", parser)
    if plot_path:
        from ..benchmark import report

        if report.plot_available():
            parser.error(report.plot_available())
    missing = _digits.sklearn_missing()
    if missing:
        parser.error(missing)
    return names, device, json_path, plot_path


def _loaders(args):
    import torch

    torch.manual_seed(args.seed)
    return _digits.digits_loaders(args.batch_size, seed=args.seed, image=_digits.model_input_is_image(args.model),
                                  train_size=args.train_size)


def _settings(args, names, device):
    settings = {k: v for k, v in vars(args).items() if k not in ("handler", "command_parser", "optimizers", "json", "plot", "no_progress", "command")}
    settings.update(optimizers=names, device=str(device))
    return settings


def _title(args, device, what):
    return (f"fused_optim {what}: {args.model} on {args.dataset}, {args.implementation} optimizers, batch {args.batch_size}, "
            f"{device}")


def cmd_lr_find(args, parser):
    import torch

    from ..benchmark import report
    from .compare import default_optimizer
    from .lr_finder import LRFinder

    names, device, json_path, plot_path = _check_common(args, parser, ("adam",))
    if not args.end_lr > args.start_lr:
        parser.error(f"--end-lr {args.end_lr:g} must be above --start-lr {args.start_lr:g}")
    if args.num_iter < 2:
        parser.error("--num-iter must be at least 2")
    print(_title(args, device, "lr-find") + f"; sweep {args.start_lr:g} to {args.end_lr:g}, {args.step_mode}, "
          f"{args.num_iter} iterations", flush=True)
    results, classes = {}, {}
    for name in names:
        train, _ = _loaders(args)
        torch.manual_seed(args.seed)
        model = _digits.build_model(args.model).to(device)
        optimizer = default_optimizer(name, args.implementation)(model.parameters())
        finder = LRFinder(model, optimizer, torch.nn.functional.cross_entropy, device=device)
        classes[name] = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
        results[name] = finder.range_test(train, args.start_lr, args.end_lr, args.num_iter, args.step_mode,
                                          accumulation_steps=args.accumulation_steps, progress=False if args.no_progress else f"{name} range test")
    print(lr_find_table(results, classes))
    if json_path:
        document = {"schema": SCHEMA_LR_FIND, "command": ["fused-optim"] + sys.argv[1:], "settings": _settings(args, names, device),
                    "results": {name: dict(r.to_dict(), optimizer=classes[name]) for name, r in results.items()}}
        report.write_json(json_path, document)
        print(f"wrote {json_path}")
    if plot_path:
        _plot_lr_find(results, plot_path, _title(args, device, "lr-find"))
        print(f"wrote {plot_path}")
    return 0


def lr_find_table(results, classes):
    lines = [f"{'optimizer':<10} {'points':>6} {'stopped':<10} {'valley':>9} {'steepest':>9} {'minimum':>9}  class"]
    for name, result in results.items():
        s = result.suggestions()
        cells = " ".join(f"{'-' if s[m] is None else format(s[m], '.3g'):>9}" for m in ("valley", "steepest", "minimum"))
        lines.append(f"{name:<10} {len(result.lrs):>6} {result.stop_reason:<10} {cells}  {classes[name]}")
    lines.append("(suggested learning rates; valley is the default: result.suggestion())")
    return "\n".join(lines)


def _plot_lr_find(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(8.5, 4.8))
    for name, result in results.items():
        result.plot(ax=ax, label=name if len(results) > 1 else None)
    if len(results) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        title += "\ndots: loss per iteration; solid: trend, suggestions marked; dashed: smoothed (EMA)"
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def cmd_compare(args, parser):
    import torch

    from ..benchmark import report
    from .compare import compare_optimizers, default_optimizers

    names, device, json_path, plot_path = _check_common(args, parser, DEFAULT_NAMES)
    print(_title(args, device, "compare") + f"; {args.epochs} epochs, seed {args.seed}", flush=True)
    train, val = _loaders(args)
    comparison = compare_optimizers(lambda: _digits.build_model(args.model), default_optimizers(names, args.implementation),
                                    train, val, epochs=args.epochs, loss_fn=torch.nn.functional.cross_entropy, seed=args.seed,
                                    device=device, progress=not args.no_progress)
    print(comparison.table())
    if json_path:
        document = comparison.to_dict()
        document.update(command=["fused-optim"] + sys.argv[1:], settings=_settings(args, names, device))
        report.write_json(json_path, document)
        print(f"wrote {json_path}")
    if plot_path:
        comparison.plot(plot_path, title=_title(args, device, "compare"))
        print(f"wrote {plot_path}")
    return 0
