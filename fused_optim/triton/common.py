"""Pieces shared by the Triton kernels."""

import torch
import triton
import triton.language as tl

_subclass_like = torch._C._dispatch_isTensorSubclassLike

TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}


@triton.jit
def to_storage(x, DTYPE: tl.constexpr):
    """Cast a computed value to the storage dtype, bfloat16 rounded to nearest even.

    The rounding is written out so every Triton target (and the CPU interpreter, which would
    truncate) stores the same bits as torch and the C++ kernels.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def multiple_of(n, VEC: tl.constexpr):
    """n, which the launcher has checked is a multiple of VEC, as an int64 whose divisibility the
    compiler can see (tl.multiple_of takes tensors, not a scalar argument): with it, masks and
    row offsets built from n keep whole 128-bit vectors together."""
    return n.to(tl.int64) // VEC * VEC


@triton.jit
def scalar(x, DTYPE: tl.constexpr):
    """A float argument as DTYPE, rounded once: on a GPU it arrives as float64 (the kernel
    signature says so, where a Python float would be typed float32), under the interpreter as a
    Python float, which float64 arithmetic keeps exact."""
    return (tl.zeros([], tl.float64) + x).to(DTYPE)


@triton.jit
def sqrt_rn(x):
    """Square root rounded to nearest (fp32's tl.sqrt is approximate; fp64's is exact)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def div_rn(x, y):
    """Division rounded to nearest (fp32's ``/`` is approximate; fp64's is exact)."""
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.div_rn(x, y)


@triton.jit
def power(base, exponent):
    """base ** exponent for a float64 base and a non-negative integer exponent, by squaring."""
    result = base * 0.0 + 1.0
    while exponent > 0:
        if exponent % 2 == 1:
            result = result * base
        base = base * base
        exponent = exponent // 2
    return result


# Bytes of the widest global load and store: the aligned kernel variants move this per access.
VECTOR_BYTES = 16


def vector_width(dtype):
    """Elements of dtype in one 128-bit access."""
    return VECTOR_BYTES // dtype.itemsize


def _traced_address(t):
    """Where t's data starts, modulo 16 bytes, for the launchers inside a triton_op: a traced tensor
    (fake or functional) has no address, so its storage offset stands for it, the storage itself
    being allocator-aligned, as the compiler assumes for its own buffers."""
    if _subclass_like(t) or t.is_meta:
        return t.storage_offset() * t.element_size()
    return t.data_ptr()


def is_aligned(tensors, sizes=(), vec=1, traced=False):
    """Whether every tensor's data starts on a 16-byte boundary and every size (a row stride, a
    channel count) is a multiple of vec elements: what an aligned kernel variant assumes.
    ``traced``: the tensors may be a trace's (see ``_traced_address``)."""
    address = _traced_address if traced else torch.Tensor.data_ptr
    return (all(address(t) % VECTOR_BYTES == 0 for t in tensors if t is not None)
            and all(s % vec == 0 for s in sizes))


# Streaming multiprocessors assumed when CUDA tensors are traced (as FakeTensors) on a machine
# without a GPU: the graph is then only inspected or exported, and the figure only sizes grids.
TRACING_MULTIPROCESSORS = 132


def multiprocessors(device):
    """Streaming multiprocessors of a CUDA device."""
    if not torch.cuda.is_available():
        return TRACING_MULTIPROCESSORS
    return torch.cuda.get_device_properties(device).multi_processor_count


def next_power_of_2(n):
    """The least power of 2 >= n, a plain int also for a traced symbolic size: there it is found by
    comparisons, so the trace guards on n's power-of-2 range (one graph per range). Tile sizes derived
    from it are the kernels' compile-time constants. (triton.next_power_of_2 of a symbolic size builds
    a nest of bitwise ops whose guards take minutes to simplify.)"""
    if isinstance(n, int):
        return triton.next_power_of_2(n)
    power = 1
    while power < n:
        power *= 2
    return power


def direct(kernel):
    """A kernel launched as it is: the launchers' eager path. Inside a ``torch.library.triton_op``
    they take ``torch.library.wrap_triton`` instead, so a trace records the launch."""
    return kernel


def upload(table, device):
    """A host tensor on ``device``: an asynchronous copy from pinned memory, never a host sync."""
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def float64_bits(values):
    """Float64 values as int64 words, to travel in an int64 table."""
    return torch.tensor(values, dtype=torch.float64).view(torch.int64)


class ChunkTable:
    """(tensor, start) pairs cutting tensors into chunks of ``chunk`` elements, one per program.

    Cached per list of sizes and device, so a steady training loop builds it once.
    """

    def __init__(self, chunk):
        self.chunk = chunk
        self._cache = {}

    def get_split(self, numels, aligned, device):
        """(whole chunks of the tensors marked aligned, all other chunks): the two tables of a
        launch with a vectorized, unmasked path."""
        key = ("split", tuple(numels), tuple(aligned), str(device))
        tables = self._cache.get(key)
        if tables is None:
            full, rest = [], []
            for t, (n, ok) in enumerate(zip(numels, aligned)):
                for start in range(0, n, self.chunk):
                    (full if ok and start + self.chunk <= n else rest).append((t, start))
            tables = tuple(upload(torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2), torch.device(device))
                           for pairs in (full, rest))
            self._remember(key, tables)
        return tables

    def _remember(self, key, value):
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = value

    def get(self, numels, device):
        key = (tuple(numels), str(device))
        table = self._cache.get(key)
        if table is None:
            pairs = [(t, start) for t, n in enumerate(numels) for start in range(0, n, self.chunk)]
            table = upload(torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2), torch.device(device))
            self._remember(key, table)
        return table
