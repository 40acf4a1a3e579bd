"""LayerNorm and BatchNorm, forward and backward, written out in plain PyTorch.

Statistics and every reduction run in float32 (float64 for float64 inputs); the output is rounded
once to the input's dtype. The forward functions return the saved statistics the backward
functions take: ``mean`` and ``rstd = 1 / sqrt(var + eps)`` in the compute dtype, flat, one per
LayerNorm row or per BatchNorm channel. Gradients of weight and bias are returned in the compute
dtype; the caller casts them to the parameters' dtype.
"""

import torch


def compute_dtype(dtype):
    """The dtype statistics and arithmetic use for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def layer_norm_forward(x, weight, bias, eps):
    """LayerNorm of the rows of ``x`` (M, N): returns (y, mean, rstd).

    ``weight`` and ``bias`` are None or (N,) tensors in the compute dtype.
    """
    c = compute_dtype(x.dtype)
    xf = x.to(c)
    mean = xf.mean(dim=1, keepdim=True)
    centered = xf - mean
    # Biased variance, from the centered values (never E[x^2] - E[x]^2, which cancels).
    var = (centered * centered).mean(dim=1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    y = centered * rstd
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype), mean.reshape(-1), rstd.reshape(-1)


def layer_norm_backward(dy, x, weight, mean, rstd, need_dx, need_dweight, need_dbias):
    """Gradients (dx, dweight, dbias) of LayerNorm over rows of (M, N); None where not needed.

    With xhat = (x - mean) * rstd and g = dy * weight:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dweight = sum_rows(dy * xhat), dbias = sum_rows(dy).
    """
    c = compute_dtype(x.dtype)
    dyf = dy.to(c)
    xhat = (x.to(c) - mean[:, None]) * rstd[:, None]
    dx = dweight = dbias = None
    if need_dx:
        g = dyf * weight if weight is not None else dyf
        mean_g = g.mean(dim=1, keepdim=True)
        mean_gx = (g * xhat).mean(dim=1, keepdim=True)
        dx = (rstd[:, None] * (g - mean_g - xhat * mean_gx)).to(x.dtype)
    if need_dweight:
        dweight = (dyf * xhat).sum(dim=0)
    if need_dbias:
        dbias = dyf.sum(dim=0)
    return dx, dweight, dbias


def _channel_view(t, ndim):
    """A per-channel (C,) tensor shaped to broadcast against (N, C, *spatial) of rank ``ndim``."""
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_forward(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps):
    """BatchNorm of ``x`` (N, C, *spatial): returns (y, mean, rstd), the statistics it normalized with.

    With ``use_batch_stats`` the statistics are the batch's (biased variance) and the running
    statistics that are not None are updated in place: ``running = (1 - momentum) * running +
    momentum * batch``, with the unbiased variance ``var * n / (n - 1)``. Otherwise the running
    statistics normalize. ``weight`` and ``bias`` are None or (C,) tensors in the compute dtype.
    """
    c = compute_dtype(x.dtype)
    xf = x.to(c)
    dims = [0] + list(range(2, x.dim()))
    if use_batch_stats:
        n = x.numel() // x.shape[1]
        mean = xf.mean(dim=dims)
        centered = xf - _channel_view(mean, x.dim())
        var = (centered * centered).mean(dim=dims)
        if running_mean is not None:
            updated = (1 - momentum) * running_mean.to(c) + momentum * mean
            running_mean.copy_(updated.to(running_mean.dtype))
        if running_var is not None:
            updated = (1 - momentum) * running_var.to(c) + momentum * (var * (n / (n - 1)))
            running_var.copy_(updated.to(running_var.dtype))
    else:
        # Copies: the saved statistics must not change when the running ones are next updated.
        mean = running_mean.to(c, copy=True)
        var = running_var.to(c)
    rstd = torch.rsqrt(var + eps)
    # y = x * alpha + beta per channel, the form torch's CPU kernel uses.
    alpha = rstd * weight if weight is not None else rstd
    beta = -mean * alpha
    if bias is not None:
        beta = beta + bias
    y = xf * _channel_view(alpha, x.dim()) + _channel_view(beta, x.dim())
    return y.to(x.dtype), mean, rstd


def batch_norm_backward(dy, x, weight, mean, rstd, used_batch_stats, need_dx, need_dweight, need_dbias):
    """Gradients (dx, dweight, dbias) of BatchNorm over (N, C, *spatial); None where not needed.

    With batch statistics, dx = weight * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) per
    channel; with running statistics they are constants and dx = weight * rstd * dy.
    """
    c = compute_dtype(x.dtype)
    dims = [0] + list(range(2, x.dim()))
    dyf = dy.to(c)
    xhat = (x.to(c) - _channel_view(mean, x.dim())) * _channel_view(rstd, x.dim())
    scale = rstd * weight if weight is not None else rstd
    dx = dweight = dbias = None
    if need_dx:
        if used_batch_stats:
            n = x.numel() // x.shape[1]
            mean_dy = dyf.sum(dim=dims) / n
            mean_dy_xhat = (dyf * xhat).sum(dim=dims) / n
            inner = dyf - _channel_view(mean_dy, x.dim()) - xhat * _channel_view(mean_dy_xhat, x.dim())
            dx = (_channel_view(scale, x.dim()) * inner).to(x.dtype)
        else:
            dx = (_channel_view(scale, x.dim()) * dyf).to(x.dtype)
    if need_dweight:
        dweight = (dyf * xhat).sum(dim=dims)
    if need_dbias:
        dbias = dyf.sum(dim=dims)
    return dx, dweight, dbias
