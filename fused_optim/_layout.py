"""Memory-layout and dtype facts about tensors, shared by every layer: the dtype policy (what an
update computes in, what its state is stored in, real views of complex tensors) and the launch-row
layout of the multi-tensor optimizer kernels."""

import torch


def is_dense(t):
    """True when ``t``'s elements fill one block of memory exactly once, in some dimension order
    (contiguous, channels_last, transposed...). Such a tensor can be walked as a flat array."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def compute_dtype(dtype):
    """The dtype the math runs in for tensors of ``dtype``: float64 for float64 (and complex128),
    float32 for everything else (16-bit floats are computed in float32 and rounded once)."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def state_dtype(dtype, requested=None):
    """The dtype of optimizer moment/accumulator state for parameters of ``dtype``: ``requested``
    (a group's ``state_dtype`` option) when it is bfloat16; else (None or float32) float32 for 16-bit
    floats, so no moment overflows and no ``eps`` flushes to zero, and the parameter's own dtype
    otherwise."""
    if requested == torch.bfloat16:
        return requested
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


#: ``master_weights`` kinds, as the kernels' MASTER flag numbers them
MASTER_KINDS = {None: 0, "fp32": 1, "kahan": 2, "stochastic": 3}
#: the state key each kind adds after the optimizer's own (its dtype: ``master_dtype``)
MASTER_KEYS = {None: (), "fp32": ("master_param",), "kahan": ("kahan_comp",), "stochastic": ()}
#: what ``state_dtype=`` accepts
STATE_DTYPES = (None, torch.float32, torch.bfloat16)


def master_dtype(key, dtype):
    """The dtype of a master-weight state tensor of a parameter of ``dtype``: ``master_param`` is
    float32, ``kahan_comp`` the parameter's own 16-bit dtype."""
    return torch.float32 if key == "master_param" else dtype


def state_dtypes(dtype, keys, requested=None):
    """The dtype of each state tensor in ``keys`` (the optimizer's own, then the master-weight
    key) for parameters of real dtype ``dtype``: the one place that says what each state holds."""
    return tuple(master_dtype(k, dtype) if k in ("master_param", "kahan_comp") else state_dtype(dtype, requested)
                 for k in keys)


def real_dtype(t):
    """The dtype of a tensor's real view: float32 for complex64."""
    return t.real.dtype if t.is_complex() else t.dtype


def real(t):
    """Complex tensors as their real view; others as they are."""
    return torch.view_as_real(t) if t.is_complex() else t


def flat_views(tensors, written):
    """Each tensor as a flat array in its own memory order, plus (tensor, copy) pairs.

    Tensors sharing one dense layout are used in place; otherwise the non-contiguous ones are
    stepped on contiguous copies. The caller keeps every copy alive until the launch is enqueued
    and writes back the pairs whose tensor ``written`` says the kernel changes.
    """
    first = tensors[0]
    same = all(t.is_contiguous() for t in tensors) or (
        is_dense(first) and all(t.stride() == first.stride() for t in tensors)
    )
    if same:
        return list(tensors), []
    flat, copies = [], []
    for t, is_written in zip(tensors, written):
        if t.is_contiguous():
            flat.append(t)
        else:
            copy = t.contiguous()
            flat.append(copy)
            copies.append((t if is_written else None, copy))
    return flat, copies


def write_back(copies):
    for destination, copy in copies:
        if destination is not None:
            destination.copy_(copy)


class LaunchRow:
    """One int64 row per tensor of a multi-tensor optimizer launch: the data addresses of the
    parameter, its gradient and up to MAX_STATE state tensors (0 when absent), its element count
    (real elements), the address of its float32 counter (step count or first-step flag) and its
    rounding id (the parameter's index in the optimizer, the "tensor" of stochastic rounding's key).

    The C++ plan writes these rows (csrc/optimizer.h, ``launch_row``, exported as
    ``_C.LAUNCH_ROW``), the Triton kernels read them (as constexprs), and the no-compiler
    bookkeeper builds them; tests/test_launch_layout.py checks that all agree.
    """

    WORDS = 9
    PARAM = 0
    GRAD = 1
    STATE = 2
    MAX_STATE = 4
    NUMEL = 6
    COUNTER = 7
    KEY = 8


#: at most this many float64 kernel scalars and compile-time flags per param group (a spec's fold)
MAX_KERNEL_SCALARS = 8
MAX_KERNEL_FLAGS = 8


# ----- stochastic rounding: a counter-based hash, the same on every backend --------------------
#
# Each element draws random 32-bit words w_j = mix(element_lo ^ K_j), j = 0, 1, 2, one ``mix``
# (two multiplies) per word. The word key K_j folds everything that is the same for a whole slice of
# a tensor: the step key (the seed and the group's rounding step, folded on the host:
# ``rounding_step_key``), the tensor's rounding id, the word number and element_hi (the element
# index's high 32 bits), by ``rounding_word_key``; a kernel computes it once per slice.
#
# The words are cut into 16-bit slots (slot s: bits 16 * (s % 2) up of word s // 2) and each rounded
# stream takes what it needs (``rounding_slot``): a bfloat16 parameter slot 0, a float16 one all of
# word 0 (its subnormals take 24 bits), and bfloat16 state k the next free slot. So bfloat16 Adam's
# parameter and first moment share word 0 and its second moment (and AMSGrad's max) take word 1:
# two hashes per element, not one per stream.
#
# ``mix`` is a bijection of 32-bit words, so for one (step, tensor, word) the map from element_lo to
# w_j is a bijection: over any 2**32 consecutive elements every word occurs once, so each pattern of
# any slot's bits, and each pair of the two slots of one word, is equally likely. The rounding is
# unbiased, and the two streams sharing a word round independently (tests/test_optim_master_weights.py
# measures both).

MASK32 = 0xFFFFFFFF
MIX_1 = 0x7FEB352D
MIX_2 = 0x846CA68B
GOLDEN = 0x9E3779B9
#: random words per element (enough slots for a float16 parameter and MAX_STATE bfloat16 states)
ROUNDING_WORDS = 3


def mix32(x):
    """A 32-bit integer hash (a bijection): xor-shift-multiply, on Python ints."""
    x &= MASK32
    x ^= x >> 16
    x = (x * MIX_1) & MASK32
    x ^= x >> 15
    x = (x * MIX_2) & MASK32
    x ^= x >> 16
    return x


def rounding_step_key(seed, step):
    """The 32-bit key of one step of a param group: from the 64-bit seed and the step number."""
    seed &= (1 << 64) - 1
    return mix32(mix32(mix32(step & MASK32) ^ (seed & MASK32)) ^ (seed >> 32))


def rounding_word_key(step_key, tensor, word, element_hi=0):
    """K_j: the key of random word ``word`` of one tensor's elements whose index has high 32 bits
    ``element_hi``, at one step."""
    base = mix32(mix32(mix32(step_key ^ GOLDEN) ^ (tensor & MASK32)) ^ word)
    return mix32(base ^ (element_hi & MASK32))


def rounding_slot(param_dtype, stream):
    """(word, shift) of the random bits of ``stream`` (0: the parameter, 1 + k: bfloat16 state
    tensor k) for parameters of ``param_dtype``: its bits are word >> shift (a bfloat16 rounding
    uses the low 16 of them, a float16 parameter's all 32)."""
    slot = stream + (1 if param_dtype == torch.float16 and stream > 0 else 0)
    return slot // 2, 16 * (slot % 2)


def rounding_bits(step_key, tensor, element, param_dtype, stream):
    """The random bits of one element of one stream, on Python ints (the definition)."""
    word, shift = rounding_slot(param_dtype, stream)
    key = rounding_word_key(step_key, tensor, word, element >> 32)
    return mix32((element & MASK32) ^ key) >> shift
