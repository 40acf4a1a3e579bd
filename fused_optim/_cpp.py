"""Loads the C++ extension: the prebuilt ``fused_optim._C`` when it matches the sources, else a
JIT build cached on disk, else nothing, with the reason kept for ``available_backends()``.

Loading happens on first use, never at ``import fused_optim``, and never raises.
"""

import hashlib
import os
import sys
import threading

from . import _extension_build as build_config

_lock = threading.Lock()
_loaded = False
_module = None
_reason = None


def _cache_root():
    root = os.environ.get("FUSED_OPTIM_CACHE")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fused_optim")


def _first_line(error):
    """The most telling line of an error: a compiler's first 'error:' line, else the last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return f"{type(error).__name__}: {(errors or lines or [''])[0] if errors else (lines or [''])[-1]}"


def _load():
    if os.environ.get("FUSED_OPTIM_DISABLE_CPP", "") not in ("", "0"):
        return None, "disabled by FUSED_OPTIM_DISABLE_CPP"
    package_dir = os.path.dirname(os.path.abspath(__file__))
    csrc = build_config.source_dir(package_dir)
    files = build_config.source_files(csrc) if csrc else []
    expected = build_config.source_hash(files) if files else None
    try:
        from . import _C

        if expected is None or getattr(_C, "SOURCE_HASH", None) == f"h{expected}":
            return _C, None
        prebuilt = "the prebuilt fused_optim._C is older than the sources in csrc/"
    except ImportError as error:
        prebuilt = f"no usable prebuilt extension ({_first_line(error)})"
    if expected is None:
        return None, f"{prebuilt}, and no C++ sources were found to build one"
    try:
        import torch
        from torch.utils.cpp_extension import load

        # The build files name the sources by absolute path, so each source folder gets its own
        # build folder: two checkouts with the same sources would otherwise rebuild each other's.
        where = hashlib.sha256(os.path.realpath(csrc).encode()).hexdigest()[:8]
        tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{expected}-{where}"
        build_dir = os.path.join(_cache_root(), tag)
        os.makedirs(build_dir, exist_ok=True)
        module = load(
            name=f"fused_optim_C_{expected}",
            sources=[f for f in files if f.endswith(".cpp")],
            extra_cflags=build_config.CXX_FLAGS + [build_config.hash_define(files)],
            extra_ldflags=build_config.LINK_FLAGS,
            build_directory=build_dir,
            verbose=os.environ.get("FUSED_OPTIM_VERBOSE_BUILD", "") not in ("", "0"),
        )
        return module, None
    except Exception as error:  # a missing compiler or ninja must not break the package
        return None, f"{prebuilt}; building it failed: {_first_line(error)}"


def get():
    """The extension module, or None when it cannot be loaded (see unavailable_reason())."""
    global _loaded, _module, _reason
    if not _loaded:
        with _lock:
            if not _loaded:
                _module, _reason = _load()
                _loaded = True
    return _module


def unavailable_reason():
    """None when the extension works, else why it does not."""
    get()
    return _reason
