"""The shared Triton launcher of the multi-tensor optimizers: every tensor of a (param group,
device, dtype) in one launch. Each optimizer contributes only its kernel body
(``<name>_kernel`` in fused_optim/triton/<name>.py), written with the helpers below.

Each plan keeps one int64 table on the device (LaunchTable), rewritten only where it changed:
HEADER words of the group's kernel scalars (float64 bits, so the bias corrections see the exact
float64 betas), then the plan's launch rows
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


from .._layout import GOLDEN, MIX_1, MIX_2, LaunchRow, MAX_KERNEL_SCALARS, state_dtype
from . import clip as triton_clip
from .common import TL_DTYPES, ChunkTable, float64_bits, to_storage, upload

BLOCK = 1024
CHUNK = 4 * BLOCK
# Warps per program: each thread then holds 128 bits of every 16-bit stream (4 warps: 8 elements per
# thread and iteration) or of every 32/64-bit stream (8 warps: 4 elements); at 4 warps the widest
# float32/float64 kernels (centered RMSprop with momentum, float64 SGD) spill registers.
def num_warps(param_dtype):
    return 4 if param_dtype in (torch.float16, torch.bfloat16) else 8
HEADER = MAX_KERNEL_SCALARS

# The launch-row layout as constexprs (one definition: fused_optim._layout.LaunchRow).
ROW_WORDS = tl.constexpr(LaunchRow.WORDS)
ROW_PARAM = tl.constexpr(LaunchRow.PARAM)
ROW_GRAD = tl.constexpr(LaunchRow.GRAD)
ROW_STATE = tl.constexpr(LaunchRow.STATE)
ROW_NUMEL = tl.constexpr(LaunchRow.NUMEL)
ROW_COUNTER = tl.constexpr(LaunchRow.COUNTER)
ROW_KEY = tl.constexpr(LaunchRow.KEY)
HASH_MIX_1 = tl.constexpr(MIX_1)
HASH_MIX_2 = tl.constexpr(MIX_2)
HASH_GOLDEN = tl.constexpr(GOLDEN)
TABLE_HEADER = tl.constexpr(HEADER)

_chunks = ChunkTable(CHUNK)


@triton.jit
def program_chunk(table, chunks, CHUNK: tl.constexpr):
    """(row, start): this program's tensor row in the table and the first element of its chunk
    (a multiple of CHUNK: chunks start at whole multiples within each tensor)."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(chunks + 2 * pid)
    start = tl.multiple_of(tl.load(chunks + 2 * pid + 1), CHUNK)
    return table + TABLE_HEADER + ROW_WORDS * t, start


@triton.jit
def header_scalar(table, index):
    """The group's kernel scalar ``index`` (float64)."""
    return tl.load(table + index).to(tl.float64, bitcast=True)


@triton.jit
def _row_pointer(row, word, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    ptr = tl.load(row + word).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)  # the launcher checked every address of these rows
    return ptr


@triton.jit
def row_param(row, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    return _row_pointer(row, ROW_PARAM, DTYPE, ALIGNED)


@triton.jit
def row_grad(row, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    return _row_pointer(row, ROW_GRAD, DTYPE, ALIGNED)


@triton.jit
def row_state(row, k: tl.constexpr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    return _row_pointer(row, ROW_STATE + k, DTYPE, ALIGNED)


@triton.jit
def row_counter(row):
    """The tensor's float32 counter before this update (the launcher advances it afterwards)."""
    return tl.load(tl.load(row + ROW_COUNTER).to(tl.pointer_type(tl.float32)))


# ----- the low-precision options (MASTER, STATE_BF16 flags; csrc/element_loop.h, rounding.h) ----


@triton.jit
def mix32(x):
    """The 32-bit hash of stochastic rounding (fused_optim._layout.mix32), on uint32 values."""
    x = x ^ (x >> 16)
    x = x * HASH_MIX_1
    x = x ^ (x >> 15)
    x = x * HASH_MIX_2
    return x ^ (x >> 16)


@triton.jit
def random_bits(offs, table, row, key_index, stream: tl.constexpr, P: tl.constexpr):
    """The random bits of ``stream`` (0: parameter, 1 + k: state k) of element indices ``offs``
    (int64) for parameters of dtype ``P`` (fused_optim._layout.rounding_bits): a 16-bit slot of
    the element's word, all of it for a float16 parameter. The word key comes from the group's step
    key (kernel scalar ``key_index``), the row's rounding id and each element's high 32 bits."""
    slot = stream
    if P == tl.float16:
        if stream > 0:
            slot = stream + 1
    step_key = header_scalar(table, key_index).to(tl.int64).to(tl.uint32)
    tensor = tl.load(row + ROW_KEY).to(tl.uint32)
    base = mix32(mix32(mix32(step_key ^ HASH_GOLDEN) ^ tensor) ^ (slot // 2))
    key = mix32(base ^ (offs >> 32).to(tl.uint32))
    return mix32(offs.to(tl.uint32) ^ key) >> (16 * (slot % 2))


@triton.jit
def stochastic_storage(x, r, DTYPE: tl.constexpr):
    """``x`` rounded to bfloat16 or float16 up or down with probability proportional to the
    distance, from the random bits ``r`` (as csrc/rounding.h's store_stochastic)."""
    x = x.to(tl.float32)
    bits = x.to(tl.uint32, bitcast=True)
    if DTYPE == tl.bfloat16:
        out = (bits + (r & 0xFFFF)) >> 16
        out = tl.where(x != x, 0x7FC0, out)
        return out.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        normal = ((bits + (r & 0x1FFF)) & 0xFFFFE000).to(tl.float32, bitcast=True)
        scaled = tl.abs(x) * 16777216.0
        whole = tl.floor(scaled)
        u = (r >> 8).to(tl.float32) * (1.0 / 16777216.0)
        tiny = (whole + tl.where(u < scaled - whole, 1.0, 0.0)) * (1.0 / 16777216.0)
        tiny = tl.where(x < 0, -tiny, tiny)
        y = tl.where(x != x, x, tl.where(tl.abs(x) >= 6.103515625e-05, normal, tiny))
        return y.to(tl.float16)


@triton.jit
def row_master(row, k: tl.constexpr, MASTER: tl.constexpr, P: tl.constexpr, ALIGNED: tl.constexpr):
    """The master-weight state (state ``k``): float32 for MASTER 1, the parameter dtype for 2."""
    if MASTER == 1:
        return row_state(row, k, tl.float32, ALIGNED)
    else:
        return row_state(row, k, P, ALIGNED)


@triton.jit
def load_param(p_ptr, x_ptr, offs, mask, C: tl.constexpr, MASTER: tl.constexpr):
    """The parameter as the update sees it: the float32 master copy, value plus Kahan
    compensation, or the parameter itself."""
    if MASTER == 1:
        return tl.load(x_ptr + offs, mask=mask, other=0.0).to(C)
    elif MASTER == 2:
        return tl.load(p_ptr + offs, mask=mask, other=0.0).to(C) + tl.load(x_ptr + offs, mask=mask, other=0.0).to(C)
    else:
        return tl.load(p_ptr + offs, mask=mask, other=0.0).to(C)


@triton.jit
def store_param(p_ptr, x_ptr, offs, mask, value, table, row, key_index, P: tl.constexpr, MASTER: tl.constexpr):
    """Store the updated parameter (and its master copy or compensation) as MASTER says."""
    if MASTER == 1:
        tl.store(x_ptr + offs, value.to(tl.float32), mask=mask)
        tl.store(p_ptr + offs, to_storage(value, P), mask=mask)
    elif MASTER == 2:
        rounded = to_storage(value, P)
        tl.store(p_ptr + offs, rounded, mask=mask)
        tl.store(x_ptr + offs, to_storage(value - rounded.to(value.dtype), P), mask=mask)
    elif MASTER == 3:
        tl.store(p_ptr + offs, stochastic_storage(value, random_bits(offs, table, row, key_index, 0, P), P), mask=mask)
    else:
        tl.store(p_ptr + offs, to_storage(value, P), mask=mask)


@triton.jit
def store_state(ptr, offs, mask, value, table, row, key_index, k: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
                MASTER: tl.constexpr):
    """Store state ``k`` of a parameter of dtype ``P``: bfloat16 state rounded stochastically
    under MASTER 3, else to nearest."""
    if MASTER == 3 and S == tl.bfloat16:
        bits = random_bits(offs, table, row, key_index, 1 + k, P)
        tl.store(ptr + offs, stochastic_storage(value, bits, S), mask=mask)
    else:
        tl.store(ptr + offs, to_storage(value, S), mask=mask)


@triton.jit
def grad_factor(factor_ptr, C: tl.constexpr, HAS_FACTOR: tl.constexpr):
    """What each gradient is multiplied by first: unscaling and clipping (float64 on the device)."""
    if HAS_FACTOR:
        return tl.load(factor_ptr).to(C)
    else:
        return tl.full([], 1.0, C)


@triton.jit
def chunk_end(row, start, found_inf_ptr, HAS_FOUND_INF: tl.constexpr, CHUNK: tl.constexpr, FULL: tl.constexpr):
    """The end of the elements this program updates: none at all when AMP found inf/NaN.

    FULL: the launcher gave this launch only whole chunks, so the end is start + CHUNK, a
    multiple of CHUNK the compiler can see: the masks are then constant over whole vectors and
    the loads and stores of aligned rows are 128 bits wide."""
    if FULL:
        end = start + CHUNK
    else:
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


class LaunchTable:
    """One plan's int64 launch table, kept on the device between steps: HEADER words of the group's
    scalars (float64 bits), then the launch rows. Each step compares what it needs with what was
    last copied and writes only the part that changed, in place: in steady state (the same
    gradient buffers, the same hyperparameters) a step copies nothing to the device and the kernels
    read the same table, which also lets a CUDA graph capture the step and replay it."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.table = None
        self._rows = None
        self._header = None
        #: (whole aligned chunks, every other chunk): recomputed only when the rows change
        self.chunks = None
        #: how many copies to the device were made (what the steady-state tests count)
        self.uploads = 0

    @property
    def rows(self):
        """The rows part of the device table (for kernels that index rows from their start)."""
        return self.table[HEADER:]

    def set_rows(self, rows):
        if self.table is None or self._rows.shape != rows.shape:
            header = self._header if self._header is not None else torch.zeros(HEADER, dtype=torch.int64)
            self.table = self._copy(torch.cat([header, rows.reshape(-1)]))
        elif not torch.equal(rows, self._rows):
            self.table[HEADER:].copy_(self._copy(rows.reshape(-1)), non_blocking=True)
        else:
            return
        self._rows = rows.clone()
        self.chunks = chunk_tables(rows, self.device)

    def set_scalars(self, scalars):
        header = float64_bits(list(scalars) + [0.0] * (HEADER - len(scalars)))
        if self._header is None or not torch.equal(header, self._header):
            self.table[:HEADER].copy_(self._copy(header), non_blocking=True)
            self._header = header

    def _copy(self, host):
        self.uploads += 1
        return upload(host, self.device)


def _aligned_rows(rows):
    """Per row: every address in it (parameter, gradient, state) is a multiple of 16 bytes."""
    addresses = rows[:, LaunchRow.PARAM:LaunchRow.STATE + LaunchRow.MAX_STATE]
    return (addresses % 16 == 0).all(dim=1)


def chunk_tables(rows, device):
    """(whole chunks of aligned rows, every other chunk): cached (tensor, start) tables for the
    vectorized and the general launch."""
    aligned = _aligned_rows(rows).tolist()
    return _chunks.get_split(rows[:, LaunchRow.NUMEL].tolist(), aligned, device)


def launch(kernel, table, rows, param_dtype, device, scalars, flags, grad_factor=None, found_inf=None, advance=None):
    """Run ``kernel`` over a plan's launch rows (``rows``: the host copy, ``table``: its
    LaunchTable, rows already set). ``flags``: the spec's flags as constexpr keyword arguments;
    ``grad_factor`` (float64) and ``found_inf``: 0-dim device tensors or None; ``advance``: "step"
    (counters += 1 afterwards), "first" (cleared) or None.

    Two launches of one kernel: whole chunks of 16-byte-aligned tensors (FULL and ALIGNED: no
    mask, 128-bit accesses), then the rest (tails, unaligned views) masked."""
    if rows.shape[0] == 0:
        return
    table.set_scalars(scalars)
    state = state_dtype(param_dtype, torch.bfloat16 if flags.get("STATE_BF16") else None)
    constants = dict(P=TL_DTYPES[param_dtype], S=TL_DTYPES[state],
                     C=tl.float64 if param_dtype == torch.float64 else tl.float32, HAS_FACTOR=grad_factor is not None,
                     HAS_FOUND_INF=found_inf is not None, BLOCK=BLOCK, CHUNK=CHUNK, **flags)
    device_table = table.table
    factor = grad_factor if grad_factor is not None else device_table
    skip = found_inf if found_inf is not None else device_table
    for chunks, full in zip(table.chunks, (True, False)):
        if chunks.shape[0] > 0:
            kernel[(chunks.shape[0],)](device_table, chunks, factor, skip, FULL=full, ALIGNED=full,
                                       num_warps=num_warps(param_dtype), **constants)
    if advance is not None:
        advance_counters_kernel[(rows.shape[0],)](device_table, skip, ADD=advance == "step",
                                                  HAS_FOUND_INF=found_inf is not None)


def grad_power_sum_partials(table, rows, dtype, device, norm_type):
    """Power sums, per chunk, of the gradients in a plan's launch rows (float64 on the device)."""
    return triton_clip.optimizer_grad_partials(rows, dtype, device, norm_type, device_rows=table.rows)
