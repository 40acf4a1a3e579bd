"""A training monitor: gradient and weight norms, update-to-weight ratio, learning rates and the
per-epoch losses, with the findings a practitioner looks for (exploding or vanishing gradients,
non-finite values, overfitting, a plateau, a diverging loss).

The norms are fused_optim's multi-tensor reductions (fused_optim.ops.clip.total_norm: one pass
over all tensors, the result a 0-dim device tensor), so recording a step launches a few kernels
and never waits for the device. Recorded values stay on the device and are copied to the host
together, once every ``sync_every`` recorded steps (or when the history is read).
"""

import csv
import dataclasses
import json
import math
import statistics

import torch

from .. import _backend
from ..ops import clip as ops

STEP_KEYS = ("grad_norm", "weight_norm", "update_ratio", "lr")
EPOCH_KEYS = ("train_loss", "val_loss", "train_acc", "val_acc")
FINDING_KINDS = ("exploding_gradients", "vanishing_gradients", "non_finite", "overfitting", "plateau",
                 "loss_diverging")


@dataclasses.dataclass
class Thresholds:
    """When ``detect_issues`` reports a finding. Every field can be changed on
    ``monitor.thresholds`` or passed to ``detect_issues(**overrides)`` for one call.

    - exploding_ratio: a gradient norm above this many times the baseline (the median of the first
      ``baseline_steps`` finite gradient norms) is exploding.
    - baseline_steps: how many recorded steps make the baseline.
    - vanishing_grad_norm: a finite total gradient norm (or, with ``per_layer``, a layer's) below
      this is vanishing.
    - overfitting_rise: the validation loss is this fraction above its best epoch's while the
      training loss is below its value at that epoch.
    - plateau_patience, plateau_min_delta: the training loss (per epoch) has not improved on its
      earlier best by this fraction for this many epochs.
    - diverging_ratio: the loss is this many times its best so far: the per-epoch training loss, and
      the per-step loss (when ``step(loss=...)`` records it) smoothed by a moving median of the
      last ``loss_window`` recorded steps (of all of them for the first ``loss_window``).
    """

    exploding_ratio: float = 100.0
    baseline_steps: int = 10
    vanishing_grad_norm: float = 1e-7
    overfitting_rise: float = 0.1
    plateau_patience: int = 5
    plateau_min_delta: float = 1e-3
    diverging_ratio: float = 2.0
    loss_window: int = 20


@dataclasses.dataclass
class Finding:
    """One issue: its kind, where it first happened (a recorded step's number, or an epoch number
    counted from 1), the measured value and the threshold it crossed, and how many recorded steps or
    epochs crossed it. ``key`` names the history series it was measured on."""

    kind: str
    key: str
    value: float
    threshold: float
    step: int = None
    epoch: int = None
    count: int = 1

    def __str__(self):
        where = f"step {self.step}" if self.step is not None else f"epoch {self.epoch}"
        return f"{self.kind} at {where}: {self.key} = {self.value:.4g} (threshold {self.threshold:.4g}, {self.count}x)"


class TrainingMonitor:
    """Records, every ``every``-th call of :meth:`step` (made after ``backward``, before
    ``optimizer.step()``), the total gradient 2-norm, the total weight 2-norm, the
    update-to-weight ratio ``||w_after - w_before|| / ||w_before||`` of the optimizer step that
    follows, each parameter group's learning rate and, with ``per_layer=True``, each layer's
    gradient and weight norms. ``log_epoch`` adds the per-epoch losses and accuracies.

    With an ``optimizer`` the update is measured right after its step (a step post-hook) and the
    learning rates are read from its groups; without one the update is measured at the next
    ``step()`` call or when the history is read, whichever comes first. ``attach()`` makes the
    optimizer call ``step()`` itself (a step pre-hook). Measuring the update keeps one copy of the
    trainable parameters and costs a copy and a difference of them per recorded step;
    ``update_ratio=False`` saves both (history["update_ratio"] is then NaN).

    The gradient norm is that of the gradients as they are when ``step()`` runs: with a
    torch.amp.GradScaler, call it after ``scaler.unscale_(optimizer)`` to record unscaled ones.

    ``backend`` chooses fused_optim's backend for the norms (see fused_optim.ops); None reads
    $FUSED_OPTIM_BACKEND once, here.
    """

    def __init__(self, model, optimizer=None, every=1, sync_every=50, per_layer=False, thresholds=None,
                 backend=None, update_ratio=True):
        for name, value in (("every", every), ("sync_every", sync_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        backend = _backend.validate_name(backend)
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise TypeError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters to monitor")
        self.optimizer = optimizer
        self.every, self.sync_every, self.per_layer = every, sync_every, bool(per_layer)
        self.update_ratio = bool(update_ratio)
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.backend = backend
        self.device = self.params[0].device
        self.layers = self._layers(model) if self.per_layer else []
        # Layer of each tensor, tensors in layer order: for the per-layer sums of squares.
        self._layer_order = [i for _, owned in self.layers for i in owned]
        self._layer_of = torch.tensor([layer for layer, (_, owned) in enumerate(self.layers) for _ in owned],
                                      dtype=torch.int64, device=self.device)
        self.calls = 0
        self._records = []  # device values of recorded steps not yet copied to the host
        self._snapshot = None  # the weights before the update being measured
        self._pending = None  # the record waiting for its update ratio
        self._hooks = [optimizer.register_step_post_hook(self._after_optimizer_step)] if optimizer else []
        self._history = {"step": [], **{k: [] for k in STEP_KEYS}, "loss": [], "epoch": [],
                         **{k: [] for k in EPOCH_KEYS}, "epoch_end_step": []}
        self._given = {k: [] for k in EPOCH_KEYS}  # which epoch values were passed, not filled with NaN
        self._loss_given = []

    def _layers(self, model):
        """(name, indices into self.params) for each module owning trainable parameters directly."""
        index = {id(p): i for i, p in enumerate(self.params)}
        layers = []
        for name, module in model.named_modules():
            owned = [index[id(p)] for p in module.parameters(recurse=False) if id(p) in index]
            if owned:
                layers.append((name or type(module).__name__, owned))
        return layers

    def attach(self):
        """Call ``step()`` from the optimizer, before each of its steps; returns the hook's handle."""
        if self.optimizer is None:
            raise RuntimeError("attach() needs the monitor to be given an optimizer")
        handle = self.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: self.step())
        self._hooks.append(handle)
        return handle

    def detach(self):
        """Remove the monitor's hooks from the optimizer."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _norm(self, tensors, use_grads=False):
        return ops.total_norm(tensors, 2.0, False, self.backend, use_grads=use_grads)

    @torch.no_grad()
    def step(self, loss=None):
        """Record this step if it is an ``every``-th call. ``loss`` (a tensor or a float) is recorded
        too, as history["loss"], without a host sync."""
        self._measure_update()
        if len(self._records) >= self.sync_every:
            self._sync()
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        params = self.params
        has_grads = any(p.grad is not None for p in params)
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().reshape(()).to(self.device, torch.float64)
        record = {
            "step": self.calls - 1,
            "grad_norm": self._norm(params, use_grads=True).to(self.device) if has_grads else
            torch.zeros((), device=self.device),
            "weight_norm": self._norm(params).to(self.device),
            "update_ratio": None,
            "lr": self._lrs(),
            "loss": loss,
        }
        if self.per_layer:
            record["layers"] = self._layer_norms()
        if self.update_ratio:
            if self._snapshot is None:
                self._snapshot = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._snapshot, params)
            self._pending = record
        self._records.append(record)

    def _lrs(self):
        if self.optimizer is None:
            return []
        lrs = []
        for group in self.optimizer.param_groups:
            lr = group["lr"]
            lrs.append(lr.detach().clone().to(self.device) if isinstance(lr, torch.Tensor) else float(lr))
        return lrs

    def _layer_norms(self):
        """Each layer's gradient and weight 2-norms: per-tensor norms in one torch._foreach_norm call
        each, their squares summed per layer."""
        weights = [self.params[i] for i in self._layer_order]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in weights]
        result = []
        for tensors in (grads, weights):
            norms = torch.stack([n.to(self.device, torch.float64) for n in torch._foreach_norm(tensors)])
            sums = torch.zeros(len(self.layers), dtype=torch.float64, device=self.device)
            result.append(sums.index_add_(0, self._layer_of, norms * norms).sqrt())
        return result

    def _after_optimizer_step(self, optimizer, args, kwargs):
        self._measure_update()

    def _measure_update(self):
        """The pending record's update ratio, from the weights now and the snapshot taken then."""
        if self._pending is None:
            return
        torch._foreach_sub_(self._snapshot, self.params)
        weight_norm = self._pending["weight_norm"]
        self._pending["update_ratio"] = self._norm(self._snapshot).to(self.device, weight_norm.dtype) / weight_norm
        self._pending = None

    def _sync(self):
        """Copy every record to the host: one stack of device scalars, one copy."""
        if not self._records:
            return
        values = []
        for r in self._records:
            values += [r["grad_norm"], r["weight_norm"], r["update_ratio"]]
            values += [lr for lr in r["lr"] if isinstance(lr, torch.Tensor)]
            if isinstance(r["loss"], torch.Tensor):
                values.append(r["loss"])
            if self.per_layer:
                values += list(r["layers"])
        flat = []
        for v in values:
            flat.append(v.to(torch.float64).reshape(-1) if v is not None else
                        torch.full((1,), math.nan, dtype=torch.float64, device=self.device))
        host = iter(torch.cat(flat).tolist())
        h = self._history
        for r in self._records:
            h["step"].append(r["step"])
            for key in ("grad_norm", "weight_norm", "update_ratio"):
                h[key].append(next(host))
            lrs = [next(host) if isinstance(lr, torch.Tensor) else lr for lr in r["lr"]]
            h["lr"].append(lrs[0] if lrs else math.nan)
            if len(lrs) > 1:
                for i, lr in enumerate(lrs):
                    h.setdefault(f"lr/{i}", []).append(lr)
            loss = r["loss"]
            if isinstance(loss, torch.Tensor):
                loss = next(host)
            h["loss"].append(math.nan if loss is None else float(loss))
            self._loss_given.append(loss is not None)
            if self.per_layer:
                grad_norms = [next(host) for _ in self.layers]
                weight_norms = [next(host) for _ in self.layers]
                for (name, _), g, w in zip(self.layers, grad_norms, weight_norms):
                    h.setdefault(f"grad_norm/{name}", []).append(g)
                    h.setdefault(f"weight_norm/{name}", []).append(w)
        self._records = []

    def flush(self):
        """Copy all recorded values to the host now. Without an optimizer the last record's update is
        taken to be the one applied since it was recorded."""
        if self.optimizer is None:
            self._measure_update()
        pending = self._pending
        if pending is not None:
            # Its update is still to come: keep it on the device, copy the rest.
            self._records.remove(pending)
        self._sync()
        if pending is not None:
            self._records.append(pending)

    def log_epoch(self, train_loss=None, val_loss=None, train_acc=None, val_acc=None):
        """Record one epoch's values (floats or 0-dim tensors; a tensor is copied to the host here)."""
        values = {"train_loss": train_loss, "val_loss": val_loss, "train_acc": train_acc, "val_acc": val_acc}
        h = self._history
        h["epoch"].append(len(h["epoch"]) + 1)
        for key, value in values.items():
            h[key].append(math.nan if value is None else float(value))
            self._given[key].append(value is not None)
        h["epoch_end_step"].append(self.calls)

    @property
    def history(self):
        """A dict of lists: per recorded step ``step`` (the call's index, from 0), ``grad_norm``,
        ``weight_norm``, ``update_ratio``, ``lr`` (the first group's; ``lr/<i>`` for each group when
        there are several), ``loss`` (NaN where none was passed), with ``per_layer``
        ``grad_norm/<layer>`` and ``weight_norm/<layer>`` (a layer is a module with parameters of
        its own, named as in ``named_modules()``, the root by its class name); per epoch ``epoch`` (from 1),
        ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc`` (NaN where none was passed) and
        ``epoch_end_step`` (the number of step() calls made by then). Reading it copies pending
        values to the host."""
        self.flush()
        return self._history

    def _step_keys(self):
        return [k for k in self._history if k not in ("epoch", "epoch_end_step", *EPOCH_KEYS)]

    def to_csv(self, path):
        """One row per recorded step (scope "step") and per epoch (scope "epoch"), a column per key."""
        h = self.history
        step_keys = [k for k in self._step_keys() if k != "step"]
        epoch_keys = list(EPOCH_KEYS) + ["epoch_end_step"]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["scope", "index", *step_keys, *epoch_keys])
            for i, step in enumerate(h["step"]):
                writer.writerow(["step", step, *[h[k][i] for k in step_keys], *[""] * len(epoch_keys)])
            for i, epoch in enumerate(h["epoch"]):
                writer.writerow(["epoch", epoch, *[""] * len(step_keys), *[h[k][i] for k in epoch_keys]])

    def to_json(self, path):
        """The history as a JSON object of lists (NaN written as null)."""
        h = self.history
        clean = {k: [None if isinstance(v, float) and math.isnan(v) else v for v in values] for k, values in h.items()}
        with open(path, "w") as f:
            json.dump(clean, f, indent=1)

    def detect_issues(self, **overrides):
        """The findings on the history so far, one per kind and series (the first occurrence, with a
        count): see :class:`Thresholds` for when each is reported."""
        t = dataclasses.replace(self.thresholds, **overrides)
        h = self.history
        findings = []
        steps = h["step"]

        def add(kind, key, hits, threshold, unit):
            # hits: (index into the series, value) of every point over the threshold.
            if hits:
                i, value = hits[0]
                where = {"step": steps[i]} if unit == "step" else {"epoch": h["epoch"][i]}
                findings.append(Finding(kind, key, value, threshold, count=len(hits), **where))

        # Non-finite values in what was measured or passed.
        step_series = [("grad_norm", h["grad_norm"]), ("weight_norm", h["weight_norm"]),
                       ("loss", [v for v, given in zip(h["loss"], self._loss_given) if given])]
        step_series += [(k, h[k]) for k in h if k.startswith(("grad_norm/", "weight_norm/"))]
        for key, series in step_series:
            add("non_finite", key, [(i, v) for i, v in enumerate(series) if not math.isfinite(v)], math.inf, "step")
        for key in EPOCH_KEYS:
            hits = [(i, v) for i, (v, given) in enumerate(zip(h[key], self._given[key]))
                    if given and not math.isfinite(v)]
            add("non_finite", key, hits, math.inf, "epoch")

        # Exploding: far above the early gradient norms.
        finite = [v for v in h["grad_norm"] if math.isfinite(v)]
        if finite:
            baseline = statistics.median(finite[: t.baseline_steps])
            limit = t.exploding_ratio * baseline
            add("exploding_gradients", "grad_norm",
                [(i, v) for i, v in enumerate(h["grad_norm"]) if math.isfinite(v) and v > limit], limit, "step")

        # Vanishing: the total (and each layer's) gradient norm below an absolute floor.
        for key in ["grad_norm"] + [k for k in h if k.startswith("grad_norm/")]:
            add("vanishing_gradients", key,
                [(i, v) for i, v in enumerate(h[key]) if math.isfinite(v) and v < t.vanishing_grad_norm],
                t.vanishing_grad_norm, "step")

        train = [(i, v) for i, (v, given) in enumerate(zip(h["train_loss"], self._given["train_loss"]))
                 if given and math.isfinite(v)]
        val = [(i, v) for i, (v, given) in enumerate(zip(h["val_loss"], self._given["val_loss"]))
               if given and math.isfinite(v)]

        # Overfitting: validation loss up from its best while the training loss kept falling.
        train_at = dict(train)
        hits, best = [], None
        for i, v in val:
            if best is not None and best[1] > 0 and i in train_at and best[0] in train_at:
                rise = v / best[1] - 1
                if rise > t.overfitting_rise and train_at[i] < train_at[best[0]]:
                    hits.append((i, rise))
            if best is None or v < best[1]:
                best = (i, v)
        add("overfitting", "val_loss", hits, t.overfitting_rise, "epoch")

        # Plateau: no relative improvement of plateau_min_delta for plateau_patience epochs.
        hits = []
        for n in range(t.plateau_patience, len(train)):
            before = min(v for _, v in train[: n - t.plateau_patience + 1])
            recent = min(v for _, v in train[n - t.plateau_patience + 1: n + 1])
            improvement = (before - recent) / abs(before) if before else 0.0
            if improvement < t.plateau_min_delta:
                hits.append((train[n][0], improvement))
        add("plateau", "train_loss", hits, t.plateau_min_delta, "epoch")

        # Diverging: the (smoothed) loss a multiple of its best so far.
        add("loss_diverging", "train_loss", _diverging(train, t.diverging_ratio), t.diverging_ratio, "epoch")
        losses = [(i, v) for i, (v, given) in enumerate(zip(h["loss"], self._loss_given)) if given and math.isfinite(v)]
        window = max(1, t.loss_window)
        smoothed = [(losses[j][0], statistics.median(v for _, v in losses[max(0, j - window + 1): j + 1]))
                    for j in range(len(losses))]
        add("loss_diverging", "loss", _diverging(smoothed, t.diverging_ratio), t.diverging_ratio, "step")
        return findings

    def plot(self, path):
        """Six panels: loss, accuracy, learning rate (log), gradient norm (log), weight norm and
        the validation-training loss gap. Needs matplotlib (the ``plot`` extra)."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("TrainingMonitor.plot needs matplotlib: pip install 'fused_optim[plot]'") from e
        h = self.history
        fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
        (loss_ax, acc_ax, lr_ax), (grad_ax, weight_ax, gap_ax) = axes
        epochs = h["epoch"]

        def epoch_line(ax, key, label):
            points = [(e, v) for e, v, given in zip(epochs, h[key], self._given[key]) if given]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)

        if any(self._given["train_loss"]) or any(self._given["val_loss"]):
            epoch_line(loss_ax, "train_loss", "train")
            epoch_line(loss_ax, "val_loss", "validation")
            loss_ax.set_xlabel("epoch")
        else:
            points = [(s, v) for s, v, given in zip(h["step"], h["loss"], self._loss_given) if given]
            if points:
                loss_ax.plot(*zip(*points), label="train (per step)")
            loss_ax.set_xlabel("step")
        loss_ax.set_title("loss")
        epoch_line(acc_ax, "train_acc", "train")
        epoch_line(acc_ax, "val_acc", "validation")
        acc_ax.set_title("accuracy")
        acc_ax.set_xlabel("epoch")
        lr_keys = [k for k in h if k.startswith("lr/")] or ["lr"]
        for key in lr_keys:
            lr_ax.plot(h["step"], h[key], label=key)
        _log_scale(lr_ax, [v for k in lr_keys for v in h[k]])
        lr_ax.set_title("learning rate")
        grad_ax.plot(h["step"], h["grad_norm"], label="total", linewidth=0.8)
        _log_scale(grad_ax, h["grad_norm"])
        grad_ax.set_title("gradient norm")
        weight_ax.plot(h["step"], h["weight_norm"], label="total")
        weight_ax.set_title("weight norm")
        gap = [(e, v - u) for e, u, v, g1, g2 in zip(epochs, h["train_loss"], h["val_loss"], self._given["train_loss"],
                                                     self._given["val_loss"]) if g1 and g2]
        if gap:
            gap_ax.plot(*zip(*gap), marker="o")
        gap_ax.axhline(0.0, color="gray", linewidth=0.5)
        gap_ax.set_title("validation - training loss")
        gap_ax.set_xlabel("epoch")
        for ax in (lr_ax, grad_ax, weight_ax):
            ax.set_xlabel("step")
        for ax in axes.flat:
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _diverging(series, ratio):
    """(index, value / best before it) where the value exceeds ratio times the best before it."""
    hits, best = [], None
    for i, v in series:
        if best is not None and best > 0 and v > ratio * best:
            hits.append((i, v / best))
        best = v if best is None else min(best, v)
    return hits


def _log_scale(ax, values):
    if any(math.isfinite(v) and v > 0 for v in values):
        ax.set_yscale("log")
