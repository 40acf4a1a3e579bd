"""The learning-rate range test: sweep the learning rate upwards over a short run, watch the loss.

    finder = LRFinder(model, optimizer, torch.nn.functional.cross_entropy)
    result = finder.range_test(train_loader, start_lr=1e-7, end_lr=10, num_iter=100)
    lr = result.suggestion()           # a float: the default "valley" suggestion
    result.plot("lr_find.png")

Each iteration trains on one batch (or ``accumulation_steps`` batches) at the next learning rate of an
exponential or linear sweep and records the loss. The sweep stops when the smoothed loss exceeds
``diverge_th`` times its best value or a loss is not finite. Afterwards the parameters, gradients,
buffers, optimizer state, modules' training flags and the RNG states are put back exactly as they were.

The suggestions are read from a trend fitted to the raw losses, not from the exponentially smoothed
curve that is plotted and used for the divergence test: an exponential moving average lags behind the
curve it smooths (with ``smooth_f=0.05`` by about 20 iterations, more than a decade of learning rate on a
100-iteration sweep from 1e-7 to 10), which moves every point read from it to larger learning rates. The
trend is a local polynomial fit over a window of neighbouring points (in log10 of the learning rate); it
has no lag, averages the batch-to-batch noise away, and gives the slope directly.
"""

import copy
import math
import os
import random
import tempfile
from dataclasses import dataclass, field

import torch

METHODS = ("valley", "steepest", "minimum")
STEP_MODES = ("exp", "linear")
AMP_DTYPES = (torch.float16, torch.bfloat16)
MIN_POINTS = 5


# ----- the result ----------------------------------------------------------------------------

def ema(values, smooth_f):
    """``s[0] = v[0]``, ``s[i] = smooth_f * v[i] + (1 - smooth_f) * s[i-1]``; ``smooth_f`` 0 (or 1): no smoothing."""
    out = []
    for v in values:
        out.append(v if not out or smooth_f in (0, 1) else smooth_f * v + (1 - smooth_f) * out[-1])
    return out


def local_fit(x, y, half_width, degree):
    """Value and slope at each ``x[i]`` of the least-squares polynomial of ``degree`` through the
    ``2 * half_width + 1`` points around ``i`` (the window slides inwards at the ends, so it always holds
    that many points)."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    width = min(2 * half_width + 1, n)
    values, slopes = np.empty(n), np.empty(n)
    for i in range(n):
        lo = min(max(i - half_width, 0), n - width)
        coefficients = np.polyfit(x[lo:lo + width] - x[i], y[lo:lo + width], degree)
        values[i], slopes[i] = coefficients[-1], coefficients[-2]
    return values, slopes


def falling_stretch(values, lowest, share=0.25):
    """``(a, b)``: where the fall to the minimum ``values[lowest]`` is ``share`` done and ``1 - share`` done.

    The fall is measured from the highest value before ``lowest``: ``a`` is the last point before
    ``lowest`` that is still less than ``share`` of the way down, ``b`` the first point after ``a`` that
    is more than ``1 - share`` of the way down.
    """
    top, bottom = max(values[: lowest + 1]), values[lowest]
    drop = top - bottom
    a = max(i for i in range(lowest + 1) if values[i] >= top - share * drop)
    b = min(i for i in range(a, lowest + 1) if values[i] <= bottom + share * drop)
    return a, b


@dataclass
class LRFinderResult:
    """What a range test recorded, and the learning rates it suggests.

    ``lrs``: the learning rate of the first param group at each iteration (the other groups kept their
    ratio to it); ``raw_losses``: the training loss of each iteration (the validation loss with a
    ``val_loader``); ``losses``: ``raw_losses`` exponentially smoothed with ``smooth_f``, as plotted and
    as tested for divergence; ``stop_reason``: ``"completed"``, ``"diverged"`` (the smoothed loss passed
    ``diverge_th`` times its best; the last point is the one that did) or ``"nonfinite"`` (a loss was NaN
    or infinite; that iteration is not recorded).
    """

    lrs: list
    raw_losses: list
    losses: list
    smooth_f: float = 0.05
    step_mode: str = "exp"
    stop_reason: str = "completed"
    num_iter: int = None
    _trend: tuple = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_losses(cls, lrs, raw_losses, smooth_f=0.05, step_mode="exp", stop_reason="completed", num_iter=None):
        """A result from recorded (or synthetic) learning rates and raw losses; ``losses`` is computed."""
        lrs, raw_losses = [float(v) for v in lrs], [float(v) for v in raw_losses]
        if len(lrs) != len(raw_losses):
            raise ValueError(f"{len(lrs)} learning rates but {len(raw_losses)} losses")
        if any(not lr > 0 for lr in lrs):
            raise ValueError("learning rates must be positive (they are shown and fitted on a log scale)")
        return cls(lrs, raw_losses, ema(raw_losses, smooth_f), smooth_f, step_mode, stop_reason,
                   len(lrs) if num_iter is None else num_iter)

    def half_width(self):
        """Points on each side of the fitting window: ``max(2, n // 12)`` (8 of a 100-point sweep, so the
        window spans about 1.2 decades of a sweep from 1e-7 to 10)."""
        return max(2, len(self.lrs) // 12)

    def trend(self):
        """``(values, slopes)`` at each recorded point: the trend of ``raw_losses`` (a local quadratic fit)
        and its slope per decade of learning rate, d loss / d log10(lr) (a local linear fit, whose slope is
        less noisy); what the suggestions are read from."""
        if len(self.lrs) < MIN_POINTS:
            raise ValueError(f"the range test recorded {len(self.lrs)} points; a suggestion needs at least "
                             f"{MIN_POINTS} (raise num_iter, or lower start_lr if the loss diverged at once)")
        if self._trend is None:
            x = [math.log10(lr) for lr in self.lrs]
            # Losses far above the start (the explosion after divergence) are clipped to the start's
            # highest, so that the fit near the minimum follows the minimum, not the explosion.
            cap = max(self.raw_losses[: len(x) // 10 + 1])
            y = [min(v, cap) for v in self.raw_losses]
            values, _ = local_fit(x, y, self.half_width(), 2)
            _, slopes = local_fit(x, y, self.half_width(), 1)
            self._trend = (values, slopes)
        return self._trend

    def _descent(self):
        """``(values, slopes, lowest)``: the trend and the index of its minimum, checked to be a descent."""
        values, slopes = self.trend()
        lowest = int(values.argmin())
        if lowest == 0:
            raise ValueError("the loss did not decrease during the range test: lower start_lr, or check that the "
                             "model learns at all")
        return values, slopes, lowest

    def suggestion(self, method="valley"):
        """A suggested learning rate, as a float.

        - ``"valley"`` (default): the middle, in log10 of the learning rate, of the stretch over which the
          trend falls from its highest value to its minimum, from where 25% of that drop is done to where
          75% is: the middle of the region where training makes progress. Unlike a longest decreasing
          subsequence (fastai's valley) it is not drawn to small learning rates by a long flat start whose
          noise happens to drift downwards, and a flat bottom does not draw it to large ones.
        - ``"steepest"``: where the trend falls fastest (the most negative slope), searched from the first
          point whose fitting window is centred on it up to the trend's minimum, so neither the noisier
          slopes at the start of the curve nor the tail after divergence can win.
        - ``"minimum"``: a tenth of the learning rate at the trend's minimum (fastai's rule).

        ValueError when the curve has fewer than 5 points or never decreases.
        """
        if method not in METHODS:
            raise ValueError(f"unknown suggestion method {method!r}: choose from {', '.join(METHODS)}")
        values, slopes, lowest = self._descent()
        if method == "minimum":
            return self.lrs[lowest] / 10.0
        if method == "steepest":
            first = self.half_width() if lowest > self.half_width() else 0
            return self.lrs[first + int(slopes[first:lowest + 1].argmin())]
        a, b = falling_stretch(values.tolist(), lowest)
        return 10.0 ** ((math.log10(self.lrs[a]) + math.log10(self.lrs[b])) / 2)

    def suggestions(self):
        """Every method's suggestion: ``{"valley": float, "steepest": float, "minimum": float}``, with None
        for those the curve does not allow (too short, or the loss never decreased)."""
        out = {}
        for method in METHODS:
            try:
                out[method] = self.suggestion(method)
            except ValueError:
                out[method] = None
        return out

    def to_dict(self):
        """Plain lists and numbers (JSON-ready): the fields and ``suggestions``."""
        return {"lrs": list(self.lrs), "losses": list(self.losses), "raw_losses": list(self.raw_losses),
                "smooth_f": self.smooth_f, "step_mode": self.step_mode, "stop_reason": self.stop_reason,
                "num_iter": self.num_iter, "suggestions": self.suggestions()}

    def plot(self, path=None, ax=None, label=None):
        """Loss against learning rate (log axis): the raw losses as dots, the fitted trend as a line (the
        suggestions are read from it, and marked on it), the exponentially smoothed ``losses`` dashed.
        Draws on ``ax`` when given (several results can share one), else on a new figure; writes a PNG to
        ``path`` when given. Returns the axes. Needs matplotlib (``pip install 'fused_optim[plot]'``)."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(6.4, 4.2))
        # With a label (several results on one axes) the legend names each result once: its trend line
        # and its suggestions; the dots and dashed lines are the same kinds as on a single plot.
        name = f"{label} " if label else ""
        dots = ax.scatter(self.lrs, self.raw_losses, s=7, alpha=0.4, linewidths=0,
                          label="_nolegend_" if label else "loss per iteration")
        color = dots.get_facecolor()[0][:3]
        if len(self.lrs) >= MIN_POINTS:
            values, _ = self.trend()
            ax.plot(self.lrs, values, color=color, label=label or "trend (suggestions read here)")
        ax.plot(self.lrs, self.losses, "--", color=color, linewidth=0.8, alpha=0.7,
                label="_nolegend_" if label else f"smoothed (smooth_f={self.smooth_f:g})")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        try:
            lowest = self._descent()[2]
        except ValueError:
            lowest = None
        if lowest is not None:
            marks = {"valley": "o", "steepest": "v", "minimum": "s"}
            for method, lr in self.suggestions().items():
                ax.plot([lr], [_interpolate(self.lrs, values, lr)], marks[method], color=color, markersize=8,
                        markeredgecolor="black", label=f"{name}{method}: {lr:.2g}")
            # Keep the explosion after divergence from flattening the useful part of the curve.
            shown = self.raw_losses[: lowest + 1] + [float(v) for v in values[: lowest + 1]]
            low, high = min(shown), max(shown)
            previous = getattr(ax, "_lr_finder_range", None)  # several results on one axes: the union
            if previous is not None:
                low, high = min(low, previous[0]), max(high, previous[1])
            ax._lr_finder_range = (low, high)
            margin = 0.08 * (high - low + 1e-12)
            ax.set_ylim(low - margin, high + margin)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.25)
        if path is not None:
            (figure or ax.figure).savefig(path, format="png", dpi=110, bbox_inches="tight")
            if figure is not None:
                plt.close(figure)
        return ax


def _interpolate(lrs, values, lr):
    """``values`` at ``lr`` by linear interpolation in log10(lr)."""
    import numpy as np

    return float(np.interp(math.log10(lr), np.log10(lrs), values))


# ----- saving and restoring everything the sweep changes -------------------------------------

class _Snapshot:
    """Parameters, gradients, buffers, optimizer state, training flags and RNG states, restored bit for bit.

    In memory (clones on the tensors' own devices) by default; with ``cache_dir`` the tensors go to a
    file there instead (for models too large to hold twice), deleted after the restore.
    """

    def __init__(self, model, optimizer, cache_dir=None):
        self.model, self.optimizer = model, optimizer
        self.training = [(m, m.training) for m in model.modules()]
        self.rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.rng["cuda"] = torch.cuda.get_rng_state_all()
        try:
            import numpy

            self.rng["numpy"] = numpy.random.get_state()
        except ImportError:
            pass
        params = dict(model.named_parameters())
        tensors = {
            "params": {k: p.detach() for k, p in params.items()},
            "grads": {k: p.grad for k, p in params.items() if p.grad is not None},
            "buffers": dict(model.named_buffers()),
            "optimizer": optimizer.state_dict(),
        }
        self.path = None
        if cache_dir is None:
            self.tensors = copy.deepcopy(tensors)  # clones every tensor
        else:
            fd, self.path = tempfile.mkstemp(dir=cache_dir, prefix="lr-finder-", suffix=".pt")
            os.close(fd)
            torch.save(tensors, self.path)
            self.tensors = None

    def restore(self):
        tensors = self.tensors
        if tensors is None:
            tensors = torch.load(self.path, map_location="cpu", weights_only=False)
        model = self.model
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(tensors["params"][name])
                saved = tensors["grads"].get(name)
                if saved is None:
                    p.grad = None
                elif p.grad is not None and p.grad.shape == saved.shape and p.grad.dtype == saved.dtype:
                    p.grad.copy_(saved)
                else:
                    p.grad = saved.to(p.device).clone()
            for name, b in model.named_buffers():
                b.copy_(tensors["buffers"][name])
        self.optimizer.load_state_dict(tensors["optimizer"])
        for module, training in self.training:
            module.training = training
        torch.set_rng_state(self.rng["torch"])
        random.setstate(self.rng["python"])
        if "cuda" in self.rng:
            torch.cuda.set_rng_state_all(self.rng["cuda"])
        if "numpy" in self.rng:
            import numpy

            numpy.random.set_state(self.rng["numpy"])
        self.discard()

    def discard(self):
        self.tensors = None
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)


# ----- the finder ----------------------------------------------------------------------------

def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


class _Batches:
    """Batches of a loader without end: it is started again when exhausted (num_iter may exceed its length)."""

    def __init__(self, loader, what):
        self.loader, self.what, self.iterator = loader, what, iter(loader)

    def next(self):
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            try:
                batch = next(self.iterator)
            except StopIteration:
                raise ValueError(f"{self.what} yields no batches") from None
        if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
            raise TypeError(f"{self.what} must yield (inputs, targets) pairs, got {type(batch).__name__}"
                            + (f" of length {len(batch)}" if isinstance(batch, (list, tuple)) else ""))
        return batch


class LRFinder:
    """The learning-rate range test for ``model`` trained by ``optimizer`` on ``criterion(output, target)``.

    Any ``torch.optim.Optimizer`` works (fused_optim's and torch's), with any number of param groups: the
    sweep sets the first group's learning rate and scales the others by the same factor, so their ratios
    stay as configured. ``device``: where batches are moved (default: the device of the model's first
    parameter); the model itself is not moved. ``cache_dir``: keep the saved state in a file in that folder
    instead of in memory.
    """

    def __init__(self, model, optimizer, criterion, device=None, cache_dir=None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(criterion):
            raise TypeError("criterion must be callable as criterion(output, target)")
        if cache_dir is not None and not os.path.isdir(cache_dir):
            raise ValueError(f"cache_dir {cache_dir!r} is not an existing folder")
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.device = torch.device(device)
        self.cache_dir = cache_dir

    def range_test(self, train_loader, start_lr=1e-7, end_lr=10.0, num_iter=100, step_mode="exp", smooth_f=0.05,
                   diverge_th=4.0, accumulation_steps=1, val_loader=None, amp_dtype=None, progress=False):
        """Sweep from ``start_lr`` to ``end_lr`` over ``num_iter`` iterations and return an ``LRFinderResult``.

        ``step_mode``: ``"exp"`` (equal ratios; iteration i of n gets start * (end/start)^(i/(n-1))) or
        ``"linear"`` (equal steps). ``smooth_f``: weight of the newest loss in the smoothed curve (0: no
        smoothing). ``diverge_th``: stop when the smoothed loss exceeds ``best + (diverge_th - 1) * |best|``
        (``diverge_th`` times the best for positive losses). ``accumulation_steps``: batches per iteration,
        their gradients accumulated (each loss divided by the count) before one step. ``val_loader``: record
        the mean validation loss after each step instead of the training loss (slower, less noisy).
        ``amp_dtype``: ``torch.bfloat16`` or ``torch.float16`` to run the forward under ``torch.autocast``
        (float16 with a ``torch.amp.GradScaler``). ``progress``: True (or a label to show) for a progress
        bar on stderr.
        The loader is started again whenever it runs out.
        """
        self._check(train_loader, start_lr, end_lr, num_iter, step_mode, smooth_f, diverge_th, accumulation_steps,
                    val_loader, amp_dtype)
        snapshot = _Snapshot(self.model, self.optimizer, self.cache_dir)  # before anything draws random numbers
        groups = self.optimizer.param_groups
        ratios = [float(g["lr"]) / float(groups[0]["lr"]) for g in groups]
        if step_mode == "exp":
            schedule = [start_lr * (end_lr / start_lr) ** (i / (num_iter - 1)) for i in range(num_iter)]
        else:
            schedule = [start_lr + (end_lr - start_lr) * i / (num_iter - 1) for i in range(num_iter)]
        lrs, raw, smoothed, stop_reason, best = [], [], [], "completed", None
        bar = None
        try:
            scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None
            batches = _Batches(train_loader, "train_loader")
            if progress:
                from .._progress import Progress

                label = progress if isinstance(progress, str) else "range test"
                bar = Progress(num_iter, unit="it")
                bar.update(0, label)
            self.model.train()
            for i, lr in enumerate(schedule):
                for group, ratio in zip(groups, ratios):
                    if isinstance(group["lr"], torch.Tensor):
                        group["lr"].fill_(lr * ratio)
                    else:
                        group["lr"] = lr * ratio
                loss = self._train_step(batches, accumulation_steps, amp_dtype, scaler)
                if val_loader is not None:
                    loss = self._evaluate(val_loader, amp_dtype)
                if not math.isfinite(loss):
                    stop_reason = "nonfinite"
                    break
                value = loss if not smoothed or smooth_f in (0, 1) else smooth_f * loss + (1 - smooth_f) * smoothed[-1]
                lrs.append(lr)
                raw.append(loss)
                smoothed.append(value)
                if bar is not None:
                    bar.update(i + 1, label, f"lr {lr:.3g} loss {value:.4g}")
                best = value if best is None else min(best, value)
                if value > best + (diverge_th - 1) * abs(best):
                    stop_reason = "diverged"
                    break
        finally:
            if bar is not None:
                bar.close()
            snapshot.restore()
        return LRFinderResult(lrs, raw, smoothed, smooth_f, step_mode, stop_reason, num_iter)

    def _check(self, train_loader, start_lr, end_lr, num_iter, step_mode, smooth_f, diverge_th, accumulation_steps,
               val_loader, amp_dtype):
        """Every argument checked before anything is changed."""
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {', '.join(STEP_MODES)}, got {step_mode!r}")
        if not (isinstance(start_lr, (int, float)) and start_lr > 0 and math.isfinite(start_lr)):
            raise ValueError(f"start_lr must be a positive number, got {start_lr!r}")
        if not (isinstance(end_lr, (int, float)) and math.isfinite(end_lr) and end_lr > start_lr):
            raise ValueError(f"end_lr must be a number above start_lr ({start_lr}), got {end_lr!r}")
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 2:
            raise ValueError(f"num_iter must be a whole number of at least 2, got {num_iter!r}")
        if not (isinstance(smooth_f, (int, float)) and 0 <= smooth_f <= 1):
            raise ValueError(f"smooth_f must be in [0, 1] (0: no smoothing), got {smooth_f!r}")
        if not (isinstance(diverge_th, (int, float)) and diverge_th > 1):
            raise ValueError(f"diverge_th must be a number above 1, got {diverge_th!r}")
        if isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a whole number of at least 1, got {accumulation_steps!r}")
        if amp_dtype is not None and amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be None, torch.float16 or torch.bfloat16, got {amp_dtype!r}")
        for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
            if loader is None and name == "val_loader":
                continue
            if not hasattr(loader, "__iter__"):
                raise TypeError(f"{name} must be iterable (a DataLoader), got {type(loader).__name__}")
            if hasattr(loader, "__len__") and len(loader) == 0:
                raise ValueError(f"{name} is empty")
        first = float(self.optimizer.param_groups[0]["lr"])
        if not first > 0:
            raise ValueError(f"the first param group's lr must be positive, got {first}: the sweep keeps every "
                             "group's ratio to it")

    def _autocast(self, amp_dtype):
        if amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=amp_dtype)

    def _train_step(self, batches, accumulation_steps, amp_dtype, scaler):
        """One optimizer step on ``accumulation_steps`` batches; their mean loss (before the step)."""
        self.optimizer.zero_grad()
        total = 0.0
        for _ in range(accumulation_steps):
            inputs, targets = batches.next()
            inputs, targets = _to(inputs, self.device), _to(targets, self.device)
            with self._autocast(amp_dtype):
                loss = self.criterion(self.model(inputs), targets)
            scaled = loss / accumulation_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += loss.item()
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        return total / accumulation_steps

    def _evaluate(self, loader, amp_dtype):
        """Mean loss over ``loader`` in eval mode (batches weighted by their size)."""
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
                    raise TypeError("val_loader must yield (inputs, targets) pairs")
                inputs, targets = _to(batch[0], self.device), _to(batch[1], self.device)
                with self._autocast(amp_dtype):
                    loss = self.criterion(self.model(inputs), targets)
                n = len(targets) if hasattr(targets, "__len__") else 1
                total += loss.item() * n
                count += n
        self.model.train()
        if count == 0:
            raise ValueError("val_loader yields no batches")
        return total / count
