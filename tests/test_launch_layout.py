"""The launch-row layout is defined once per language; every user agrees on it."""

import pytest
import torch

import fused_optim as fo
from fused_optim import _cpp
from fused_optim._layout import MAX_KERNEL_FLAGS, MAX_KERNEL_SCALARS, LaunchRow
from fused_optim.ops._python_book import PythonBook

FIELDS = ("WORDS", "PARAM", "GRAD", "STATE", "MAX_STATE", "NUMEL", "COUNTER")


def _ext():
    ext = _cpp.get()
    if ext is None:
        pytest.fail(f"the C++ extension should load here: {_cpp.unavailable_reason()}")
    return ext


def test_cpp_exports_the_python_layout():
    ext = _ext()
    assert ext.LAUNCH_ROW == {name: getattr(LaunchRow, name) for name in FIELDS}
    assert ext.MAX_KERNEL_SCALARS == MAX_KERNEL_SCALARS and ext.MAX_KERNEL_FLAGS == MAX_KERNEL_FLAGS
    assert LaunchRow.STATE + LaunchRow.MAX_STATE <= LaunchRow.NUMEL < LaunchRow.COUNTER < LaunchRow.WORDS


def test_triton_constexprs_are_the_python_layout():
    triton_optim = pytest.importorskip("fused_optim.triton.optim")
    for name, constexpr in [("WORDS", triton_optim.ROW_WORDS), ("PARAM", triton_optim.ROW_PARAM),
                            ("GRAD", triton_optim.ROW_GRAD), ("STATE", triton_optim.ROW_STATE),
                            ("NUMEL", triton_optim.ROW_NUMEL), ("COUNTER", triton_optim.ROW_COUNTER)]:
        assert constexpr.value == getattr(LaunchRow, name)
    assert triton_optim.HEADER == MAX_KERNEL_SCALARS


def test_cpp_and_python_books_write_the_same_rows():
    """Every field of every row, for contiguous, complex, and state-carrying parameters."""
    ext = _ext()
    params = [torch.randn(5), torch.randn(3, 4, dtype=torch.complex64), torch.randn(0), torch.randn(7)]
    for p in params:
        p.grad = torch.randn_like(p)
    state = [[torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)] for p in params]
    counters = torch.zeros(len(params))
    rows = []
    for book in (ext.MultiTensorPlan(params, 3, None, "Adam", ""), PythonBook(params, 3, "Adam")):
        for i, s in enumerate(state):
            book.bind(i, s, False)
        assert book.scan(False)[0] is False
        rows.append(book.launch_rows(counters.data_ptr()))
        book.finish_launch()
    cpp_rows, python_rows = rows
    assert torch.equal(cpp_rows, python_rows)
    real = torch.view_as_real(params[1])
    assert cpp_rows[1, LaunchRow.PARAM] == real.data_ptr()
    assert cpp_rows[1, LaunchRow.NUMEL] == real.numel()
    assert cpp_rows[3, LaunchRow.STATE + 2] == state[3][2].data_ptr()
    assert cpp_rows[3, LaunchRow.STATE + 3] == 0
    assert cpp_rows[2, LaunchRow.COUNTER] == counters.data_ptr() + 4 * 2


def test_every_optimizer_has_a_kernel_on_every_backend():
    ext = _ext()
    import importlib

    import fused_optim.reference.optim as reference

    for cls in (fo.SGD, fo.Adam, fo.AdamW, fo.RMSprop, fo.Adagrad):
        name = cls.spec.name
        assert name in ext.OPTIMIZER_KERNELS
        assert callable(getattr(reference, name))
        assert importlib.import_module(f"fused_optim.triton.{name}").__dict__[f"{name}_kernel"] is not None
