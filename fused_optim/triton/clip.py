"""Gradient norm and clipping kernels: one multi-tensor reduction into a fixed buffer of per-chunk
partials, one single-program finalize (total norm and clip factor, never leaving the device),
and one multi-tensor scale. No atomics: the same gradients give the same bits every time.

The multi-tensor kernels read their tensors' addresses from a table, which a trace cannot follow.
The torch.library.triton_op versions at the end, for traced calls, launch one-tensor kernels
instead: the same chunks and partials, so the same bits, with every tensor a kernel argument.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .._layout import LaunchRow, flat_views, real, write_back
from ..reference.clip import result_dtype
from .common import TL_DTYPES, VECTOR_BYTES, ChunkTable, div_rn, scalar, to_storage, upload

BLOCK = 1024
CHUNK = 8 * BLOCK
FINALIZE_BLOCK = 1024
ROW = 2

# Norm kinds (the kernels' KIND constexpr)
L1, L2, LINF, LP = tl.constexpr(1), tl.constexpr(2), tl.constexpr(3), tl.constexpr(4)

_chunks = ChunkTable(CHUNK)


def norm_kind(norm_type):
    return {1.0: L1, 2.0: L2, float("inf"): LINF}.get(float(norm_type), LP).value


@triton.jit
def _max_keep_nan(values):
    has_nan = tl.max((values != values).to(tl.int32), axis=0) > 0
    return tl.where(has_nan, float("nan"), tl.max(values, axis=0))


@triton.jit
def _reduce(acc, KIND: tl.constexpr):
    """A block of accumulated values to one: the max (NaN kept) for the inf-norm, else the sum."""
    if KIND == LINF:
        return _max_keep_nan(acc)
    else:
        return tl.sum(acc, axis=0)


@triton.jit
def _program_chunk(table, chunks, P: tl.constexpr, ROW: tl.constexpr, PTR: tl.constexpr, NUMEL: tl.constexpr,
                   CHUNK: tl.constexpr, ALIGNED: tl.constexpr):
    """(pointer to the tensor, first element, element count, whether the chunk is whole and aligned)
    of this program's chunk. The table has ROW int64 words per tensor, the data address at word PTR
    and the element count at NUMEL. ALIGNED: the launcher has checked every address is 16-byte
    aligned, so whole chunks may take the unmasked path of 128-bit accesses (_whole_block)."""
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(chunks + 2 * pid)
    address = tl.load(table + ROW * t + PTR)
    start = tl.load(chunks + 2 * pid + 1)
    n = tl.load(table + ROW * t + NUMEL)
    whole = False
    if ALIGNED:
        whole = start + CHUNK <= n
    return address.to(tl.pointer_type(P)), start, n, whole


@triton.jit
def _chunk_offsets(start, i, BLOCK: tl.constexpr):
    return start + i + tl.arange(0, BLOCK)


@triton.jit
def _whole_block(x_ptr, start, i, BLOCK: tl.constexpr):
    """Pointers to elements [start + i, start + i + BLOCK) of a whole, aligned chunk, with the
    contiguity and 16-byte alignment the compiler cannot see through the table's address."""
    return tl.max_contiguous(tl.multiple_of(x_ptr + _chunk_offsets(start, i, BLOCK), 16), BLOCK)


@triton.jit
def _accumulate(acc, x, p, KIND: tl.constexpr, ACC: tl.constexpr):
    a = tl.abs(x.to(ACC))
    if KIND == L1:
        acc += a
    elif KIND == L2:
        acc += a * a
    elif KIND == LINF:
        acc = tl.where((a > acc) | (a != a), a, acc)
    else:
        acc += tl.where(a > 0, tl.exp2(p * tl.log2(tl.where(a > 0, a, 1.0))), 0.0)
    return acc


@triton.jit
def norm_partials_kernel(table, chunks, partials, p: tl.float64, P: tl.constexpr, ACC: tl.constexpr,
                         KIND: tl.constexpr, ROW: tl.constexpr, PTR: tl.constexpr, NUMEL: tl.constexpr,
                         BLOCK: tl.constexpr, CHUNK: tl.constexpr, ALIGNED: tl.constexpr = False):
    """partials[pid] = sum |x|^p (max |x| for inf) over the chunk of program pid."""
    x_ptr, start, n, whole = _program_chunk(table, chunks, P, ROW, PTR, NUMEL, CHUNK, ALIGNED)
    p = scalar(p, ACC)
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=ACC)
    if whole:
        for i in range(0, CHUNK, BLOCK):
            acc = _accumulate(acc, tl.load(_whole_block(x_ptr, start, i, BLOCK)), p, KIND, ACC)
    else:
        for i in range(0, CHUNK, BLOCK):
            offs = _chunk_offsets(start, i, BLOCK)
            acc = _accumulate(acc, tl.load(x_ptr + offs, mask=offs < n, other=0.0), p, KIND, ACC)
    result = _reduce(acc, KIND)
    tl.store(partials + pid, result.to(tl.float64))


@triton.jit
def _round(x, DTYPE: tl.constexpr):
    """x as stored in DTYPE and read back: the rounding torch's 0-dim tensor arithmetic does."""
    return to_storage(x, DTYPE).to(x.dtype)


@triton.jit
def norm_finalize_kernel(partials, n, total_out, factor_out, scale_ptr, scalars, KIND: tl.constexpr,
                         OUT: tl.constexpr, C: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_MAX: tl.constexpr,
                         BLOCK: tl.constexpr):
    """total_out = the norm (divided by the scale when the gradients carry one), rounded to OUT;
    factor_out = min(max_norm / (total + 1e-6), 1) computed as torch computes it on a 0-dim OUT
    tensor (scalars in C, each result rounded to OUT), then divided by the scale: what the
    gradients are multiplied by. scalars: float64 [max_norm, p]."""
    max_norm = tl.load(scalars)
    p = tl.load(scalars + 1)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        v = tl.load(partials + offs, mask=offs < n, other=0.0)
        if KIND == LINF:
            acc = tl.where((v > acc) | (v != v), v, acc)
        else:
            acc += v
    s = _reduce(acc, KIND)
    if KIND == L2:
        total = tl.sqrt(s)
    elif KIND == LP:
        total = tl.where(s > 0, tl.exp2(tl.log2(tl.where(s > 0, s, 1.0)) / p), 0.0)
    else:
        total = s
    scale = 1.0
    if HAS_SCALE:
        scale = tl.load(scale_ptr).to(tl.float64)
        total = total / scale
    total = _round(total.to(C), OUT)
    tl.store(total_out, total.to(OUT))
    if HAS_MAX:
        denominator = _round(total + tl.full([], 1e-6, C), OUT)
        coefficient = _round(div_rn(max_norm.to(C), denominator), OUT)
        coefficient = tl.where(coefficient > 1.0, 1.0, coefficient)
        tl.store(factor_out, coefficient.to(tl.float64) / scale)


@triton.jit
def scale_kernel(table, chunks, factor_ptr, P: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr,
                 CHUNK: tl.constexpr, ALIGNED: tl.constexpr = False):
    x_ptr, start, n, whole = _program_chunk(table, chunks, P, 2, 0, 1, CHUNK, ALIGNED)
    factor = tl.load(factor_ptr).to(C)
    if whole:
        for i in range(0, CHUNK, BLOCK):
            ptrs = _whole_block(x_ptr, start, i, BLOCK)
            tl.store(ptrs, to_storage(tl.load(ptrs).to(C) * factor, P))
    else:
        for i in range(0, CHUNK, BLOCK):
            offs = _chunk_offsets(start, i, BLOCK)
            mask = offs < n
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(C)
            tl.store(x_ptr + offs, to_storage(x * factor, P), mask=mask)


@triton.jit
def clamp_kernel(table, chunks, bounds, P: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                 ALIGNED: tl.constexpr = False):
    x_ptr, start, n, whole = _program_chunk(table, chunks, P, 2, 0, 1, CHUNK, ALIGNED)
    low = tl.load(bounds).to(C)
    high = tl.load(bounds + 1).to(C)
    if whole:
        for i in range(0, CHUNK, BLOCK):
            ptrs = _whole_block(x_ptr, start, i, BLOCK)
            tl.store(ptrs, to_storage(_clamp(tl.load(ptrs).to(C), low, high), P))
    else:
        for i in range(0, CHUNK, BLOCK):
            offs = _chunk_offsets(start, i, BLOCK)
            mask = offs < n
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(C)
            tl.store(x_ptr + offs, to_storage(_clamp(x, low, high), P), mask=mask)


@triton.jit
def _clamp(x, low, high):
    x = tl.where(x < low, low, x)
    return tl.where(x > high, high, x)


class TensorList:
    """Tensors of one device and real dtype as a launch table of (pointer, numel) rows, with
    contiguous copies of tensors that have gaps (written back by ``finish`` when in place)."""

    def __init__(self, tensors):
        self.device = tensors[0].device
        rows, numels, self.copies = [], [], []
        for t in tensors:
            (flat,), copies = flat_views([real(t)], [True])
            self.copies.extend(copies)  # kept alive until finish(), after the launches
            rows.append((flat.data_ptr(), flat.numel()))
            numels.append(flat.numel())
        self.dtype = real(tensors[0]).dtype
        self.aligned = all(address % VECTOR_BYTES == 0 for address, _ in rows)
        self.table = upload(torch.tensor(rows, dtype=torch.int64).reshape(-1), self.device)
        self.chunks = _chunks.get(numels, self.device)

    @property
    def n_chunks(self):
        return self.chunks.shape[0]

    def launch(self, kernel, *args, **constants):
        if self.n_chunks:
            kernel[(self.n_chunks,)](self.table, self.chunks, *args, P=TL_DTYPES[self.dtype], BLOCK=BLOCK,
                                     CHUNK=CHUNK, ALIGNED=self.aligned, **constants)

    def finish(self):
        write_back(self.copies)


def compute_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def norm_partials(tensor_list, partials, norm_type):
    """Fill ``partials`` (float64, one entry per chunk) with the chunks' power sums."""
    tensor_list.launch(norm_partials_kernel, partials, float(norm_type), ACC=compute_dtype(tensor_list.dtype),
                       KIND=norm_kind(norm_type), ROW=ROW, PTR=0, NUMEL=1)


def optimizer_grad_partials(rows, dtype, device, norm_type, device_rows=None):
    """Power sums, per chunk, of the gradients in an optimizer plan's launch rows (LaunchRow);
    ``device_rows``: the same rows already on the device (else they are copied there)."""
    chunks = _chunks.get(rows[:, LaunchRow.NUMEL].tolist(), device)
    partials = torch.zeros(max(chunks.shape[0], 1), dtype=torch.float64, device=device)
    if chunks.shape[0]:
        norm_partials_kernel[(chunks.shape[0],)](
            upload(rows.reshape(-1), device) if device_rows is None else device_rows, chunks, partials, float(norm_type),
            P=TL_DTYPES[dtype],
            ACC=compute_dtype(dtype), KIND=norm_kind(norm_type), ROW=LaunchRow.WORDS, PTR=LaunchRow.GRAD,
            NUMEL=LaunchRow.NUMEL, BLOCK=BLOCK, CHUNK=CHUNK,
            ALIGNED=bool((rows[:, LaunchRow.GRAD] % VECTOR_BYTES == 0).all()),
        )
    return partials


def finalize(partials, norm_type, out_dtype, max_norm=None, grad_scale=None):
    """(total norm in out_dtype, clip factor in float64 or None) as device tensors, in one launch."""
    device = partials.device
    total = torch.empty((), dtype=out_dtype, device=device)
    factor = torch.empty((), dtype=torch.float64, device=device) if max_norm is not None else total
    scalars = upload(torch.tensor([max_norm if max_norm is not None else 0.0, norm_type], dtype=torch.float64), device)
    norm_finalize_kernel[(1,)](
        partials, partials.numel(), total, factor, grad_scale if grad_scale is not None else total, scalars,
        KIND=norm_kind(norm_type),
        OUT=TL_DTYPES[out_dtype], C=compute_dtype(out_dtype), HAS_SCALE=grad_scale is not None,
        HAS_MAX=max_norm is not None, BLOCK=FINALIZE_BLOCK,
    )
    return total, factor if max_norm is not None else None


def scale_(tensor_list, factor):
    tensor_list.launch(scale_kernel, factor, C=compute_dtype(tensor_list.dtype))
    tensor_list.finish()


def clamp_(tensor_list, low, high):
    bounds = upload(torch.tensor([low, high], dtype=torch.float64), tensor_list.device)
    tensor_list.launch(clamp_kernel, bounds, C=compute_dtype(tensor_list.dtype))
    tensor_list.finish()


# One-tensor kernels for the triton_ops: program pid takes elements [pid * CHUNK, (pid + 1) * CHUNK)
# of one contiguous tensor, as the table kernels take a chunk.

@triton.jit
def tensor_norm_partials_kernel(x_ptr, n, partials, offset, p: tl.float64, ACC: tl.constexpr, KIND: tl.constexpr,
                                BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """partials[offset + pid] = sum |x|^p (max |x| for inf) over chunk pid of x."""
    p = scalar(p, ACC)
    pid = tl.program_id(0).to(tl.int64)
    start = pid * CHUNK
    acc = tl.zeros([BLOCK], dtype=ACC)
    for i in range(0, CHUNK, BLOCK):
        offs = _chunk_offsets(start, i, BLOCK)
        acc = _accumulate(acc, tl.load(x_ptr + offs, mask=offs < n, other=0.0), p, KIND, ACC)
    result = _reduce(acc, KIND)
    tl.store(partials + offset + pid, result.to(tl.float64))


@triton.jit
def tensor_scale_kernel(x_ptr, n, factor_ptr, P: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    factor = tl.load(factor_ptr).to(C)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(x_ptr + offs, to_storage(x.to(C) * factor, P), mask=mask)


@triton.jit
def tensor_clamp_kernel(x_ptr, n, low: tl.float64, high: tl.float64, P: tl.constexpr, C: tl.constexpr,
                        BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(C)
    tl.store(x_ptr + offs, to_storage(_clamp(x, scalar(low, C), scalar(high, C)), P), mask=mask)


def _flat(t):
    """t's real elements as a contiguous 1-D tensor: a view when t is contiguous, else a copy."""
    return real(t).reshape(-1) if t.is_contiguous() else real(t).contiguous().reshape(-1)


def _in_place(tensors, launch):
    """launch(flat) on each tensor's flat real elements, copied back where those are a copy."""
    for t in tensors:
        flat = _flat(t)
        if flat.numel():
            launch(flat)
            if not t.is_contiguous():
                real(t).copy_(flat.reshape(real(t).shape))


@triton_op("fused_optim::total_norm_triton", mutates_args=())
def total_norm_op(tensors: list[Tensor], norm_type: float, max_norm: Optional[float]) -> tuple[Tensor, Tensor]:
    """(total norm in the tensors' promoted real dtype, clip factor in float64 or an empty tensor without
    max_norm) of tensors on one device, as ``finalize`` gives them."""
    device = tensors[0].device
    flats = [_flat(t) for t in tensors]
    counts = [triton.cdiv(f.numel(), CHUNK) for f in flats]
    partials = torch.empty(max(sum(counts), 1), dtype=torch.float64, device=device)
    offset = 0
    for flat, count in zip(flats, counts):
        if count:
            wrap_triton(tensor_norm_partials_kernel)[(count,)](
                flat, flat.numel(), partials, offset, float(norm_type), ACC=compute_dtype(flat.dtype),
                KIND=norm_kind(norm_type), BLOCK=BLOCK, CHUNK=CHUNK)
        offset += count
    out_dtype = result_dtype(tensors)
    total = torch.empty((), dtype=out_dtype, device=device)
    factor = torch.empty((() if max_norm is not None else (0,)), dtype=torch.float64, device=device)
    scalars = torch.tensor([max_norm if max_norm is not None else 0.0, norm_type], dtype=torch.float64, device=device)
    wrap_triton(norm_finalize_kernel)[(1,)](
        partials, sum(counts), total, factor, partials, scalars,
        KIND=norm_kind(norm_type), OUT=TL_DTYPES[out_dtype], C=compute_dtype(out_dtype), HAS_SCALE=False,
        HAS_MAX=max_norm is not None, BLOCK=FINALIZE_BLOCK)
    return total, factor


@triton_op("fused_optim::scale_triton_", mutates_args=("tensors",))
def scale_op_(tensors: list[Tensor], factor: Tensor) -> None:
    """tensors *= factor (a 0-dim tensor on their device) in place, each in its compute dtype."""
    _in_place(tensors, lambda flat: wrap_triton(tensor_scale_kernel)[(triton.cdiv(flat.numel(), BLOCK),)](
        flat, flat.numel(), factor, P=TL_DTYPES[flat.dtype], C=compute_dtype(flat.dtype), BLOCK=BLOCK))


@triton_op("fused_optim::clamp_triton_", mutates_args=("tensors",))
def clamp_op_(tensors: list[Tensor], low: float, high: float) -> None:
    """tensors = clamp(tensors, low, high) in place."""
    _in_place(tensors, lambda flat: wrap_triton(tensor_clamp_kernel)[(triton.cdiv(flat.numel(), BLOCK),)](
        flat, flat.numel(), low, high, P=TL_DTYPES[flat.dtype], C=compute_dtype(flat.dtype), BLOCK=BLOCK))
