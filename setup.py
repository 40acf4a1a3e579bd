"""Builds the C++ extension ahead of time when torch is importable; otherwise installs the pure
Python package and the extension is JIT-built on first use (see fused_optim/_cpp.py)."""

import os
import runpy
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
build_config = runpy.run_path(os.path.join(HERE, "fused_optim", "_extension_build.py"))
CSRC = os.path.join(HERE, "csrc")


class BuildPyWithSources(build_py):
    """Ship the C++ sources inside the package so an installed copy can JIT-build them."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "fused_optim", "_csrc")
        os.makedirs(target, exist_ok=True)
        for path in build_config["source_files"](CSRC):
            shutil.copy(path, target)


cmdclass = {"build_py": BuildPyWithSources}
ext_modules = []
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("fused_optim: torch is not importable at build time; the C++ extension will be JIT-built on first use")
else:
    files = build_config["source_files"](CSRC)
    sources = [os.path.relpath(f, HERE) for f in files if f.endswith(".cpp")]
    ext_modules.append(
        CppExtension(
            build_config["EXTENSION_NAME"],
            sources,
            extra_compile_args=build_config["CXX_FLAGS"] + [build_config["hash_define"](files)],
            extra_link_args=build_config["LINK_FLAGS"],
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
