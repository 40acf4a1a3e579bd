"""Adam/AdamW kernel body (scalars and flags: fused_optim/optim/adam.py's spec)."""

import triton
import triton.language as tl

from .common import div_rn, power, sqrt_rn
from .optim import (chunk_end, grad_factor, header_scalar, load_param, program_chunk, row_counter, row_grad,
                    row_master, row_param, row_state, store_param, store_state)

KEY = tl.constexpr(7)  # the rounding key's place among the spec's scalars


@triton.jit
def adam_kernel(table, chunks, factor_ptr, found_inf_ptr, P: tl.constexpr, S: tl.constexpr, C: tl.constexpr,
                HAS_FACTOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                FULL: tl.constexpr, ALIGNED: tl.constexpr,
                AMSGRAD: tl.constexpr, L2_ON: tl.constexpr, LERP_FROM_START: tl.constexpr, MASTER: tl.constexpr,
                STATE_BF16: tl.constexpr):
    row, start = program_chunk(table, chunks, CHUNK)
    lr = header_scalar(table, 0)
    beta1 = header_scalar(table, 1)
    beta2 = header_scalar(table, 2)
    p_ptr = row_param(row, P, ALIGNED)
    g_ptr = row_grad(row, P, ALIGNED)
    m_ptr = row_state(row, 0, S, ALIGNED)
    v_ptr = row_state(row, 1, S, ALIGNED)
    x_ptr = row_master(row, 2 + AMSGRAD, MASTER, P, ALIGNED)
    step = row_counter(row).to(tl.int64) + 1

    neg_step_size = (-(lr / (1.0 - power(beta1, step)))).to(C)
    bias_correction2_sqrt = sqrt_rn(1.0 - power(beta2, step)).to(C)
    one_minus_beta1 = (1.0 - beta1).to(C)
    one_minus_weight = 1.0 - one_minus_beta1
    b2 = beta2.to(C)
    one_minus_beta2 = (1.0 - beta2).to(C)
    eps = header_scalar(table, 3).to(C)
    l2 = header_scalar(table, 4).to(C)
    decay = header_scalar(table, 5).to(C)
    sign = header_scalar(table, 6).to(C)
    factor = grad_factor(factor_ptr, C, HAS_FACTOR)
    end = chunk_end(row, start, found_inf_ptr, HAS_FOUND_INF, CHUNK, FULL)

    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < end
        param = load_param(p_ptr, x_ptr, offs, mask, C, MASTER)
        grad = sign * (tl.load(g_ptr + offs, mask=mask, other=0.0).to(C) * factor)
        if L2_ON:
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
            vmax_ptr = row_state(row, 2, S, ALIGNED)
            v_max = tl.load(vmax_ptr + offs, mask=mask, other=0.0).to(C)
            v_used = tl.where((v > v_max) | (v != v), v, v_max)
            store_state(vmax_ptr, offs, mask, v_used, table, row, KEY, 2, P, S, MASTER)
        denom = div_rn(sqrt_rn(v_used), bias_correction2_sqrt) + eps
        param = param + div_rn(neg_step_size * m, denom)
        store_state(m_ptr, offs, mask, m, table, row, KEY, 0, P, S, MASTER)
        store_state(v_ptr, offs, mask, v, table, row, KEY, 1, P, S, MASTER)
        store_param(p_ptr, x_ptr, offs, mask, param, table, row, KEY, P, MASTER)

