"""Loss landscapes: the loss on a 2D plane through the parameters along two (filter-normalized)
random directions, and on the line between two solutions (after Li et al., 2018, "Visualizing the
Loss Landscape of Neural Nets").

Every point is evaluated under ``torch.no_grad()`` with the model in ``eval()``; the model's
parameters, buffers and train/eval modes are restored exactly afterwards, also when an evaluation
raises.
"""

import contextlib
import dataclasses

import torch

from ._select import check_patterns, matches, owners

NORMALIZATIONS = ("filter", "layer", None)


@contextlib.contextmanager
def _points_progress(total, progress, label):
    """A function to call after each evaluated point: the package's progress bar (tqdm on a terminal,
    one plain line on a pipe) when ``progress`` asks for one; None: for 50 points and more."""
    show = total >= 50 if progress is None else bool(progress)
    if not show:
        yield lambda detail=None: None
        return
    from .._progress import Progress

    bar = Progress(total, unit="point")
    bar.update(0, label)
    done = [0]

    def advance(detail=None):
        done[0] += 1
        bar.update(done[0], label, detail)

    try:
        yield advance
    finally:
        bar.close()


@contextlib.contextmanager
def _evaluating(model):
    """Model in eval(), gradients off; parameters, buffers and modes restored bit for bit after."""
    modes = [(m, m.training) for m in model.modules()]
    saved = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        with torch.no_grad():
            for t, s in zip((*model.parameters(), *model.buffers()), saved):
                t.copy_(s)
        for m, training in modes:
            m.training = training


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


def _mean_loss(model, loss_fn, loader, max_batches, device):
    """The mean over batches ``(input, target)`` of ``loss_fn(model(input), target)``, a float."""
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        inputs, target = _to(batch[0], device), _to(batch[1], device)
        output = model(*inputs) if isinstance(inputs, (list, tuple)) else model(inputs)
        total += float(loss_fn(output, target))
        count += 1
    if count == 0:
        raise ValueError("the loader gave no batches")
    return total / count


def _grid(span, n, what):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive int, got {n!r}")
    low, high = (float(s) for s in span)
    if not low < high:
        raise ValueError(f"span must be (low, high) with low < high, got {span!r}")
    values = torch.linspace(low, high, n, dtype=torch.float64)
    values[values.abs() <= 1e-12 * max(abs(low), abs(high))] = 0.0  # the center is exactly the model
    return values


def _filters(t):
    """The rows of ``t`` seen along dim 0 (a view where ``t`` is contiguous)."""
    return t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1)


def random_directions(model, normalize="filter", ignore=("bias", "norm"), generator=None):
    """One random Gaussian direction: a tensor per tensor of ``model.parameters()``, zero for the
    ignored ones, normalized to the parameters' scale (see :func:`loss_landscape`)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    ignore = check_patterns(ignore, "ignore")
    directions = []
    for name, p, module in owners(model):
        w = p.detach()
        if matches(name, module, ignore):
            directions.append(torch.zeros_like(w))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        if normalize == "filter":
            # Each filter (slice along dim 0; a 0-dim parameter is one filter) to its weight filter's norm.
            wf, df = _filters(w), _filters(d)
            df.mul_(wf.norm(dim=1, keepdim=True) / (df.norm(dim=1, keepdim=True) + 1e-10))
        elif normalize == "layer":
            d.mul_(w.norm() / (d.norm() + 1e-10))
        directions.append(d)
    return directions


@dataclasses.dataclass
class Landscape:
    """``losses[i, j]`` is the mean loss at ``parameters + alphas[i] * directions[0] + betas[j] *
    directions[1]`` (float64 tensors); ``directions`` holds two lists of tensors, one per tensor of
    ``model.parameters()`` in order."""

    alphas: torch.Tensor
    betas: torch.Tensor
    losses: torch.Tensor
    directions: list

    KINDS = ("contour", "surface")

    def plot(self, path, kind="contour", levels=30):
        """A contour map or a 3D surface of the losses (matplotlib, the ``plot`` extra)."""
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        plt = _pyplot()
        a, b = torch.meshgrid(self.alphas, self.betas, indexing="ij")
        a, b, z = a.numpy(), b.numpy(), self.losses.numpy()
        if kind == "contour":
            fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
            filled = ax.contourf(a, b, z, levels=levels, cmap="viridis")
            ax.contour(a, b, z, levels=levels, colors="k", linewidths=0.3)
            fig.colorbar(filled, ax=ax, label="loss")
            ax.plot([0], [0], "r+", markersize=10)
        else:
            fig = plt.figure(figsize=(7, 5), constrained_layout=True)
            ax = fig.add_subplot(projection="3d")
            ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)
            ax.set_zlabel("loss")
        ax.set_xlabel("alpha (direction 1)")
        ax.set_ylabel("beta (direction 2)")
        fig.savefig(path, dpi=100)
        plt.close(fig)


@dataclasses.dataclass
class Interpolation:
    """``losses[i]`` is the mean loss at ``(1 - alphas[i]) * model_a + alphas[i] * model_b``."""

    alphas: torch.Tensor
    losses: torch.Tensor

    def plot(self, path):
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
        ax.plot(self.alphas.numpy(), self.losses.numpy(), marker=".")
        ax.set_xlabel("alpha (0: model_a, 1: model_b)")
        ax.set_ylabel("loss")
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'fused_optim[plot]'") from e
    return plt


def _check_directions(directions, params):
    if len(directions) != 2:
        raise ValueError(f"directions must be two lists of tensors, got {len(directions)}")
    for d in directions:
        d = list(d)
        if len(d) != len(params) or any(t.shape != p.shape for t, p in zip(d, params)):
            raise ValueError("each direction needs one tensor per tensor of model.parameters(), of the same shape")
    return [[t.detach().to(p.device, p.dtype) for t, p in zip(d, params)] for d in directions]


def loss_landscape(model, loss_fn, loader, directions=None, span=(-1.0, 1.0), steps=(25, 25), normalize="filter",
                   ignore=("bias", "norm"), max_batches=None, generator=None, progress=None):
    """The mean loss over ``loader`` (batches ``(input, target)``, at most ``max_batches``) of
    ``loss_fn(model(input), target)`` on a ``steps[0]`` x ``steps[1]`` grid spanning ``span`` along
    two directions from the current parameters.

    Without ``directions``, two random Gaussian ones (drawn with ``generator``): with
    ``normalize="filter"`` each filter (a slice along dim 0) scaled to the norm of the same filter
    of the weights, with ``"layer"`` each tensor to its weight's norm, with None as drawn; the
    parameters that a pattern of ``ignore`` names (a substring of the qualified name or of the
    module's class name: biases and normalization layers by default) get zero directions. A grid
    with an odd number of points holds the unperturbed model at its center. ``progress``: a
    progress bar (tqdm on a terminal, a plain line on a pipe; None: for 50 points and more).
    """
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    if len(steps) != 2:
        raise ValueError(f"steps must be two ints, got {steps!r}")
    alphas, betas = _grid(span, steps[0], "steps[0]"), _grid(span, steps[1], "steps[1]")
    if directions is None:
        directions = [random_directions(model, normalize, ignore, generator) for _ in range(2)]
    directions = _check_directions(directions, params)
    losses = torch.empty(len(alphas), len(betas), dtype=torch.float64)
    device = params[0].device
    with _evaluating(model), _points_progress(losses.numel(), progress, "loss landscape") as advance:
        origin = [p.detach().clone() for p in params]
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                torch._foreach_copy_(params, origin)
                if a:
                    torch._foreach_add_(params, directions[0], alpha=a)
                if b:
                    torch._foreach_add_(params, directions[1], alpha=b)
                losses[i, j] = _mean_loss(model, loss_fn, loader, max_batches, device)
                advance(f"loss {losses[i, j].item():.4g}")
    return Landscape(alphas, betas, losses, directions)


def interpolate(model_a, model_b, loss_fn, loader, steps=25, span=(0.0, 1.0), max_batches=None, progress=None):
    """The mean loss along ``(1 - alpha) * model_a + alpha * model_b`` for ``steps`` values of alpha
    over ``span``: parameters and floating-point buffers (BatchNorm's running statistics) are
    interpolated, other buffers are model_a's. Evaluated on model_a, which is restored afterwards;
    alpha = 0 and alpha = 1 give exactly model_a and model_b."""
    pa, pb = list(model_a.parameters()), list(model_b.parameters())
    ba, bb = list(model_a.buffers()), list(model_b.buffers())
    if len(pa) != len(pb) or len(ba) != len(bb) or any(
            x.shape != y.shape or x.dtype != y.dtype for x, y in zip((*pa, *ba), (*pb, *bb))):
        raise ValueError("model_a and model_b must have parameters and buffers of the same shapes and dtypes")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int of at least 2, got {steps!r}")
    low, high = (float(s) for s in span)
    alphas = torch.linspace(low, high, steps, dtype=torch.float64)
    alphas[alphas.abs() <= 1e-12 * max(abs(low), abs(high))] = 0.0
    targets = [t for t in (*pa, *ba) if t.is_floating_point()]
    ends = [t.detach().to(a.device) for a, t in zip((*pa, *ba), (*pb, *bb)) if a.is_floating_point()]
    losses = torch.empty(steps, dtype=torch.float64)
    device = pa[0].device if pa else None
    with _evaluating(model_a), _points_progress(steps, progress, "interpolation") as advance:
        origin = [t.detach().clone() for t in targets]
        for i, a in enumerate(alphas.tolist()):
            torch._foreach_copy_(targets, origin)
            torch._foreach_lerp_(targets, ends, a)
            losses[i] = _mean_loss(model_a, loss_fn, loader, max_batches, device)
            advance(f"loss {losses[i].item():.4g}")
    return Interpolation(alphas, losses)
