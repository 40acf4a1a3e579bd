"""Hands inductor the lowerings of fused_optim's ops (``torch._inductor.decomposition``'s table)
the moment inductor is imported, without importing it: ``import fused_optim`` stays as cheap as
it is (inductor's import takes about a second), and an op is never seen by inductor before its
lowering is in the table (inductor refuses an op that is both in its graph and in its table).

If inductor is already loaded, the lowerings are added at once; otherwise a one-shot finder on
``sys.meta_path`` adds them right after ``torch._inductor.decomposition`` has executed. Should
inductor's internals differ (another torch), nothing is added and the ops stay opaque to it:
correct, only without fusion.
"""

import importlib.abc
import importlib.machinery
import sys

_MODULE = "torch._inductor.decomposition"
_added = False


def _add(module):
    global _added
    if _added:
        return
    from .ops import batch_norm

    try:
        tables = [module.decompositions]
        cached = getattr(module, "fast_random_decomps", None)  # a cached copy of it, which compile_fx reads
        if cached is not None and cached.cache_info().currsize:  # built already: it lacks them
            tables.append(cached())
        for table in tables:
            for op, lowering in batch_norm.inductor_lowerings().items():
                table.setdefault(op, lowering)
    except Exception:  # noqa: BLE001 - another torch's internals: the ops stay opaque
        return
    _added = True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``torch._inductor.decomposition`` is imported, it leaves the
    path, takes the regular spec and has its loader call ``_add`` once the module has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _add(module)

        loader.exec_module = exec_module
        return spec


def install():
    """Adds the lowerings now if inductor is loaded, else when it is."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        _add(module)
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
