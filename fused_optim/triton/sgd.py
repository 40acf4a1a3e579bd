"""SGD kernel body (scalars and flags: fused_optim/optim/sgd.py's spec). The counter is the
tensor's first-step flag: on a first step the momentum buffer is not read, only written."""

import triton
import triton.language as tl

from .optim import (chunk_end, grad_factor, header_scalar, load_param, program_chunk, row_counter, row_grad,
                    row_master, row_param, row_state, store_param, store_state)

KEY = tl.constexpr(5)  # the rounding key's place among the spec's scalars


@triton.jit
def sgd_kernel(table, chunks, factor_ptr, found_inf_ptr, P: tl.constexpr, S: tl.constexpr, C: tl.constexpr,
               HAS_FACTOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                FULL: tl.constexpr, ALIGNED: tl.constexpr,
               MOMENTUM_ON: tl.constexpr, L2: tl.constexpr, NESTEROV: tl.constexpr, MASTER: tl.constexpr,
               STATE_BF16: tl.constexpr):
    row, start = program_chunk(table, chunks, CHUNK)
    neg_lr = (-header_scalar(table, 0)).to(C)
    momentum = header_scalar(table, 1).to(C)
    one_minus_dampening = (1.0 - header_scalar(table, 2)).to(C)
    weight_decay = header_scalar(table, 3).to(C)
    sign = header_scalar(table, 4).to(C)
    p_ptr = row_param(row, P, ALIGNED)
    g_ptr = row_grad(row, P, ALIGNED)
    x_ptr = row_master(row, MOMENTUM_ON, MASTER, P, ALIGNED)
    factor = grad_factor(factor_ptr, C, HAS_FACTOR)
    end = chunk_end(row, start, found_inf_ptr, HAS_FOUND_INF, CHUNK, FULL)

    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < end
        param = load_param(p_ptr, x_ptr, offs, mask, C, MASTER)
        grad = sign * (tl.load(g_ptr + offs, mask=mask, other=0.0).to(C) * factor)
        if L2:
            grad = grad + weight_decay * param
        if MOMENTUM_ON:
            buf_ptr = row_state(row, 0, S, ALIGNED)
            first = row_counter(row) != 0
            old = tl.load(buf_ptr + offs, mask=mask & (not first), other=0.0).to(C)
            buf = tl.where(first, grad, old * momentum + one_minus_dampening * grad)
            store_state(buf_ptr, offs, mask, buf, table, row, KEY, 0, P, S, MASTER)
            if NESTEROV:
                grad = grad + momentum * buf
            else:
                grad = buf
        store_param(p_ptr, x_ptr, offs, mask, param + neg_lr * grad, table, row, KEY, P, MASTER)

