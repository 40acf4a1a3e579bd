"""BatchNorm forward and backward over a contiguous 3-D tensor in one of two layouts:
planar (N, C, S) or channels_last (N, S, C). Element (n, c, s) lies at ((n * C + c) * S + s) or
((n * S + s) * C + c); every kernel walks m = n * S + s for a block of channels.

Forward with batch statistics, three launches: a split reduction (one program per block of
channels and split of m) of each split's mean and M2, chunk by chunk with Chan's formula; a
combine per block of channels that merges the splits, updates the running statistics in place
and writes y = x * alpha + beta's alpha and beta; and the elementwise normalization. Backward
likewise: split sums of dy and dy * (x - mean), a combine that writes the weight and bias
gradients and dx's per-channel coefficients, and the elementwise dx. No atomics: results are
deterministic. Statistics and sums are in float32 (float64 for float64 input).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .common import (TL_DTYPES, direct, div_rn, is_aligned, multiple_of, multiprocessors, next_power_of_2, scalar,
                     sqrt_rn, to_storage, vector_width)

# Elements per program tile, and the widest channel block of the channels_last tiling.
TILE_ELEMENTS = 2048
CHANNELS_LAST_BLOCK_C = 64
# Channels per tile of the planar tiling: each channel's values are contiguous along m.
PLANAR_BLOCK_C = 4
# Programs of each split launch, per streaming multiprocessor (CUDA) or in all (CPU); and the
# most splits of m, which the combine holds in one tile.
PROGRAMS_PER_SM = 8
PROGRAMS_CPU = 4
MAX_SPLITS = 256
# Fewest values of m per split; every split is a multiple of this many, so a planar split
# starts on a 128-bit boundary of each channel's run whenever S does.
MIN_SPLIT = 16
# Splits per iteration of the combines' loop: a 32 x CHANNELS_LAST_BLOCK_C tile stays in registers.
COMBINE_BLOCK_S = 32


@triton.jit
def _channel_block(C, BLOCK_C: tl.constexpr):
    """This program's block of channels (axis 0 of the grid) and which of them exist."""
    chans = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    return chans, chans < C


@triton.jit
def _split_range(split_size, M):
    """This program's range [m_start, m_end) of the M rows (axis 1 of the grid)."""
    m_start = tl.program_id(1).to(tl.int64) * split_size
    return m_start, tl.minimum(m_start + split_size, M)


@triton.jit
def _aligned(C, S, M, split_size, CHANNELS_LAST: tl.constexpr, ALIGNED: tl.constexpr, BITS: tl.constexpr):
    """(C, S, M, split_size), with the divisibility an aligned launch guarantees made visible to the
    compiler (channels_last: C; planar: S, hence M, and split_size are multiples of a 128-bit
    vector of BITS-bit elements), so loads and stores along the contiguous axis are 128 bits."""
    if ALIGNED:
        if CHANNELS_LAST:
            C = multiple_of(C, 128 // BITS)
        else:
            S = multiple_of(S, 128 // BITS)
            M = multiple_of(M, 128 // BITS)
            split_size = multiple_of(split_size, 128 // BITS)
    return C, S, M, split_size


@triton.jit
def _offsets(ms, chans, C, S, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        return ms[:, None] * C + chans[None, :]
    else:
        n = ms // S
        return (n[:, None] * C + chans[None, :]) * S + (ms % S)[:, None]


@triton.jit(do_not_specialize=["C", "S", "M", "split_size"])
def batch_norm_moments_kernel(x_ptr, mean_ptr, m2_ptr, C, S, M, split_size, CHANNELS_LAST: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr,
                              ALIGNED: tl.constexpr = False):
    """Mean and M2 of each channel's values m in this program's split, into mean_ptr/m2_ptr[split, channel]."""
    C, S, M, split_size = _aligned(C, S, M, split_size, CHANNELS_LAST, ALIGNED,
                                   x_ptr.dtype.element_ty.primitive_bitwidth)
    chans, chan_mask = _channel_block(C, BLOCK_C)
    split = tl.program_id(1).to(tl.int64)
    m_start, m_end = _split_range(split_size, M)
    mean = tl.zeros([BLOCK_C], CT)
    m2 = tl.zeros([BLOCK_C], CT)
    for start in range(m_start, m_end, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        mask = (ms < m_end)[:, None] & chan_mask[None, :]
        x = tl.load(x_ptr + _offsets(ms, chans, C, S, CHANNELS_LAST), mask=mask, other=0.0).to(CT)
        seen = (start - m_start) + tl.zeros([BLOCK_C], CT)
        k = tl.minimum(m_end - start, BLOCK_M) + tl.zeros([BLOCK_C], CT)
        chunk_mean = div_rn(tl.sum(x, axis=0), k)
        d = tl.where(mask, x - chunk_mean[None, :], 0.0)
        # Chan et al.: merge the chunk's mean and M2 into the split's, no cancellation.
        total = seen + k
        delta = chunk_mean - mean
        mean = mean + delta * div_rn(k, total)
        m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * div_rn(seen * k, total)
    tl.store(mean_ptr + split * C + chans, mean, mask=chan_mask)
    tl.store(m2_ptr + split * C + chans, m2, mask=chan_mask)


@triton.jit
def _split_block(ptr, first, chans, chan_mask, C, M, split_size, splits, BLOCK_S: tl.constexpr, CT: tl.constexpr):
    """Splits [first, first + BLOCK_S) of a [split, channel] buffer: (values, mask, element counts).
    The combines loop over blocks of splits so that their tile stays in registers."""
    s = first + tl.arange(0, BLOCK_S).to(tl.int64)
    s_mask = s < splits
    mask = s_mask[:, None] & chan_mask[None, :]
    values = tl.load(ptr + s[:, None] * C + chans[None, :], mask=mask, other=0.0)
    return values, mask, tl.where(s_mask, tl.minimum(split_size, M - s * split_size), 0).to(CT)


@triton.jit(do_not_specialize=["C", "M", "split_size", "splits"])
def batch_norm_combine_kernel(split_mean_ptr, split_m2_ptr, w_ptr, b_ptr, running_mean_ptr, running_var_ptr, mean_ptr,
                              rstd_ptr, alpha_ptr, beta_ptr, C, M, split_size, splits, momentum: tl.float64,
                              eps: tl.float64,
                              USE_BATCH_STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                              HAS_RUNNING_MEAN: tl.constexpr, HAS_RUNNING_VAR: tl.constexpr, RM: tl.constexpr,
                              RV: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr):
    """Per channel: the statistics to normalize with (saved), running-stat updates, and alpha, beta."""
    momentum = scalar(momentum, CT)
    eps = scalar(eps, CT)
    chans, chan_mask = _channel_block(C, BLOCK_C)
    if USE_BATCH_STATS:
        n = M + tl.zeros([BLOCK_C], CT)
        weighted = tl.zeros([BLOCK_C], CT)
        for first in range(0, splits, BLOCK_S):
            split_mean, _, counts = _split_block(split_mean_ptr, first, chans, chan_mask, C, M, split_size, splits,
                                                 BLOCK_S, CT)
            weighted += tl.sum(counts[:, None] * split_mean, axis=0)
        mean = div_rn(weighted, n)
        # M2 of the union: the splits' own M2 plus their means' spread about the overall mean.
        m2 = tl.zeros([BLOCK_C], CT)
        for first in range(0, splits, BLOCK_S):
            split_mean, mask, counts = _split_block(split_mean_ptr, first, chans, chan_mask, C, M, split_size, splits,
                                                    BLOCK_S, CT)
            split_m2, _, _ = _split_block(split_m2_ptr, first, chans, chan_mask, C, M, split_size, splits, BLOCK_S, CT)
            d = tl.where(mask, split_mean - mean[None, :], 0.0)
            m2 += tl.sum(split_m2, axis=0) + tl.sum(counts[:, None] * d * d, axis=0)
        var = div_rn(m2, n)
        if HAS_RUNNING_MEAN:
            running = tl.load(running_mean_ptr + chans, mask=chan_mask, other=0.0).to(CT)
            tl.store(running_mean_ptr + chans, to_storage(momentum * mean + (1.0 - momentum) * running, RM),
                     mask=chan_mask)
        if HAS_RUNNING_VAR:
            running = tl.load(running_var_ptr + chans, mask=chan_mask, other=0.0).to(CT)
            unbiased = div_rn(m2, n - 1.0)
            tl.store(running_var_ptr + chans, to_storage(momentum * unbiased + (1.0 - momentum) * running, RV),
                     mask=chan_mask)
    else:
        mean = tl.load(running_mean_ptr + chans, mask=chan_mask, other=0.0).to(CT)
        var = tl.load(running_var_ptr + chans, mask=chan_mask, other=1.0).to(CT)
    rstd = div_rn(tl.full([BLOCK_C], 1.0, CT), sqrt_rn(var + eps))
    alpha = rstd
    if HAS_WEIGHT:
        alpha = alpha * tl.load(w_ptr + chans, mask=chan_mask, other=0.0).to(CT)
    beta = -mean * alpha
    if HAS_BIAS:
        beta = tl.load(b_ptr + chans, mask=chan_mask, other=0.0).to(CT) + beta
    tl.store(mean_ptr + chans, mean, mask=chan_mask)
    tl.store(rstd_ptr + chans, rstd, mask=chan_mask)
    tl.store(alpha_ptr + chans, alpha, mask=chan_mask)
    tl.store(beta_ptr + chans, beta, mask=chan_mask)


@triton.jit(do_not_specialize=["C", "S", "M", "split_size"])
def batch_norm_affine_kernel(x_ptr, y_ptr, alpha_ptr, beta_ptr, C, S, M, split_size, CHANNELS_LAST: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr, Y: tl.constexpr,
                             ALIGNED: tl.constexpr = False):
    """y = x * alpha[c] + beta[c] over this program's block of channels and split of m."""
    C, S, M, split_size = _aligned(C, S, M, split_size, CHANNELS_LAST, ALIGNED, Y.primitive_bitwidth)
    chans, chan_mask = _channel_block(C, BLOCK_C)
    alpha = tl.load(alpha_ptr + chans, mask=chan_mask, other=0.0)
    beta = tl.load(beta_ptr + chans, mask=chan_mask, other=0.0)
    m_start, m_end = _split_range(split_size, M)
    for start in range(m_start, m_end, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        mask = (ms < m_end)[:, None] & chan_mask[None, :]
        offsets = _offsets(ms, chans, C, S, CHANNELS_LAST)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(CT)
        tl.store(y_ptr + offsets, to_storage(x * alpha[None, :] + beta[None, :], Y), mask=mask)


@triton.jit(do_not_specialize=["C", "S", "M", "split_size"])
def batch_norm_grad_sums_kernel(dy_ptr, x_ptr, mean_ptr, sum_dy_ptr, sum_dy_xmu_ptr, C, S, M, split_size,
                                CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                                CT: tl.constexpr, ALIGNED: tl.constexpr = False):
    """Sums of dy and dy * (x - mean) per channel over this program's split, into [split, channel]."""
    C, S, M, split_size = _aligned(C, S, M, split_size, CHANNELS_LAST, ALIGNED,
                                   x_ptr.dtype.element_ty.primitive_bitwidth)
    chans, chan_mask = _channel_block(C, BLOCK_C)
    mean = tl.load(mean_ptr + chans, mask=chan_mask, other=0.0)
    split = tl.program_id(1).to(tl.int64)
    m_start = split * split_size
    m_end = tl.minimum(m_start + split_size, M)
    sum_dy = tl.zeros([BLOCK_M, BLOCK_C], CT)
    sum_dy_xmu = tl.zeros([BLOCK_M, BLOCK_C], CT)
    for start in range(m_start, m_end, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        mask = (ms < m_end)[:, None] & chan_mask[None, :]
        offsets = _offsets(ms, chans, C, S, CHANNELS_LAST)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(CT)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(CT)
        sum_dy += dy
        sum_dy_xmu += dy * tl.where(mask, x - mean[None, :], 0.0)
    tl.store(sum_dy_ptr + split * C + chans, tl.sum(sum_dy, axis=0), mask=chan_mask)
    tl.store(sum_dy_xmu_ptr + split * C + chans, tl.sum(sum_dy_xmu, axis=0), mask=chan_mask)


@triton.jit(do_not_specialize=["C", "M", "splits"])
def batch_norm_grad_combine_kernel(sum_dy_ptr, sum_dy_xmu_ptr, w_ptr, mean_ptr, rstd_ptr, dweight_ptr, dbias_ptr,
                                   k1_ptr, k2_ptr, k3_ptr, C, M, splits, HAS_SUMS: tl.constexpr,
                                   USED_BATCH_STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                   BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, CT: tl.constexpr):
    """Weight and bias gradients, and dx = dy * k1 + (x - mean) * k2 + k3's per-channel coefficients.

    dx = w * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) with xhat = (x - mean) * rstd gives
    k1 = w * rstd, k2 = -w * rstd^3 * sum(dy * (x - mean)) / n, k3 = -w * rstd * sum(dy) / n;
    with running statistics (constants), k1 alone.
    """
    chans, chan_mask = _channel_block(C, BLOCK_C)
    rstd = tl.load(rstd_ptr + chans, mask=chan_mask, other=0.0)
    scale = rstd
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + chans, mask=chan_mask, other=0.0).to(CT)
    tl.store(k1_ptr + chans, scale, mask=chan_mask)
    if HAS_SUMS:
        sum_dy = tl.zeros([BLOCK_C], CT)
        sum_dy_xmu = tl.zeros([BLOCK_C], CT)
        for first in range(0, splits, BLOCK_S):  # blocks of splits, so the tile stays in registers
            s = first + tl.arange(0, BLOCK_S).to(tl.int64)
            mask = (s < splits)[:, None] & chan_mask[None, :]
            offsets = s[:, None] * C + chans[None, :]
            sum_dy += tl.sum(tl.load(sum_dy_ptr + offsets, mask=mask, other=0.0), axis=0)
            sum_dy_xmu += tl.sum(tl.load(sum_dy_xmu_ptr + offsets, mask=mask, other=0.0), axis=0)
        tl.store(dweight_ptr + chans, sum_dy_xmu * rstd, mask=chan_mask)
        tl.store(dbias_ptr + chans, sum_dy, mask=chan_mask)
        if USED_BATCH_STATS:
            n = M + tl.zeros([BLOCK_C], CT)
            tl.store(k2_ptr + chans, -div_rn(scale * rstd * rstd * sum_dy_xmu, n), mask=chan_mask)
            tl.store(k3_ptr + chans, -div_rn(scale * sum_dy, n), mask=chan_mask)


@triton.jit(do_not_specialize=["C", "S", "M", "split_size"])
def batch_norm_dx_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, k1_ptr, k2_ptr, k3_ptr, C, S, M, split_size,
                         USED_BATCH_STATS: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_C: tl.constexpr, CT: tl.constexpr, X: tl.constexpr, ALIGNED: tl.constexpr = False):
    C, S, M, split_size = _aligned(C, S, M, split_size, CHANNELS_LAST, ALIGNED, X.primitive_bitwidth)
    chans, chan_mask = _channel_block(C, BLOCK_C)
    k1 = tl.load(k1_ptr + chans, mask=chan_mask, other=0.0)
    if USED_BATCH_STATS:
        mean = tl.load(mean_ptr + chans, mask=chan_mask, other=0.0)
        k2 = tl.load(k2_ptr + chans, mask=chan_mask, other=0.0)
        k3 = tl.load(k3_ptr + chans, mask=chan_mask, other=0.0)
    m_start, m_end = _split_range(split_size, M)
    for start in range(m_start, m_end, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M)
        mask = (ms < m_end)[:, None] & chan_mask[None, :]
        offsets = _offsets(ms, chans, C, S, CHANNELS_LAST)
        dx = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(CT) * k1[None, :]
        if USED_BATCH_STATS:
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(CT)
            dx = dx + (x - mean[None, :]) * k2[None, :] + k3[None, :]
        tl.store(dx_ptr + offsets, to_storage(dx, X), mask=mask)


class _Grid:
    """How a (N, C, S) problem is cut: channel blocks x splits of m = n * S + s, and the tile."""

    def __init__(self, x, channels_last, traced=False):
        self.traced = traced
        if channels_last:
            self.batch, self.spatial, self.channels = x.shape
            self.block_c = min(CHANNELS_LAST_BLOCK_C, max(2, next_power_of_2(self.channels)))
        else:
            self.batch, self.channels, self.spatial = x.shape
            self.block_c = min(PLANAR_BLOCK_C, max(2, next_power_of_2(self.channels)))
        self.m = self.batch * self.spatial
        self.channel_blocks = triton.cdiv(self.channels, self.block_c)
        if x.device.type == "cuda":
            budget = PROGRAMS_PER_SM * multiprocessors(x.device)
        else:
            budget = PROGRAMS_CPU
        splits = max(1, min(budget // self.channel_blocks, triton.cdiv(self.m, MIN_SPLIT), MAX_SPLITS))
        self.split_size = triton.cdiv(triton.cdiv(self.m, splits), MIN_SPLIT) * MIN_SPLIT
        self.splits = triton.cdiv(self.m, self.split_size)
        self.block_m = max(2, min(TILE_ELEMENTS // self.block_c, next_power_of_2(self.split_size)))
        self.block_s = max(2, min(COMBINE_BLOCK_S, next_power_of_2(self.splits)))
        self.launch = (self.channel_blocks, self.splits)
        self.combine_launch = (self.channel_blocks,)

    def dims(self):
        return self.channels, self.spatial, self.m, self.split_size

    def aligned(self, tensors, channels_last):
        """Whether the aligned kernel variant may run on these (N, C, S) layout tensors."""
        stride = self.channels if channels_last else self.spatial
        return is_aligned(tensors, [stride], vector_width(tensors[0].dtype), traced=self.traced)


def _compute(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def batch_norm_forward(x, channels_last, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps,
                       wrap=direct):
    """(y, mean, rstd) for a layout tensor x; with batch statistics, running statistics are updated in place.
    ``wrap``: how each kernel is launched (``direct``, or ``wrap_triton`` inside a triton_op)."""
    compute, ct = _compute(x.dtype)
    grid = _Grid(x, channels_last, traced=wrap is not direct)
    channels, spatial, m, split_size = grid.dims()
    per_channel = [torch.empty(channels, dtype=compute, device=x.device) for _ in range(4)]
    mean, rstd, alpha, beta = per_channel
    split_mean = split_m2 = mean
    if use_batch_stats:
        split_mean = torch.empty((grid.splits, channels), dtype=compute, device=x.device)
        split_m2 = torch.empty_like(split_mean)
        wrap(batch_norm_moments_kernel)[grid.launch](
            x, split_mean, split_m2, channels, spatial, m, split_size, CHANNELS_LAST=channels_last,
            BLOCK_M=grid.block_m, BLOCK_C=grid.block_c, CT=ct, ALIGNED=grid.aligned([x], channels_last))
    wrap(batch_norm_combine_kernel)[grid.combine_launch](
        split_mean, split_m2, mean if weight is None else weight, mean if bias is None else bias,
        mean if running_mean is None else running_mean, mean if running_var is None else running_var,
        mean, rstd, alpha, beta, channels, m, split_size, grid.splits, momentum, eps,
        USE_BATCH_STATS=use_batch_stats, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        HAS_RUNNING_MEAN=running_mean is not None, HAS_RUNNING_VAR=running_var is not None,
        RM=TL_DTYPES[(running_mean if running_mean is not None else mean).dtype],
        RV=TL_DTYPES[(running_var if running_var is not None else mean).dtype],
        BLOCK_S=grid.block_s, BLOCK_C=grid.block_c, CT=ct,
    )
    y = torch.empty_like(x)
    wrap(batch_norm_affine_kernel)[grid.launch](
        x, y, alpha, beta, channels, spatial, m, split_size, CHANNELS_LAST=channels_last, BLOCK_M=grid.block_m,
        BLOCK_C=grid.block_c, CT=ct, Y=TL_DTYPES[x.dtype], ALIGNED=grid.aligned([x, y], channels_last))
    return y, mean, rstd


def batch_norm_backward(dy, x, channels_last, weight, mean, rstd, used_batch_stats, need_dx, need_dweight, need_dbias,
                        wrap=direct):
    """(dx, dweight, dbias) of batch_norm_forward, None where not needed; parameter grads in the compute dtype.
    ``wrap`` as for batch_norm_forward."""
    compute, ct = _compute(x.dtype)
    grid = _Grid(x, channels_last, traced=wrap is not direct)
    channels, spatial, m, split_size = grid.dims()
    need_sums = need_dweight or need_dbias or (need_dx and used_batch_stats)
    if not (need_dx or need_sums):
        return None, None, None
    per_channel = [torch.empty(channels, dtype=compute, device=x.device) for _ in range(5)]
    dweight, dbias, k1, k2, k3 = per_channel
    sum_dy = sum_dy_xmu = mean
    if need_sums:
        sum_dy = torch.empty((grid.splits, channels), dtype=compute, device=x.device)
        sum_dy_xmu = torch.empty_like(sum_dy)
        wrap(batch_norm_grad_sums_kernel)[grid.launch](
            dy, x, mean, sum_dy, sum_dy_xmu, channels, spatial, m, split_size, CHANNELS_LAST=channels_last,
            BLOCK_M=grid.block_m, BLOCK_C=grid.block_c, CT=ct, ALIGNED=grid.aligned([dy, x], channels_last))
    wrap(batch_norm_grad_combine_kernel)[grid.combine_launch](
        sum_dy, sum_dy_xmu, mean if weight is None else weight, mean, rstd, dweight, dbias, k1, k2, k3, channels, m,
        grid.splits, HAS_SUMS=need_sums, USED_BATCH_STATS=used_batch_stats, HAS_WEIGHT=weight is not None,
        BLOCK_S=grid.block_s, BLOCK_C=grid.block_c, CT=ct,
    )
    dx = None
    if need_dx:
        dx = torch.empty_like(x)
        wrap(batch_norm_dx_kernel)[grid.launch](
            dy, x, dx, mean, k1, k2, k3, channels, spatial, m, split_size, USED_BATCH_STATS=used_batch_stats,
            CHANNELS_LAST=channels_last, BLOCK_M=grid.block_m, BLOCK_C=grid.block_c, CT=ct, X=TL_DTYPES[x.dtype],
            ALIGNED=grid.aligned([dy, x, dx], channels_last))
    return dx, dweight if need_dweight else None, dbias if need_dbias else None


# The launchers as torch.library.triton_op (see fused_optim.triton.layer_norm): a trace records each
# launch. Shapes as the launchers': a contiguous layout tensor x, parameters (C,) in the compute
# dtype. The running statistics are not mutated: the forward updates copies and returns them (empty
# for None), which the caller writes back. Autograd is registered by fused_optim.ops.batch_norm.

@triton_op("fused_optim::batch_norm_forward_triton", mutates_args=())
def batch_norm_forward_op(x: Tensor, channels_last: bool, weight: Optional[Tensor], bias: Optional[Tensor],
                          running_mean: Optional[Tensor], running_var: Optional[Tensor], use_batch_stats: bool,
                          momentum: float, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, rstd, updated running_mean, updated running_var) of batch_norm_forward."""
    stats = [None if t is None else t.clone() for t in (running_mean, running_var)]
    y, mean, rstd = batch_norm_forward(x, channels_last, weight, bias, *stats, use_batch_stats, momentum, eps,
                                       wrap=wrap_triton)
    return y, mean, rstd, *(x.new_empty((0,)) if t is None else t for t in stats)


@triton_op("fused_optim::batch_norm_backward_triton", mutates_args=())
def batch_norm_backward_op(dy: Tensor, x: Tensor, channels_last: bool, weight: Optional[Tensor], mean: Tensor,
                           rstd: Tensor, used_batch_stats: bool, need_dx: bool, need_dweight: bool,
                           need_dbias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of batch_norm_backward; an empty tensor where not needed."""
    dx, dweight, dbias = batch_norm_backward(dy, x, channels_last, weight, mean, rstd, used_batch_stats, need_dx,
                                             need_dweight, need_dbias, wrap=wrap_triton)
    return (x.new_empty((0,)) if dx is None else dx,
            mean.new_empty((0,)) if dweight is None else dweight, mean.new_empty((0,)) if dbias is None else dbias)
