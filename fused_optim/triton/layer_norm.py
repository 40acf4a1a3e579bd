"""LayerNorm forward and backward over contiguous rows (M, N).

Forward: a row that fits in MAX_TILE_COLUMNS (backward: BACKWARD_MAX_TILE_BYTES) is held in
registers, several short rows per program; a longer row is looped over in LOOP_COLUMNS chunks
whose moments are merged with Chan's formula, then normalized in a second loop. No row is too
long, and no column is skipped.

Backward: each of a fixed number of programs takes a contiguous run of rows, writes their dx,
and sums dy * xhat and dy over its rows into its own row of a float32 partials buffer; a second
kernel adds the programs' partials column by column. No atomics: results are deterministic.

Statistics and sums are in float32 (float64 for float64 input); results are cast once, at the
store, bfloat16 rounded to nearest even.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .common import (TL_DTYPES, direct, div_rn, is_aligned, multiple_of, multiprocessors, next_power_of_2, scalar,
                     sqrt_rn, to_storage, vector_width)

# The widest row held in registers by one program; wider rows are looped over.
MAX_TILE_COLUMNS = 8192
# The backward's single tile holds more per column (x-hat, the weighted dy, two running sums):
# wider than this many bytes of compute dtype per row, ptxas spills at the warps the tile gets.
BACKWARD_MAX_TILE_BYTES = 4096 * 4
# Warps of the backward's loop over a wide row: 8 values of each of its LOOP_COLUMNS-wide arrays per
# thread, which stay in registers.
BACKWARD_LOOP_WARPS = 8
# Columns per iteration of the loop over a wide row.
LOOP_COLUMNS = 2048
# Elements per program tile: short rows are grouped up to this many elements per program.
TILE_ELEMENTS = 4096
# Programs of the backward's first kernel, per streaming multiprocessor (CUDA) or in all (CPU),
# and the fewest rows each takes: every program writes 2 * N partial sums, which the second
# kernel reads back, so a program summing fewer rows would move more memory than it saves.
BACKWARD_PROGRAMS_PER_SM = 4
BACKWARD_PROGRAMS_CPU = 4
BACKWARD_MIN_ROWS = 32


@triton.jit(do_not_specialize=["M", "N"])
def layer_norm_forward_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, M, N, eps: tl.float64,
                              HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr,
                              BLOCK: tl.constexpr, SINGLE_TILE: tl.constexpr, C: tl.constexpr, Y: tl.constexpr,
                              ALIGNED: tl.constexpr = False):
    """ALIGNED: every pointer is 16-byte aligned and N a multiple of a 128-bit vector of Y."""
    if ALIGNED:
        N = multiple_of(N, 128 // Y.primitive_bitwidth)
    eps = scalar(eps, C)
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < M
    n = N.to(C)
    one = tl.full([ROWS], 1.0, C)
    if SINGLE_TILE:
        cols = tl.arange(0, BLOCK)
        col_mask = cols < N
        mask = row_mask[:, None] & col_mask[None, :]
        offsets = rows[:, None] * N + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(C)
        mean = div_rn(tl.sum(x, axis=1), n + tl.zeros([ROWS], C))
        centered = tl.where(mask, x - mean[:, None], 0.0)
        rstd = div_rn(one, sqrt_rn(div_rn(tl.sum(centered * centered, axis=1), n + tl.zeros([ROWS], C)) + eps))
        y = centered * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(C)[None, :]
        if HAS_BIAS:
            y = y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(C)[None, :]
        tl.store(y_ptr + offsets, to_storage(y, Y), mask=mask)
    else:
        mean = tl.zeros([ROWS], C)
        m2 = tl.zeros([ROWS], C)
        for start in range(0, N, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = row_mask[:, None] & (cols < N)[None, :]
            x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0).to(C)
            seen = start + tl.zeros([ROWS], C)
            k = tl.minimum(N - start, BLOCK) + tl.zeros([ROWS], C)
            chunk_mean = div_rn(tl.sum(x, axis=1), k)
            d = tl.where(mask, x - chunk_mean[:, None], 0.0)
            # Chan et al.: merge the chunk's mean and M2 into the running ones, no cancellation.
            total = seen + k
            delta = chunk_mean - mean
            mean = mean + delta * div_rn(k, total)
            m2 = m2 + tl.sum(d * d, axis=1) + delta * delta * div_rn(seen * k, total)
        rstd = div_rn(one, sqrt_rn(div_rn(m2, n + tl.zeros([ROWS], C)) + eps))
        for start in range(0, N, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            col_mask = cols < N
            mask = row_mask[:, None] & col_mask[None, :]
            offsets = rows[:, None] * N + cols[None, :]
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(C)
            y = (x - mean[:, None]) * rstd[:, None]
            if HAS_WEIGHT:
                y = y * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(C)[None, :]
            if HAS_BIAS:
                y = y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(C)[None, :]
            tl.store(y_ptr + offsets, to_storage(y, Y), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit(do_not_specialize=["M", "N", "rows_per_program"])
def layer_norm_backward_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, partial_ptr, M, N, rows_per_program,
                               HAS_WEIGHT: tl.constexpr, NEED_DX: tl.constexpr, NEED_PARTIALS: tl.constexpr,
                               ROWS: tl.constexpr, BLOCK: tl.constexpr, SINGLE_TILE: tl.constexpr, C: tl.constexpr,
                               X: tl.constexpr, ALIGNED: tl.constexpr = False):
    """dx of rows [pid * rows_per_program, ...) and, in partial_ptr[pid] (2, N), their sums of dy * xhat and dy.

    ALIGNED: every pointer is 16-byte aligned and N a multiple of a 128-bit vector of X."""
    if ALIGNED:
        N = multiple_of(N, 128 // X.primitive_bitwidth)
    pid = tl.program_id(0).to(tl.int64)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    n = N.to(C)
    dw_partial = partial_ptr + pid * 2 * N
    db_partial = dw_partial + N
    if SINGLE_TILE:
        cols = tl.arange(0, BLOCK)
        col_mask = cols < N
        dw_sum = tl.zeros([BLOCK], C)
        db_sum = tl.zeros([BLOCK], C)
        for first in range(row_start, row_end, ROWS):
            rows = first + tl.arange(0, ROWS)
            row_mask = rows < row_end
            mask = row_mask[:, None] & col_mask[None, :]
            offsets = rows[:, None] * N + cols[None, :]
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(C)
            dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(C)
            mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            # The partial sums first, so dy is dead before dx's row reductions: fewer live
            # registers, no spill at the widest tile.
            if NEED_PARTIALS:
                dw_sum += tl.sum(dy * xhat, axis=0)
                db_sum += tl.sum(dy, axis=0)
            if NEED_DX:
                g = dy
                if HAS_WEIGHT:
                    # Read per tile (from cache) rather than held across the loop, for the same reason.
                    g = dy * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(C)[None, :]
                mean_g = div_rn(tl.sum(g, axis=1), n + tl.zeros([ROWS], C))
                mean_g_xhat = div_rn(tl.sum(g * xhat, axis=1), n + tl.zeros([ROWS], C))
                dx = rstd[:, None] * (g - mean_g[:, None] - xhat * mean_g_xhat[:, None])
                tl.store(dx_ptr + offsets, to_storage(dx, X), mask=mask)
        if NEED_PARTIALS:
            tl.store(dw_partial + cols, dw_sum, mask=col_mask)
            tl.store(db_partial + cols, db_sum, mask=col_mask)
    else:
        for row in range(row_start, row_end):
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            if NEED_DX:
                g_sum = tl.zeros([BLOCK], C)
                g_xhat_sum = tl.zeros([BLOCK], C)
                for start in range(0, N, BLOCK):
                    cols = start + tl.arange(0, BLOCK)
                    col_mask = cols < N
                    x = tl.load(x_ptr + row * N + cols, mask=col_mask, other=0.0).to(C)
                    g = tl.load(dy_ptr + row * N + cols, mask=col_mask, other=0.0).to(C)
                    if HAS_WEIGHT:
                        g = g * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(C)
                    g_sum += g
                    g_xhat_sum += g * tl.where(col_mask, (x - mean) * rstd, 0.0)
                mean_g = div_rn(tl.sum(g_sum, axis=0), n)
                mean_g_xhat = div_rn(tl.sum(g_xhat_sum, axis=0), n)
            for start in range(0, N, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                col_mask = cols < N
                x = tl.load(x_ptr + row * N + cols, mask=col_mask, other=0.0).to(C)
                dy = tl.load(dy_ptr + row * N + cols, mask=col_mask, other=0.0).to(C)
                xhat = tl.where(col_mask, (x - mean) * rstd, 0.0)
                if NEED_DX:
                    g = dy
                    if HAS_WEIGHT:
                        g = dy * tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(C)
                    dx = rstd * (g - mean_g - xhat * mean_g_xhat)
                    tl.store(dx_ptr + row * N + cols, to_storage(dx, X), mask=col_mask)
                if NEED_PARTIALS:
                    # This program's own row of partials: read, add, write back; no other program touches it.
                    dw = tl.load(dw_partial + cols, mask=col_mask, other=0.0)
                    db = tl.load(db_partial + cols, mask=col_mask, other=0.0)
                    tl.store(dw_partial + cols, dw + dy * xhat, mask=col_mask)
                    tl.store(db_partial + cols, db + dy, mask=col_mask)


@triton.jit(do_not_specialize=["programs", "N"])
def column_sums_kernel(partial_ptr, dw_ptr, db_ptr, programs, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                       ALIGNED: tl.constexpr = False):
    """(dw, db)[j] = sum over p of partial[p, j, :], for j = program_id(1): the programs' partials added in order.

    ALIGNED: all pointers are 16-byte aligned and N a multiple of a 128-bit vector."""
    if ALIGNED:
        N = multiple_of(N, 128 // partial_ptr.dtype.element_ty.primitive_bitwidth)
    cols = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    which = tl.program_id(1).to(tl.int64)
    acc = tl.zeros([BLOCK_P, BLOCK_N], partial_ptr.dtype.element_ty)
    for first in range(0, programs, BLOCK_P):
        p = first + tl.arange(0, BLOCK_P).to(tl.int64)
        mask = (p < programs)[:, None] & col_mask[None, :]
        acc += tl.load(partial_ptr + (p[:, None] * 2 + which) * N + cols[None, :], mask=mask, other=0.0)
    if which == 0:
        tl.store(dw_ptr + cols, tl.sum(acc, axis=0), mask=col_mask)
    else:
        tl.store(db_ptr + cols, tl.sum(acc, axis=0), mask=col_mask)


def _compute(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _tiling(n, max_columns):
    """(single_tile, block, rows per tile) for rows of n elements."""
    if n <= max_columns:
        block = max(16, next_power_of_2(n))
        return True, block, max(1, min(64, TILE_ELEMENTS // block))
    return False, LOOP_COLUMNS, 1


def _warps(elements):
    return max(1, min(16, elements // 512))


def _dummy(t, pointer):
    """A tensor to stand for an absent optional pointer (never read: its flag is off)."""
    return pointer if pointer is not None else t


def layer_norm_forward(x, weight, bias, eps, wrap=direct):
    """(y, mean, rstd) for contiguous rows x (M, N); weight and bias None or (N,) in the compute dtype.
    ``wrap``: how each kernel is launched (``direct``, or ``wrap_triton`` inside a triton_op)."""
    m, n = x.shape
    compute, tl_compute = _compute(x.dtype)
    y = torch.empty_like(x)
    mean = torch.empty(m, dtype=compute, device=x.device)
    rstd = torch.empty(m, dtype=compute, device=x.device)
    single, block, rows = _tiling(n, MAX_TILE_COLUMNS)
    wrap(layer_norm_forward_kernel)[(triton.cdiv(m, rows),)](
        x, y, _dummy(x, weight), _dummy(x, bias), mean, rstd, m, n, eps,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, ROWS=rows, BLOCK=block, SINGLE_TILE=single,
        C=tl_compute, Y=TL_DTYPES[x.dtype],
        ALIGNED=is_aligned([x, y, weight, bias], [n], vector_width(x.dtype), traced=wrap is not direct),
        num_warps=_warps(rows * block),
    )
    return y, mean, rstd


def _backward_programs(m, rows, device):
    if device.type == "cuda":
        budget = BACKWARD_PROGRAMS_PER_SM * multiprocessors(device)
    else:
        budget = BACKWARD_PROGRAMS_CPU
    return max(1, min(budget, triton.cdiv(m, max(rows, BACKWARD_MIN_ROWS))))


def layer_norm_backward(dy, x, weight, mean, rstd, need_dx, need_dweight, need_dbias, wrap=direct):
    """(dx, dweight, dbias) of layer_norm_forward, None where not needed; parameter grads in the compute dtype.
    ``wrap`` as for layer_norm_forward."""
    m, n = x.shape
    compute, tl_compute = _compute(x.dtype)
    need_partials = need_dweight or need_dbias
    dx = torch.empty_like(x) if need_dx else None
    if not (need_dx or need_partials):
        return None, None, None
    single, block, rows = _tiling(n, min(MAX_TILE_COLUMNS, BACKWARD_MAX_TILE_BYTES // compute.itemsize))
    programs = _backward_programs(m, rows, x.device)
    # Whole tiles of rows per program, so only a program's last tile is partly masked.
    rows_per_program = triton.cdiv(triton.cdiv(m, programs), rows) * rows
    programs = triton.cdiv(m, rows_per_program)
    # The looping kernel adds into its partials row; the single-tile one writes it whole.
    allocate = torch.zeros if not single else torch.empty
    partials = allocate((programs, 2, n) if need_partials else (1,), dtype=compute, device=x.device)
    wrap(layer_norm_backward_kernel)[(programs,)](
        dy, x, _dummy(x, weight), mean, rstd, _dummy(x, dx), partials, m, n, rows_per_program,
        HAS_WEIGHT=weight is not None, NEED_DX=need_dx, NEED_PARTIALS=need_partials, ROWS=rows, BLOCK=block,
        SINGLE_TILE=single, C=tl_compute, X=TL_DTYPES[x.dtype],
        ALIGNED=is_aligned([dy, x, weight, dx, partials], [n], vector_width(x.dtype), traced=wrap is not direct),
        num_warps=_warps(rows * block) if single else BACKWARD_LOOP_WARPS,
    )
    if not need_partials:
        return dx, None, None
    if wrap is direct:
        sums = torch.empty((2, n), dtype=compute, device=x.device)
        dweight, dbias = sums[0], sums[1]
    else:  # a triton_op's outputs may not alias one another
        dweight, dbias = (torch.empty(n, dtype=compute, device=x.device) for _ in range(2))
    # 512 columns over 4 warps: 4 per thread, one 128-bit store of float32 sums.
    block_n = 512
    wrap(column_sums_kernel)[(triton.cdiv(n, block_n), 2)](
        partials, dweight, dbias, programs, n, BLOCK_P=8, BLOCK_N=block_n,
        ALIGNED=is_aligned([partials, dweight, dbias], [n], vector_width(compute), traced=wrap is not direct))
    return dx, dweight if need_dweight else None, dbias if need_dbias else None


# The launchers as torch.library.triton_op: a trace (torch.compile, torch.export) sees each kernel
# launch as a triton_kernel_wrapper node, which inductor compiles and schedules with the graph and a
# CUDA graph or AOTInductor can follow. In eager they run the launchers' code with the kernels
# launched directly. Shapes as the launchers': contiguous rows x (M, N), parameters (N,) in the
# compute dtype. Autograd is registered by fused_optim.ops.layer_norm.

@triton_op("fused_optim::layer_norm_forward_triton", mutates_args=())
def layer_norm_forward_op(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                          eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd) of layer_norm_forward."""
    return layer_norm_forward(x, weight, bias, eps, wrap=wrap_triton)


@triton_op("fused_optim::layer_norm_backward_triton", mutates_args=())
def layer_norm_backward_op(dy: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor, need_dx: bool,
                           need_dweight: bool, need_dbias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) of layer_norm_backward; an empty tensor where not needed."""
    dx, dweight, dbias = layer_norm_backward(dy, x, weight, mean, rstd, need_dx, need_dweight, need_dbias,
                                             wrap=wrap_triton)
    compute = mean.dtype
    return (x.new_empty((0,)) if dx is None else dx, x.new_empty((0,), dtype=compute) if dweight is None else dweight,
            x.new_empty((0,), dtype=compute) if dbias is None else dbias)
