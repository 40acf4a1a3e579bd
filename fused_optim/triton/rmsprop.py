"""RMSprop kernel body (scalars and flags: fused_optim/optim/rmsprop.py's spec). State: square_avg,
then momentum_buffer with momentum, then grad_avg when centered."""

import triton
import triton.language as tl

from .common import div_rn, sqrt_rn
from .optim import (chunk_end, grad_factor, header_scalar, load_param, program_chunk, row_grad, row_master,
                    row_param, row_state, store_param, store_state)

KEY = tl.constexpr(6)  # the rounding key's place among the spec's scalars


@triton.jit
def rmsprop_kernel(table, chunks, factor_ptr, found_inf_ptr, P: tl.constexpr, S: tl.constexpr, C: tl.constexpr,
                   HAS_FACTOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                FULL: tl.constexpr, ALIGNED: tl.constexpr,
                   CENTERED: tl.constexpr, MOMENTUM_ON: tl.constexpr, L2: tl.constexpr,
                   LERP_FROM_START: tl.constexpr, MASTER: tl.constexpr, STATE_BF16: tl.constexpr):
    row, start = program_chunk(table, chunks, CHUNK)
    neg_lr = (-header_scalar(table, 0)).to(C)
    alpha64 = header_scalar(table, 1)
    alpha = alpha64.to(C)
    one_minus_alpha = (1.0 - alpha64).to(C)
    one_minus_weight = 1.0 - one_minus_alpha
    eps = header_scalar(table, 2).to(C)
    weight_decay = header_scalar(table, 3).to(C)
    momentum = header_scalar(table, 4).to(C)
    sign = header_scalar(table, 5).to(C)
    p_ptr = row_param(row, P, ALIGNED)
    g_ptr = row_grad(row, P, ALIGNED)
    sq_ptr = row_state(row, 0, S, ALIGNED)
    x_ptr = row_master(row, 1 + MOMENTUM_ON + CENTERED, MASTER, P, ALIGNED)
    factor = grad_factor(factor_ptr, C, HAS_FACTOR)
    end = chunk_end(row, start, found_inf_ptr, HAS_FOUND_INF, CHUNK, FULL)

    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < end
        param = load_param(p_ptr, x_ptr, offs, mask, C, MASTER)
        grad = sign * (tl.load(g_ptr + offs, mask=mask, other=0.0).to(C) * factor)
        if L2:
            grad = grad + weight_decay * param
        sq = tl.load(sq_ptr + offs, mask=mask, other=0.0).to(C) * alpha + (one_minus_alpha * grad) * grad
        store_state(sq_ptr, offs, mask, sq, table, row, KEY, 0, P, S, MASTER)
        if CENTERED:
            ga_ptr = row_state(row, 1 + MOMENTUM_ON, S, ALIGNED)
            ga = tl.load(ga_ptr + offs, mask=mask, other=0.0).to(C)
            if LERP_FROM_START:
                ga = ga + one_minus_alpha * (grad - ga)
            else:
                ga = grad - (grad - ga) * one_minus_weight
            store_state(ga_ptr, offs, mask, ga, table, row, KEY, 1 + MOMENTUM_ON, P, S, MASTER)
            avg = sqrt_rn(sq + (-ga) * ga)
        else:
            avg = sqrt_rn(sq)
        avg = avg + eps
        if MOMENTUM_ON:
            buf_ptr = row_state(row, 1, S, ALIGNED)
            buf = tl.load(buf_ptr + offs, mask=mask, other=0.0).to(C) * momentum + div_rn(grad, avg)
            store_state(buf_ptr, offs, mask, buf, table, row, KEY, 1, P, S, MASTER)
            param = param + neg_lr * buf
        else:
            param = param + div_rn(neg_lr * grad, avg)
        store_param(p_ptr, x_ptr, offs, mask, param, table, row, KEY, P, MASTER)

