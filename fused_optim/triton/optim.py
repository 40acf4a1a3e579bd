"""The shared Triton launcher of the multi-tensor optimizers: every tensor of a (param group,
device, dtype) in one launch. Each optimizer contributes only its kernel body
(fused_optim/triton/<name>.py, exported as ``KERNEL``), written with the helpers below.

The launcher packs one int64 table per step: HEADER words of the group's kernel scalars (float64
bits, so the bias corrections see the exact float64 betas), then the plan's launch rows
(``fused_optim._layout.LaunchRow``: pointers to the parameter, gradient and state, the element
count, the address of the tensor's float32 counter: its step count, or first-step flag). A cached
table of (tensor, start) chunks gives each program CHUNK elements of one tensor. Step counts live
on the device, one float32 per tensor as in torch's fused optimizers; per-step scalars such as bias
corrections are computed in the kernel, in float64, from each tensor's own step, so tensors at
different steps share the launch. The element math runs in float32 (float64 for float64
parameters) and rounds once at the store.

Gradient unscaling and clipping come in as one factor read from device memory (``grad_factor``),
and a step whose gradients held inf/NaN under AMP is skipped on the device (``found_inf``): no
host sync either way. A small kernel advances the counters afterwards.
"""

import torch
import triton
import triton.language as tl

from .._layout import LaunchRow, MAX_KERNEL_SCALARS, state_dtype
from . import clip as triton_clip
from .common import TL_DTYPES, ChunkTable, float64_bits, upload

BLOCK = 1024
CHUNK = 4 * BLOCK
HEADER = MAX_KERNEL_SCALARS

# The launch-row layout as constexprs (one definition: fused_optim._layout.LaunchRow).
ROW_WORDS = tl.constexpr(LaunchRow.WORDS)
ROW_PARAM = tl.constexpr(LaunchRow.PARAM)
ROW_GRAD = tl.constexpr(LaunchRow.GRAD)
ROW_STATE = tl.constexpr(LaunchRow.STATE)
ROW_NUMEL = tl.constexpr(LaunchRow.NUMEL)
ROW_COUNTER = tl.constexpr(LaunchRow.COUNTER)
TABLE_HEADER = tl.constexpr(HEADER)

_chunks = ChunkTable(CHUNK)


@triton.jit
def program_chunk(table, chunks):
    """(row, start): this program's tensor row in the table and the first element of its chunk."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(chunks + 2 * pid)
    start = tl.load(chunks + 2 * pid + 1)
    return table + TABLE_HEADER + ROW_WORDS * t, start


@triton.jit
def header_scalar(table, index):
    """The group's kernel scalar ``index`` (float64)."""
    return tl.load(table + index).to(tl.float64, bitcast=True)


@triton.jit
def row_param(row, DTYPE: tl.constexpr):
    return tl.load(row + ROW_PARAM).to(tl.pointer_type(DTYPE))


@triton.jit
def row_grad(row, DTYPE: tl.constexpr):
    return tl.load(row + ROW_GRAD).to(tl.pointer_type(DTYPE))


@triton.jit
def row_state(row, k, DTYPE: tl.constexpr):
    return tl.load(row + ROW_STATE + k).to(tl.pointer_type(DTYPE))


@triton.jit
def row_counter(row):
    """The tensor's float32 counter before this update (the launcher advances it afterwards)."""
    return tl.load(tl.load(row + ROW_COUNTER).to(tl.pointer_type(tl.float32)))


@triton.jit
def grad_factor(factor_ptr, C: tl.constexpr, HAS_FACTOR: tl.constexpr):
    """What each gradient is multiplied by first: unscaling and clipping (float64 on the device)."""
    if HAS_FACTOR:
        return tl.load(factor_ptr).to(C)
    else:
        return tl.full([], 1.0, C)


@triton.jit
def chunk_end(row, start, found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """The end of the elements this program updates: none at all when AMP found inf/NaN."""
    end = tl.load(row + ROW_NUMEL)
    if HAS_FOUND_INF:
        end = tl.where(tl.load(found_inf_ptr) != 0, start, end)
    return end


@triton.jit
def advance_counters_kernel(table, found_inf_ptr, ADD: tl.constexpr, HAS_FOUND_INF: tl.constexpr):
    """After an update: each row's counter += 1 (ADD, step counts) or = 0 (first-step flags),
    unless AMP found inf/NaN. A launch of its own, as the update's programs all read the counters."""
    row = table + TABLE_HEADER + ROW_WORDS * tl.program_id(0).to(tl.int64)
    counter = tl.load(row + ROW_COUNTER).to(tl.pointer_type(tl.float32))
    taken = True
    if HAS_FOUND_INF:
        taken = tl.load(found_inf_ptr) == 0
    if taken:
        if ADD:
            tl.store(counter, tl.load(counter) + 1.0)
        else:
            tl.store(counter, 0.0)


def launch_table(scalars, rows, device):
    """The int64 launch table on ``device``: the scalars (float64 bits), then the plan's rows."""
    header = float64_bits(list(scalars) + [0.0] * (HEADER - len(scalars)))
    return upload(torch.cat([header, rows.reshape(-1)]), device)


def chunks_for(rows, device):
    """The cached (tensor, start) chunk table for the rows' element counts."""
    return _chunks.get(rows[:, LaunchRow.NUMEL].tolist(), device)


def launch(kernel, rows, param_dtype, device, scalars, flags, grad_factor=None, found_inf=None, advance=None):
    """Run ``kernel`` over a plan's launch rows. ``flags``: the spec's flags as constexpr keyword
    arguments; ``grad_factor`` (float64) and ``found_inf``: 0-dim device tensors or None;
    ``advance``: "step" (counters += 1 afterwards), "first" (cleared) or None."""
    if rows.shape[0] == 0:
        return
    table = launch_table(scalars, rows, device)
    chunks = chunks_for(rows, device)
    if chunks.shape[0] > 0:
        kernel[(chunks.shape[0],)](
            table, chunks, grad_factor if grad_factor is not None else table,
            found_inf if found_inf is not None else table, P=TL_DTYPES[param_dtype],
            S=TL_DTYPES[state_dtype(param_dtype)], C=tl.float64 if param_dtype == torch.float64 else tl.float32,
            HAS_FACTOR=grad_factor is not None, HAS_FOUND_INF=found_inf is not None, BLOCK=BLOCK, CHUNK=CHUNK,
            **flags,
        )
    if advance is not None:
        advance_counters_kernel[(rows.shape[0],)](table, found_inf if found_inf is not None else table,
                                                  ADD=advance == "step", HAS_FOUND_INF=found_inf is not None)


def grad_power_sum_partials(rows, dtype, device, norm_type):
    """Power sums, per chunk, of the gradients in a plan's launch rows (float64 on the device)."""
    return triton_clip.optimizer_grad_partials(rows, dtype, device, norm_type)
