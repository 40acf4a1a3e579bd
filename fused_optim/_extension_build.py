"""How the C++ extension is built: shared by setup.py (ahead of time) and _cpp.py (JIT).

This module imports nothing from torch or from the package, so setup.py can load it by path.
"""

import hashlib
import os

EXTENSION_NAME = "fused_optim._C"

# -O3 for auto-vectorization; the SIMD loops carry GCC target_clones, so the binary runs on any
# x86-64 and picks AVX-512 / AVX2 / baseline code at load time (no -march here: an ahead-of-time
# build must not assume the build machine's CPU).
# -fno-math-errno lets sqrt vectorize; -ffp-contract=off keeps every clone rounding identically,
# so results do not depend on which CPU runs them.
# -fopenmp: the extension links libgomp.so.1, which resolves to the copy torch already loaded,
# so there is one OpenMP thread pool, shared with torch and sized by torch.set_num_threads.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"]
LINK_FLAGS = ["-fopenmp"]


def source_dir(package_dir):
    """The csrc folder: the checkout's top-level csrc/, else the copy shipped in the package."""
    for candidate in (
        os.path.join(os.path.dirname(package_dir), "csrc"),
        os.path.join(package_dir, "_csrc"),
    ):
        if os.path.isfile(os.path.join(candidate, "module.cpp")):
            return candidate
    return None


def source_files(csrc):
    names = sorted(n for n in os.listdir(csrc) if n.endswith((".cpp", ".h")))
    return [os.path.join(csrc, n) for n in names]


def source_hash(files):
    """A digest of the C++ sources and flags: a build is reused only for identical inputs."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(" ".join(CXX_FLAGS + LINK_FLAGS).encode())
    return digest.hexdigest()[:16]


def hash_define(files):
    # An identifier, not a string literal: quotes do not survive every build tool's shell.
    return f"-DFUSED_OPTIM_SOURCE_HASH=h{source_hash(files)}"
