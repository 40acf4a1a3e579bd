"""Multi-tensor Adam/AdamW and SGD: every tensor of a (param group, device, dtype) in one launch.

The launcher packs one int64 table per step: a header of hyperparameters (float64 bits, so the
bias corrections see the exact float64 betas) and the plan's rows, one per tensor: pointers to the
parameter, gradient and state, the element count, and the address of the tensor's float32 counter
(its step count for Adam, its first-step flag for SGD).
A cached table of (tensor, start) chunks gives each program CHUNK elements of one tensor. Step
counts live on the device, one float32 per tensor as in torch's fused optimizers; bias corrections
are computed in the kernel, in float64, from each tensor's own step, so tensors at different steps
share the launch. The element math runs in float32 (float64 for float64 parameters) and rounds once
at the store.

Gradient unscaling and clipping come in as one factor read from device memory (``grad_factor``),
and a step whose gradients held inf/NaN under AMP is skipped on the device (``found_inf``): no
host sync either way.
"""

import math

import torch
import triton
import triton.language as tl

from .common import TL_DTYPES, ChunkTable, div_rn, float64_bits, power, sqrt_rn, to_storage, upload

BLOCK = 1024
CHUNK = 4 * BLOCK
# The table: HEADER float64 words, then ROW int64 words per tensor (the kernels index it with these
# numbers: row t starts at table + 8 + 8 * t).
HEADER = 8
ROW = 8

_chunks = ChunkTable(CHUNK)


@triton.jit
def _header(table, index):
    return tl.load(table + index).to(tl.float64, bitcast=True)


@triton.jit
def _grad_factor(factor_ptr, C: tl.constexpr, HAS_FACTOR: tl.constexpr):
    """What each gradient is multiplied by first: unscaling and clipping (float64 on the device)."""
    if HAS_FACTOR:
        return tl.load(factor_ptr).to(C)
    else:
        return tl.full([], 1.0, C)


@triton.jit
def _chunk_end(start, CHUNK: tl.constexpr, n, found_inf_ptr, HAS_FOUND_INF: tl.constexpr):
    """The end of the elements this program updates: none at all when AMP found inf/NaN."""
    end = n
    if HAS_FOUND_INF:
        end = tl.where(tl.load(found_inf_ptr) != 0, start, n)
    return end


@triton.jit
def multi_tensor_adam_kernel(table, chunks, factor_ptr, found_inf_ptr, P: tl.constexpr, S: tl.constexpr,
                             C: tl.constexpr, AMSGRAD: tl.constexpr, L2: tl.constexpr, LERP_FROM_START: tl.constexpr,
                             HAS_FACTOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr,
                             CHUNK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(chunks + 2 * pid)
    start = tl.load(chunks + 2 * pid + 1)
    lr = _header(table, 0)
    beta1 = _header(table, 1)
    beta2 = _header(table, 2)
    row = table + 8 + 8 * t
    p_ptr = tl.load(row).to(tl.pointer_type(P))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(P))
    m_ptr = tl.load(row + 2).to(tl.pointer_type(S))
    v_ptr = tl.load(row + 3).to(tl.pointer_type(S))
    n = tl.load(row + 5)
    # the step count before this update; the launcher advances it afterwards
    step = tl.load(tl.load(row + 6).to(tl.pointer_type(tl.float32))).to(tl.int64) + 1

    neg_step_size = (-(lr / (1.0 - power(beta1, step)))).to(C)
    bias_correction2_sqrt = sqrt_rn(1.0 - power(beta2, step)).to(C)
    one_minus_beta1 = (1.0 - beta1).to(C)
    one_minus_weight = 1.0 - one_minus_beta1
    b2 = beta2.to(C)
    one_minus_beta2 = (1.0 - beta2).to(C)
    eps = _header(table, 3).to(C)
    l2 = _header(table, 4).to(C)
    decay = _header(table, 5).to(C)
    sign = _header(table, 6).to(C)
    factor = _grad_factor(factor_ptr, C, HAS_FACTOR)
    end = _chunk_end(start, CHUNK, n, found_inf_ptr, HAS_FOUND_INF)

    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < end
        param = tl.load(p_ptr + offs, mask=mask, other=0.0).to(C)
        grad = sign * (tl.load(g_ptr + offs, mask=mask, other=0.0).to(C) * factor)
        if L2:
            grad = grad + l2 * param
        param = param * decay
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(C)
        if LERP_FROM_START:
            m = m + one_minus_beta1 * (grad - m)
        else:
            m = grad - (grad - m) * one_minus_weight
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(C) * b2
        v = v + (one_minus_beta2 * grad) * grad
        v_used = v
        if AMSGRAD:
            vmax_ptr = tl.load(row + 4).to(tl.pointer_type(S))
            v_max = tl.load(vmax_ptr + offs, mask=mask, other=0.0).to(C)
            v_used = tl.where((v > v_max) | (v != v), v, v_max)
            tl.store(vmax_ptr + offs, v_used.to(S), mask=mask)
        denom = div_rn(sqrt_rn(v_used), bias_correction2_sqrt) + eps
        param = param + div_rn(neg_step_size * m, denom)
        tl.store(m_ptr + offs, m.to(S), mask=mask)
        tl.store(v_ptr + offs, v.to(S), mask=mask)
        tl.store(p_ptr + offs, to_storage(param, P), mask=mask)


@triton.jit
def multi_tensor_sgd_kernel(table, chunks, factor_ptr, found_inf_ptr, P: tl.constexpr, S: tl.constexpr,
                            C: tl.constexpr, MOMENTUM: tl.constexpr, L2: tl.constexpr, NESTEROV: tl.constexpr,
                            HAS_FACTOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr,
                            CHUNK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(chunks + 2 * pid)
    start = tl.load(chunks + 2 * pid + 1)
    neg_lr = (-_header(table, 0)).to(C)
    momentum = _header(table, 1).to(C)
    one_minus_dampening = (1.0 - _header(table, 2)).to(C)
    weight_decay = _header(table, 3).to(C)
    sign = _header(table, 4).to(C)
    row = table + 8 + 8 * t
    p_ptr = tl.load(row).to(tl.pointer_type(P))
    g_ptr = tl.load(row + 1).to(tl.pointer_type(P))
    n = tl.load(row + 5)
    factor = _grad_factor(factor_ptr, C, HAS_FACTOR)
    end = _chunk_end(start, CHUNK, n, found_inf_ptr, HAS_FOUND_INF)

    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < end
        param = tl.load(p_ptr + offs, mask=mask, other=0.0).to(C)
        grad = sign * (tl.load(g_ptr + offs, mask=mask, other=0.0).to(C) * factor)
        if L2:
            grad = grad + weight_decay * param
        if MOMENTUM:
            buf_ptr = tl.load(row + 2).to(tl.pointer_type(S))
            first = tl.load(tl.load(row + 6).to(tl.pointer_type(tl.float32))) != 0
            # On a first step the buffer holds nothing yet: it is not read, only written.
            old = tl.load(buf_ptr + offs, mask=mask & (not first), other=0.0).to(C)
            buf = tl.where(first, grad, old * momentum + one_minus_dampening * grad)
            tl.store(buf_ptr + offs, buf.to(S), mask=mask)
            if NESTEROV:
                grad = grad + momentum * buf
            else:
                grad = buf
        tl.store(p_ptr + offs, to_storage(param + neg_lr * grad, P), mask=mask)


@triton.jit
def advance_counters_kernel(table, found_inf_ptr, ADD: tl.constexpr, HAS_FOUND_INF: tl.constexpr):
    """After an update: each row's counter += 1 (ADD, step counts) or = 0 (first-step flags),
    unless AMP found inf/NaN. A launch of its own, as the update's programs all read the counters."""
    row = table + 8 + 8 * tl.program_id(0).to(tl.int64)
    counter = tl.load(row + 6).to(tl.pointer_type(tl.float32))
    taken = True
    if HAS_FOUND_INF:
        taken = tl.load(found_inf_ptr) == 0
    if taken:
        if ADD:
            tl.store(counter, tl.load(counter) + 1.0)
        else:
            tl.store(counter, 0.0)


def launch_table(header, rows, device):
    """The int64 launch table on ``device``: the header (float64 bits), then the plan's rows."""
    header = float64_bits(list(header) + [0.0] * (HEADER - len(header)))
    return upload(torch.cat([header, rows.reshape(-1)]), device)


def chunks_for(rows, device, chunk_table=None):
    """The cached (tensor, start) chunk table for the rows' element counts."""
    return (chunk_table or _chunks).get(rows[:, 5].tolist(), device)


def _launch(kernel, header, rows, param_dtype, device, grad_factor, found_inf, advance, **constants):
    if rows.shape[0] == 0:
        return
    table = launch_table(header, rows, device)
    chunks = chunks_for(rows, device)
    state_dtype = torch.float32 if param_dtype in (torch.float16, torch.bfloat16) else param_dtype
    if chunks.shape[0] > 0:
        kernel[(chunks.shape[0],)](
            table, chunks, grad_factor if grad_factor is not None else table,
            found_inf if found_inf is not None else table, P=TL_DTYPES[param_dtype], S=TL_DTYPES[state_dtype],
            C=tl.float64 if param_dtype == torch.float64 else tl.float32, HAS_FACTOR=grad_factor is not None,
            HAS_FOUND_INF=found_inf is not None, BLOCK=BLOCK, CHUNK=CHUNK, **constants,
        )
    if advance is not None:
        advance_counters_kernel[(rows.shape[0],)](table, found_inf if found_inf is not None else table, ADD=advance,
                                                  HAS_FOUND_INF=found_inf is not None)


def multi_tensor_adam(rows, param_dtype, device, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                      decoupled_weight_decay, grad_factor=None, found_inf=None):
    """Adam/AdamW over a plan's launch rows (counters: step counts, advanced after the update).
    ``grad_factor`` (float64) and ``found_inf``: 0-dim device tensors or None."""
    decay = weight_decay != 0
    header = [lr, beta1, beta2, eps, weight_decay if decay and not decoupled_weight_decay else 0.0,
              1.0 - lr * weight_decay if decay and decoupled_weight_decay else 1.0, -1.0 if maximize else 1.0]
    _launch(multi_tensor_adam_kernel, header, rows, param_dtype, device, grad_factor, found_inf, True,
            AMSGRAD=bool(amsgrad), L2=decay and not decoupled_weight_decay,
            LERP_FROM_START=math.fabs(1.0 - beta1) < 0.5)


def multi_tensor_sgd(rows, param_dtype, device, *, lr, momentum, dampening, weight_decay, nesterov, maximize,
                     grad_factor=None, found_inf=None):
    """SGD over a plan's launch rows (counters: first-step flags, cleared after the update)."""
    header = [lr, momentum, dampening, weight_decay, -1.0 if maximize else 1.0]
    _launch(multi_tensor_sgd_kernel, header, rows, param_dtype, device, grad_factor, found_inf,
            False if momentum != 0 else None, MOMENTUM=momentum != 0, L2=weight_decay != 0, NESTEROV=bool(nesterov))
