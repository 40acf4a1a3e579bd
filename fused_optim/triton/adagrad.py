"""Adagrad kernel body for dense gradients (scalars and flags: fused_optim/optim/adagrad.py's spec).
The learning rate of each tensor is decayed by its own step, in float64."""

import triton
import triton.language as tl

from .common import div_rn, sqrt_rn
from .optim import (chunk_end, grad_factor, header_scalar, load_param, program_chunk, row_counter, row_grad,
                    row_master, row_param, row_state, store_param, store_state)

KEY = tl.constexpr(5)  # the rounding key's place among the spec's scalars


@triton.jit
def adagrad_kernel(table, chunks, factor_ptr, found_inf_ptr, P: tl.constexpr, S: tl.constexpr, C: tl.constexpr,
                   HAS_FACTOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
                FULL: tl.constexpr, ALIGNED: tl.constexpr,
                   L2: tl.constexpr, MASTER: tl.constexpr, STATE_BF16: tl.constexpr):
    row, start = program_chunk(table, chunks, CHUNK)
    lr = header_scalar(table, 0)
    lr_decay = header_scalar(table, 1)
    # the step count before this update is step - 1
    step_before = row_counter(row).to(tl.float64)
    neg_clr = (-(lr / (1.0 + step_before * lr_decay))).to(C)
    eps = header_scalar(table, 2).to(C)
    weight_decay = header_scalar(table, 3).to(C)
    sign = header_scalar(table, 4).to(C)
    p_ptr = row_param(row, P, ALIGNED)
    g_ptr = row_grad(row, P, ALIGNED)
    sum_ptr = row_state(row, 0, S, ALIGNED)
    x_ptr = row_master(row, 1, MASTER, P, ALIGNED)
    factor = grad_factor(factor_ptr, C, HAS_FACTOR)
    end = chunk_end(row, start, found_inf_ptr, HAS_FOUND_INF, CHUNK, FULL)

    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        mask = offs < end
        param = load_param(p_ptr, x_ptr, offs, mask, C, MASTER)
        grad = sign * (tl.load(g_ptr + offs, mask=mask, other=0.0).to(C) * factor)
        if L2:
            grad = grad + weight_decay * param
        total = tl.load(sum_ptr + offs, mask=mask, other=0.0).to(C) + grad * grad
        store_state(sum_ptr, offs, mask, total, table, row, KEY, 0, P, S, MASTER)
        param = param + div_rn(neg_clr * grad, sqrt_rn(total) + eps)
        store_param(p_ptr, x_ptr, offs, mask, param, table, row, KEY, P, MASTER)

