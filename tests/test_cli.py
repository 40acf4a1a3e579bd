"""The ``fused-optim`` command: bench, check and info on tiny sizes, their files, and bad arguments."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HAS_CUDA, TRITON_DEVICE
from fused_optim.benchmark import report, runner
from fused_optim.benchmark.ops import OPS
from fused_optim.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])

BENCH_KEYS = {"schema", "created", "command", "environment", "complete", "settings", "copy_bandwidth", "results", "targets",
              "other_cpu_share"}
ENVIRONMENT_KEYS = {"date", "fused_optim", "git_commit", "python", "torch", "triton", "numpy", "platform", "cpu", "cuda",
                    "cpp_extension", "triton_interpret", "backends"}
COPY_KEYS = {"bytes_per_copy", "gbps", "median_s", "q1_s", "q3_s", "samples"}
CHECK_ROW_KEYS = {"op", "backend", "dtype", "device", "passed", "max_abs_error", "error_ratio", "runs", "reason"}
TIMED = ("median_s", "q1_s", "q3_s", "min_s", "max_s", "iqr_pct", "samples", "calls_per_sample", "gbps", "pct_of_copy")


@pytest.fixture(autouse=True)
def _restore_threads():
    """--threads changes torch's thread count for the whole process: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *argv):
    """Run the command in this process: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse reports bad arguments this way
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def run_module(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "fused_optim", *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})}, timeout=300)


# ----- info ----------------------------------------------------------------------------------

def test_info_lists_versions_devices_and_backends(capsys, tmp_path):
    code, out, _ = run(capsys, "info", "--json", str(tmp_path / "info.json"))
    assert code == 0
    assert "torch" in out and "cpu:" in out and "backends:" in out
    for backend in ("reference", "cpp", "triton"):
        assert f"  {backend} " in out
    document = json.loads((tmp_path / "info.json").read_text())
    assert document["schema"] == "fused_optim.info/1"
    assert ENVIRONMENT_KEYS <= document["environment"].keys()
    backends = document["environment"]["backends"]
    assert backends["reference"]["cpu"] is None
    if not HAS_CUDA:
        assert "cuda: not available" in out


def test_module_entry_point_and_missing_command():
    done = run_module("info")
    assert done.returncode == 0, done.stderr
    assert "backends:" in done.stdout
    done = run_module()
    assert done.returncode == 2
    assert "required" in done.stderr and "COMMAND" in done.stderr


def test_unavailable_cpp_backend_is_listed_not_fatal(tmp_path):
    env = {"FUSED_OPTIM_DISABLE_CPP": "1"}
    done = run_module("bench", "--quick", "--threads", "1", "--op", "sgd", "--workload", "small", "--json", str(tmp_path / "b.json"), env=env)
    assert done.returncode == 0, done.stderr
    assert "fused_optim cpp      unavailable: the C++ extension is unavailable: disabled by FUSED_OPTIM_DISABLE_CPP" in done.stdout
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert any(r["provider"] == "torch fused" and r["available"] for r in rows)
    # check says the fast CPU path is missing: fused_optim would silently run the reference
    done = run_module("check", "--op", "sgd", "--dtype", "float32", "--device", "cpu", env=env)
    assert done.returncode == 1
    assert "the cpp backend cannot run cpu tensors here" in done.stdout


# ----- bench ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bench_quick_default_run(capsys, tmp_path, device):
    """Every op on every default workload of the device, with the documented JSON fields."""
    path = tmp_path / "bench.json"
    # One thread: OpenMP regions of two threads crawl on a CPU shared with other work, and the
    # threads setting must reach the recorded environment.
    code, out, err = run(capsys, "bench", "--quick", "--threads", "1", "--device", device, "--json", str(path))
    assert code == 0, err
    document = json.loads(path.read_text())
    assert BENCH_KEYS <= document.keys()
    assert document["schema"] == "fused_optim.bench/1" and document["complete"] is True
    assert ENVIRONMENT_KEYS <= document["environment"].keys()
    assert COPY_KEYS <= document["copy_bandwidth"].keys() and document["copy_bandwidth"]["gbps"] > 0
    assert document["environment"]["cpu"]["torch_threads"] == 1
    settings = document["settings"]
    assert settings["device"].startswith(device) and settings["quick"] is True
    assert settings["ops"] == runner.default_ops() and set(OPS) - set(runner.default_ops()) == {
        "layernorm-fwd", "batchnorm2d-fwd", "batchnorm2d-cl-fwd"}
    assert settings["workloads"] == runner.default_workloads(device)
    results = document["results"]
    cases = {(r["op"], r["workload"], r["dtype"]) for r in results}
    planned = runner.plan_cases(settings["ops"], settings["workloads"], settings["dtypes"])
    assert cases == {(c.op, c.workload, c.dtype) for c in planned}
    assert {op for op, _, _ in cases} == set(runner.default_ops())  # every op runs on some default workload
    for row in results:
        assert set(runner.RESULT_FIELDS) == row.keys()
        if row["available"]:
            assert row["reason"] is None
            assert all(row[k] is not None for k in TIMED), row
            assert row["min_s"] <= row["q1_s"] <= row["median_s"] <= row["q3_s"] <= row["max_s"]
        else:
            assert row["reason"] and all(row[k] is None for k in TIMED), row
    for case in cases:
        rows = [r for r in results if (r["op"], r["workload"], r["dtype"]) == case]
        torch_rows = [r for r in rows if r["family"] == "torch" and r["available"]]
        assert torch_rows, case
        best = min(torch_rows, key=lambda r: r["median_s"])
        assert best["speedup_vs_torch_best"] == 1.0 and all(r["torch_best"] == best["provider"] for r in torch_rows)
        fast = "fused_optim triton" if device == "cuda" else "fused_optim cpp"
        assert next(r for r in rows if r["provider"] == fast)["available"], case
    for op, workload, dtype in cases:
        assert f"{op} (" in out and f"· {workload}:" in out
    assert "copy bandwidth (measured)" in out and "vs torch best" in out
    assert "[1/" in err  # progress, one line per case when stderr is not a terminal


def test_bench_cold_reports_both_modes(capsys, tmp_path):
    """--cold: every case timed back to back and cold, both tables printed and recorded."""
    path = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", "--quick", "--cold", "--threads", "1", "--op", "sgd", "--workload", "tiny",
                         "--json", str(path))
    assert code == 0, err
    document = json.loads(path.read_text())
    assert document["settings"]["cold"] is True and document["settings"]["evict_bytes"] >= 64 * 2**20
    results = document["results"]
    assert {r["timing"] for r in results} == {"warm", "cold"}
    for mode in ("warm", "cold"):
        rows = [r for r in results if r["timing"] == mode and r["available"]]
        assert any(r["provider"] == "fused_optim cpp" for r in rows)
        assert max(r["speedup_vs_torch_best"] for r in rows if r["family"] == "torch") == 1.0
    assert out.count("sgd (SGD, momentum 0.9) · tiny:") == 2
    assert "· cold: each step after work that evicts the caches" in out
    assert {v["timing"] for v in document["targets"]} == {"warm", "cold"} and "(cold)" in out


def test_bench_writes_csv_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    paths = {name: tmp_path / name for name in ("b.json", "b.csv", "b.png")}
    code, out, err = run(capsys, "bench", "--quick", "--threads", "1", "--op", "adamw", "--workload", "small,resnet50", "--dtype", "float32",
                         "--dtype", "bfloat16", "--json", str(paths["b.json"]), "--csv", str(paths["b.csv"]),
                         "--plot", str(paths["b.png"]))
    assert code == 0, err
    results = json.loads(paths["b.json"].read_text())["results"]
    assert {(r["workload"], r["dtype"]) for r in results} == {(w, d) for w in ("small", "resnet50") for d in ("float32", "bfloat16")}
    bf16 = next(r for r in results if r["dtype"] == "bfloat16")
    assert bf16["bytes_per_step"] == 22 * bf16["elements"]
    with open(paths["b.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == list(runner.RESULT_FIELDS)
    assert len(rows) == len(results)
    assert [r["provider"] for r in rows] == [r["provider"] for r in results]
    assert paths["b.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {paths['b.png']}" in out


def test_plot_without_matplotlib_is_refused_before_running(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, out, err = run(capsys, "bench", "--quick", "--plot", str(tmp_path / "p.png"))
    assert code == 2
    assert "--plot needs matplotlib" in err and "pip install" in err
    assert out == ""


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = report.Progress(4, stream)
    progress.update(1.5, "adam gpt2 float32")
    assert stream.getvalue().startswith("\r[" + "#" * 10 + ".")
    assert "1/4" in stream.getvalue() and "adam gpt2 float32" in stream.getvalue()
    progress.clear()
    assert stream.getvalue().endswith("\r")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["benchmark"], "invalid choice: 'benchmark'"),
        (["bench", "--op", "lamb"], "unknown op 'lamb': choose from " + ", ".join(OPS)),
        (["bench", "--op", ","], "--op needs at least one name"),
        (["bench", "--workload", "bert"], "unknown workload 'bert'"),
        (["bench", "--dtype", "int8"], "unknown dtype 'int8'"),
        (["bench", "--device", "gpu0"], "invalid --device 'gpu0'"),
        (["bench", "--device", "meta"], "benchmarks cpu and cuda devices, not meta"),
        (["bench", "--json", "/nonexistent-folder/b.json"], "the folder /nonexistent-folder does not exist"),
        (["bench", "--csv", "."], "is a folder"),
        (["bench", "--time-per-case", "0"], "expected a positive number of seconds"),
        (["bench", "--time-per-case", "soon"], "expected a number of seconds"),
        (["bench", "--threads", "0"], "expected at least 1"),
        (["bench", "--quick", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["check", "--op", "groupnorm"], "unknown op 'groupnorm'"),
        (["check", "--dtype", "float8"], "unknown dtype 'float8'"),
        (["info", "--json", "/nonexistent-folder/i.json"], "does not exist"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_bad_arguments(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err
    assert "usage: fused-optim" in err


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(capsys):
    code, _, err = run(capsys, "bench", "--device", "cuda")
    assert code == 2 and "CUDA is not available here" in err


# ----- check ---------------------------------------------------------------------------------

def test_check_passes_on_cpu(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter's Triton rows are tested below
    path = tmp_path / "check.json"
    code, out, err = run(capsys, "check", "--device", "cpu", "--json", str(path))
    assert code == 0, out + err
    document = json.loads(path.read_text())
    assert document["schema"] == "fused_optim.check/1" and document["passed"] is True
    rows = document["rows"]
    assert {(r["op"], r["dtype"]) for r in rows} == {(o, d) for o in runner.default_ops() for d in runner.DTYPES}
    for row in rows:
        assert CHECK_ROW_KEYS == row.keys()
    cpp = [r for r in rows if r["backend"] == "cpp"]
    assert len(cpp) == len(runner.default_ops()) * len(runner.DTYPES)
    assert all(r["passed"] is True and r["error_ratio"] <= 1.0 for r in cpp)
    triton = [r for r in rows if r["backend"] == "triton"]
    assert all(r["passed"] is None and "TRITON_INTERPRET" in r["reason"] for r in triton)
    assert "pass" in out and "unavailable" in out and "max abs error" in out


def test_check_failure_exits_nonzero(capsys, tmp_path, monkeypatch):
    import fused_optim.reference.optim as reference

    original = reference.sgd

    def wrong(param, *args, **kwargs):
        original(param, *args, **kwargs)
        param.mul_(1.01)

    monkeypatch.setattr(reference, "sgd", wrong)
    path = tmp_path / "check.json"
    code, out, _ = run(capsys, "check", "--op", "sgd", "--dtype", "float32", "--device", "cpu", "--json", str(path))
    assert code == 1
    assert "FAIL" in out and "FAILED:" in out
    document = json.loads(path.read_text())
    assert document["passed"] is False
    assert any(r["backend"] == "cpp" and r["passed"] is False for r in document["rows"])


@pytest.mark.parametrize("device", [TRITON_DEVICE])  # the id says where Triton ran: cuda, or cpu interpreted
def test_check_triton(capsys, device):
    code, out, _ = run(capsys, "check", "--device", device, "--dtype", "float32,bfloat16")
    triton_lines = [line for line in out.splitlines() if line.split()[1:2] == ["triton"]]
    assert len(triton_lines) == 2 * len(runner.default_ops())
    assert code == 0, out
