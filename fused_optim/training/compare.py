"""Train the same model from the same initial weights with several optimizers and compare the curves.

    comparison = compare_optimizers(make_model, default_optimizers(), train_loader, val_loader, epochs=10)
    print(comparison.table())
    comparison.plot("compare.png")
    comparison.to_json("compare.json")

Every optimizer starts from the same weights (those of the first ``model_fn()`` built under ``seed``,
loaded into each fresh model) and sees the same batches in the same order (torch's generator, which a
shuffling DataLoader draws from, is reseeded before each run), so differences come from the optimizers.
"""

import math
import time
from dataclasses import dataclass, field

import torch

SCHEMA = "fused_optim.compare/1"
DEFAULT_NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
IMPLEMENTATIONS = ("fused", "torch")

# Learning rates that train small models (such as the digits MLP and CNN) well in a few epochs.
DEFAULT_CONFIGS = {
    "sgd": ("SGD", {"lr": 0.05, "momentum": 0.9}),
    "adam": ("Adam", {"lr": 3e-3}),
    "adamw": ("AdamW", {"lr": 3e-3, "weight_decay": 0.01}),
    "rmsprop": ("RMSprop", {"lr": 1e-3}),
    "adagrad": ("Adagrad", {"lr": 0.05}),
}


def optimizer_class(name, implementation="fused"):
    """The class behind a default name: fused_optim's for ``"fused"`` and torch.optim's for ``"torch"``.

    fused_optim's class is looked up on the ``fused_optim`` module when called; an optimizer that
    fused_optim does not provide (yet) falls back to torch.optim's class of the same name.
    """
    if name not in DEFAULT_CONFIGS:
        raise ValueError(f"unknown optimizer {name!r}: choose from {', '.join(DEFAULT_CONFIGS)}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}: choose from {', '.join(IMPLEMENTATIONS)}")
    class_name = DEFAULT_CONFIGS[name][0]
    if implementation == "fused":
        import fused_optim

        found = getattr(fused_optim, class_name, None)
        if found is not None:
            return found
    return getattr(torch.optim, class_name)


def default_optimizer(name, implementation="fused", lr=None):
    """A factory ``params -> optimizer`` for a default name, with its default hyperparameters (``lr``
    replaces the default learning rate). The class is looked up each time the factory is called."""
    optimizer_class(name, implementation)  # unknown names fail here, not in the middle of a comparison
    kwargs = dict(DEFAULT_CONFIGS[name][1])
    if lr is not None:
        kwargs["lr"] = lr

    def factory(params):
        return optimizer_class(name, implementation)(params, **kwargs)

    factory.hyperparameters = kwargs
    return factory


def default_optimizers(names=DEFAULT_NAMES, implementation="fused"):
    """``{name: factory}`` for the default names (sgd, adam, adamw, rmsprop, adagrad)."""
    return {name: default_optimizer(name, implementation) for name in names}


@dataclass
class Run:
    """One optimizer's curves, one entry per epoch (None after a divergence, and for validation figures
    without a ``val_loader``; ``val_accuracy`` is None when the outputs are not class scores)."""

    name: str
    optimizer: str
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    step_time_s: list = field(default_factory=list)
    optimizer_step_time_s: list = field(default_factory=list)
    diverged_epoch: int = None

    def best(self, key, highest=False):
        values = [v for v in getattr(self, key) if v is not None]
        return (max(values) if highest else min(values)) if values else None

    def final(self, key):
        values = getattr(self, key)
        return values[-1] if values else None


@dataclass
class Comparison:
    """The result of ``compare_optimizers``: ``runs`` maps each name to its ``Run``."""

    runs: dict
    epochs: int
    seed: int
    device: str
    steps_per_epoch: int

    def table(self):
        """Final and best figures, one row per optimizer."""
        has_val = any(v is not None for r in self.runs.values() for v in r.val_loss)
        has_acc = any(v is not None for r in self.runs.values() for v in r.val_accuracy)
        head = f"{'optimizer':<12} {'train loss':>10} {'best':>8}"
        if has_val:
            head += f" {'val loss':>9} {'best':>8}"
        if has_acc:
            head += f" {'val acc':>8} {'best':>7}"
        head += f" {'step':>9} {'opt.step':>9}"
        lines = [head]

        def number(value, fmt):
            return format(value, fmt) if value is not None else "-"

        for run in self.runs.values():
            line = f"{run.name:<12} {number(run.final('train_loss'), '10.4f')} {number(run.best('train_loss'), '8.4f')}"
            if has_val:
                line += f" {number(run.final('val_loss'), '9.4f')} {number(run.best('val_loss'), '8.4f')}"
            if has_acc:
                final, best = run.final("val_accuracy"), run.best("val_accuracy", highest=True)
                line += f" {number(final and 100 * final, '7.2f')}% {number(best and 100 * best, '6.2f')}%"
            line += f" {_ms(_median(run.step_time_s)):>9} {_ms(_median(run.optimizer_step_time_s)):>9}"
            if run.diverged_epoch is not None:
                line += f"  diverged in epoch {run.diverged_epoch}"
            lines.append(line)
        lines.append(f"(final after {self.epochs} epochs of {self.steps_per_epoch} steps on {self.device}; step: median "
                     "wall time of a training step, opt.step: of optimizer.step() alone)")
        return "\n".join(lines)

    def to_dict(self):
        """The JSON document (see ``to_json``)."""
        runs = {}
        for name, run in self.runs.items():
            runs[name] = {
                "optimizer": run.optimizer,
                "train_loss": run.train_loss, "val_loss": run.val_loss, "val_accuracy": run.val_accuracy,
                "step_time_s": run.step_time_s, "optimizer_step_time_s": run.optimizer_step_time_s,
                "diverged_epoch": run.diverged_epoch,
                "final": {k: run.final(k) for k in ("train_loss", "val_loss", "val_accuracy")},
                "best": {"train_loss": run.best("train_loss"), "val_loss": run.best("val_loss"),
                         "val_accuracy": run.best("val_accuracy", highest=True)},
            }
        return {"schema": SCHEMA, "epochs": self.epochs, "seed": self.seed, "device": self.device,
                "steps_per_epoch": self.steps_per_epoch, "optimizers": runs}

    def to_json(self, path):
        """Write ``to_dict()`` as JSON (non-finite numbers as null). Schema ``fused_optim.compare/1``:

        ``schema``, ``epochs``, ``seed``, ``device``, ``steps_per_epoch`` and ``optimizers``, a map from each
        name to ``optimizer`` (the factory's description), per-epoch lists of ``epochs`` entries
        ``train_loss``, ``val_loss``, ``val_accuracy`` (0 to 1), ``step_time_s`` and
        ``optimizer_step_time_s`` (medians of the epoch's steps, seconds), ``diverged_epoch`` (1-based, or
        null) and ``final`` / ``best`` (``train_loss``, ``val_loss``, ``val_accuracy``). Missing values are null.
        """
        from ..benchmark import report

        report.write_json(path, self.to_dict())

    def plot(self, path=None, title=None):
        """Loss curves (train solid, validation dashed) and validation accuracy side by side; a PNG at
        ``path`` when given. Returns the figure. Needs matplotlib."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        has_acc = any(v is not None for r in self.runs.values() for v in r.val_accuracy)
        figure, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4.2), squeeze=False)
        loss_ax = axes[0][0]
        epochs = list(range(1, self.epochs + 1))
        for run in self.runs.values():
            line, = loss_ax.plot(epochs, _nan(run.train_loss), label=f"{run.name} train")
            if any(v is not None for v in run.val_loss):
                loss_ax.plot(epochs, _nan(run.val_loss), "--", color=line.get_color(), label=f"{run.name} val")
            if has_acc:
                axes[0][1].plot(epochs, [None if v is None else 100 * v for v in run.val_accuracy], color=line.get_color(),
                                label=run.name)
        for ax in axes[0]:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        loss_ax.set_yscale("log")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")
        loss_ax.legend(fontsize=8, ncol=2)
        loss_ax.grid(True, which="both", alpha=0.25)
        if has_acc:
            acc_ax = axes[0][1]
            acc_ax.set_xlabel("epoch")
            acc_ax.set_ylabel("validation accuracy (%)")
            acc_ax.legend(fontsize=8)
            acc_ax.grid(True, alpha=0.25)
        if title:
            figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, format="png", dpi=110)
            plt.close(figure)
        return figure


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _ms(seconds):
    return "-" if seconds is None else f"{1e3 * seconds:.3g} ms"


def _nan(values):
    return [math.nan if v is None else v for v in values]


def _describe(optimizer, factory):
    """``module.Class(lr=..., ...)``: the optimizer's class and the factory's hyperparameters when known."""
    cls = type(optimizer)
    settings = getattr(factory, "hyperparameters", None)
    if settings is None:
        settings = {"lr": optimizer.param_groups[0].get("lr")}
    return f"{cls.__module__}.{cls.__qualname__}({', '.join(f'{k}={v}' for k, v in settings.items())})"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_optimizers(model_fn, optimizers, train_loader, val_loader=None, epochs=10, scheduler_fn=None,
                       loss_fn=None, seed=0, device=None, progress=False):
    """Train ``model_fn()`` with each optimizer for ``epochs`` epochs; return a ``Comparison``.

    ``optimizers``: ``{name: factory}`` with ``factory(params) -> optimizer`` (``default_optimizers()``
    gives sgd, adam, adamw, rmsprop and adagrad), or a list of default names. ``train_loader`` /
    ``val_loader`` yield ``(inputs, targets)``. ``scheduler_fn(optimizer) -> scheduler`` is stepped once
    per epoch (``ReduceLROnPlateau`` with the epoch's validation loss, else its training loss).
    ``loss_fn(output, target)``: default cross-entropy. Validation accuracy is recorded when the outputs
    are ``(batch, classes)`` scores and the targets class indices. ``device``: where the model and batches
    go (default: the device of the model's parameters). A run whose loss becomes NaN or infinite stops
    there (``diverged_epoch``); the others go on.
    """
    if isinstance(optimizers, (list, tuple)):
        optimizers = default_optimizers(optimizers)
    if not isinstance(optimizers, dict) or not optimizers:
        raise ValueError("optimizers must be a non-empty {name: factory} map or a list of default names")
    for name, factory in optimizers.items():
        if not callable(factory):
            raise TypeError(f"optimizers[{name!r}] must be a factory params -> optimizer, got {type(factory).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a whole number of at least 1, got {epochs!r}")
    if hasattr(train_loader, "__len__") and len(train_loader) == 0:
        raise ValueError("train_loader is empty")
    loss_fn = loss_fn or torch.nn.functional.cross_entropy

    torch.manual_seed(seed)
    first = model_fn()
    if device is None:
        param = next(first.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    initial = {k: v.detach().clone() for k, v in first.state_dict().items()}
    del first

    bar = None
    if progress:
        from .._progress import Progress

        bar = Progress(len(optimizers) * epochs, unit="epoch")
    runs, steps_per_epoch = {}, 0
    try:
        for index, (name, factory) in enumerate(optimizers.items()):
            torch.manual_seed(seed)
            model = model_fn()
            model.load_state_dict(initial)
            model.to(device)
            optimizer = factory(model.parameters())
            scheduler = scheduler_fn(optimizer) if scheduler_fn is not None else None
            run = Run(name, _describe(optimizer, factory))
            for epoch in range(epochs):
                if bar is not None:
                    bar.update(index * epochs + epoch, f"{name} epoch {epoch + 1}/{epochs}")
                if run.diverged_epoch is not None:
                    for key in ("train_loss", "val_loss", "val_accuracy", "step_time_s", "optimizer_step_time_s"):
                        getattr(run, key).append(None)
                    continue
                train_loss, steps, step_times, opt_times = _train_epoch(model, optimizer, train_loader, loss_fn, device)
                steps_per_epoch = max(steps_per_epoch, steps)
                val_loss, accuracy = _evaluate(model, val_loader, loss_fn, device) if val_loader is not None else (None, None)
                diverged = not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss))
                run.train_loss.append(train_loss if math.isfinite(train_loss) else None)
                run.val_loss.append(val_loss if val_loss is None or math.isfinite(val_loss) else None)
                run.val_accuracy.append(None if diverged else accuracy)
                run.step_time_s.append(_median(step_times))
                run.optimizer_step_time_s.append(_median(opt_times))
                if diverged:
                    run.diverged_epoch = epoch + 1
                elif scheduler is not None:
                    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(val_loss if val_loss is not None else train_loss)
                    else:
                        scheduler.step()
            runs[name] = run
    finally:
        if bar is not None:
            bar.close()
    return Comparison(runs, epochs, seed, str(device), steps_per_epoch)


def _train_epoch(model, optimizer, loader, loss_fn, device):
    """One epoch; ``(mean loss, steps, step times, optimizer.step() times)``; stops at a non-finite loss."""
    model.train()
    total, count, step_times, opt_times = 0.0, 0, [], []
    for batch in loader:
        inputs, targets = batch
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        _sync(device)
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        _sync(device)
        before_step = time.perf_counter()
        optimizer.step()
        _sync(device)
        ended = time.perf_counter()
        step_times.append(ended - started)
        opt_times.append(ended - before_step)
        value = loss.item()
        n = len(targets)
        total += value * n
        count += n
        if not math.isfinite(value):
            return math.nan, len(step_times), step_times, opt_times
    return total / max(count, 1), len(step_times), step_times, opt_times


def _evaluate(model, loader, loss_fn, device):
    """``(mean loss, accuracy or None)`` over ``loader`` in eval mode."""
    model.eval()
    total, correct, count, classification = 0.0, 0, 0, True
    with torch.no_grad():
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            output = model(inputs)
            n = len(targets)
            total += loss_fn(output, targets).item() * n
            count += n
            if classification and output.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
                correct += (output.argmax(1) == targets).sum().item()
            else:
                classification = False
    model.train()
    if count == 0:
        return None, None
    return total / count, (correct / count if classification else None)
