"""Without a working compiler the package still imports and runs: the cpp backend says why it is
unavailable and "auto" falls back to the reference with one warning. Run in a subprocess on a copy
of the package whose C++ sources differ from any prebuilt extension (so one must be built), with
the compiler replaced by /bin/false."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import warnings
    import torch
    import fused_optim as fo

    info = fo.available_backends()["cpp"]
    print("available:", info.available)
    print("reason:", info.reason)
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = fo.SGD([p], lr=0.5)
        opt.step()
        opt.step()
    print("warnings:", sum("reference backend" in str(w.message) for w in caught))
    print("param:", p.tolist())
    try:
        fo.SGD([p], lr=0.5, backend="cpp").step()
    except RuntimeError as error:
        print("explicit cpp:", type(error).__name__)
""")


@pytest.mark.skipif(not os.path.exists("/bin/false"), reason="needs /bin/false")
def test_package_works_without_a_compiler(tmp_path):
    shutil.copytree(os.path.join(ROOT, "fused_optim"), tmp_path / "fused_optim",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    with open(tmp_path / "csrc" / "module.cpp", "a") as f:
        f.write("// changed: no prebuilt extension matches these sources\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), CXX="/bin/false", CC="/bin/false",
               FUSED_OPTIM_CACHE=str(tmp_path / "cache"))
    env.pop("FUSED_OPTIM_BACKEND", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "available: False" in out
    assert "building it failed" in out
    assert "warnings: 1" in out  # once, not per step
    assert "param: [0.0, 0.0, 0.0]" in out  # two reference steps of 0.5
    assert "explicit cpp: RuntimeError" in out
