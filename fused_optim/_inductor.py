"""Hands inductor the lowerings of fused_optim's ops (``torch._inductor.decomposition``'s table)
the moment inductor is imported, without importing it: ``import fused_optim`` stays as cheap as
it is (inductor's import takes about a second), and an op is never seen by inductor before its
lowering is in the table (inductor refuses an op that is both in its graph and in its table).

If inductor is already loaded, the lowerings are added at once; otherwise a one-shot finder on
``sys.meta_path`` adds them right after ``torch._inductor.decomposition`` has executed. Should
inductor's internals differ (another torch), nothing is added and the ops stay opaque to it:
correct, only without fusion.

torch.compile's on-disk caches (AOT autograd's, keyed on the traced graph, where the ops are opaque
calls) cannot see a lowering: after an upgrade they would serve code generated from the old one.
So the lowerings' identity, a hash of the sources they are made of, is appended to
``torch.compiler.config.cache_key_tag``, which every compile cache puts in its key; a tag the user
set stays in front of it.
"""

import hashlib
import importlib.abc
import importlib.machinery
import sys

_MODULE = "torch._inductor.decomposition"
_added = False


def lowering_tag(modules=None):
    """"fused_optim-<version>-<hash>": the package version and a hash of the source files the
    lowerings are made of (default: their module, the reference math they call and this one)."""
    from . import __version__

    if modules is None:
        from .ops import batch_norm
        from .reference import norm as reference

        modules = [batch_norm, reference, sys.modules[__name__]]
    digest = hashlib.sha256()
    for module in modules:
        with open(module.__file__, "rb") as f:
            digest.update(f.read())
    return f"fused_optim-{__version__}-{digest.hexdigest()[:16]}"


def _tag_compile_caches(tag):
    import torch.compiler.config as compiler_config

    current = compiler_config.cache_key_tag
    if tag not in current.split():
        compiler_config.cache_key_tag = f"{current} {tag}" if current else tag


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
    try:
        _tag_compile_caches(lowering_tag())
    except Exception:  # noqa: BLE001 - a torch without cache_key_tag: its caches keep their keys
        pass


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
