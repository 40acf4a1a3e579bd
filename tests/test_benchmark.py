"""The pieces behind ``fused-optim bench``: model shape lists, the byte model, timing statistics,
the op table's check, and the result rows of one case."""

import dataclasses
import math
import time

import pytest
import torch

from fused_optim.benchmark import ops, runner, timing, traffic, workloads


# ----- shape lists ---------------------------------------------------------------------------

def test_resnet50_shapes_match_torchvision_totals():
    shapes = workloads.resnet50_shapes()
    assert len(shapes) == 161
    assert workloads.numel(shapes) == 25_557_032
    assert shapes[0] == (64, 3, 7, 7) and shapes[-2:] == [(1000, 2048), (1000,)]
    assert sum(len(s) == 4 for s in shapes) == 53  # stem + 16 blocks x 3 + 4 downsample convs
    assert sum(len(s) == 1 for s in shapes) == 2 * 53 + 1  # a weight and a bias per BatchNorm, the fc bias


def test_gpt2_small_shapes_match_huggingface_totals():
    shapes = workloads.gpt2_shapes()
    assert len(shapes) == 148
    assert workloads.numel(shapes) == 124_439_808
    assert shapes[:2] == [(50257, 768), (1024, 768)]
    assert shapes.count((768, 2304)) == 12 and shapes.count((3072, 768)) == 12


def test_quick_workloads_keep_structure_and_are_tiny():
    for name, workload in workloads.WORKLOADS.items():
        full = workload.shapes("cpu", False) if name != "1b" else None
        quick = workload.shapes("cpu", True)
        assert workloads.numel(quick) < 300_000, name
        if name in ("resnet50", "gpt2"):
            assert len(quick) == len(full), name


def test_many_small_shapes_are_deterministic_and_in_range():
    a = workloads.many_small_shapes(2000, 64, 4096)
    assert a == workloads.many_small_shapes(2000, 64, 4096)
    assert len(a) == 2000 and all(64 <= s[0] <= 4096 for s in a)
    assert workloads.numel(a) > 1_000_000


def test_large_workload_size_depends_on_device():
    large = workloads.WORKLOADS["large"]
    assert large.shapes("cpu", False) == [(1 << 24,)]
    assert large.shapes("cuda", False) == [(1 << 28,)]
    assert workloads.numel(workloads.WORKLOADS["1b"].shapes("cuda", False)) == 1_000_000_000


def test_default_workloads_leave_1b_to_cuda():
    cpu, cuda = runner.default_workloads("cpu"), runner.default_workloads("cuda")
    assert {"large", "small", "resnet50", "gpt2", "mixed", "ln-1024", "ln-8192", "resnet-bn"} == set(cpu)
    assert set(cuda) == set(cpu) | {"1b", "ln-16384"}
    assert "tiny" not in cuda  # asked for by name


# ----- byte model ----------------------------------------------------------------------------

BYTE_MODEL = [
    # (optimizer, bench config, parameter dtype, bytes per element)
    (torch.optim.SGD, {"momentum": 0.9}, torch.float32, 20),
    (torch.optim.SGD, {}, torch.float32, 12),
    (torch.optim.Adam, {}, torch.float32, 28),
    (torch.optim.Adam, {"amsgrad": True}, torch.float32, 36),
    (torch.optim.AdamW, {}, torch.float32, 28),
    (torch.optim.Adam, {}, torch.bfloat16, 3 * 2 + 4 * 4),  # p, g 2 bytes; float32 m, v read and written
    (torch.optim.SGD, {"momentum": 0.9}, torch.float16, 3 * 2 + 2 * 4),
    (torch.optim.Adam, {}, torch.float64, 56),
    (torch.optim.RMSprop, {}, torch.float32, 20),
    (torch.optim.RMSprop, {"momentum": 0.9}, torch.float32, 28),
    (torch.optim.RMSprop, {"centered": True}, torch.float32, 28),
    (torch.optim.RMSprop, {"momentum": 0.9, "centered": True}, torch.float32, 36),
    (torch.optim.Adagrad, {}, torch.float32, 20),
]


@pytest.mark.parametrize("optimizer,config,dtype,expected", BYTE_MODEL,
                         ids=[f"{o.__name__}-{'-'.join(c) or 'plain'}-{str(d)[6:]}" for o, c, d, _ in BYTE_MODEL])
def test_byte_model(optimizer, config, dtype, expected):
    assert traffic.optimizer_step(dtype, ops.state_tensors(optimizer, config)) == expected


def test_op_table_uses_the_byte_model():
    assert ops.OPS["adam"].bytes_per_element(torch.float32) == 28
    assert ops.OPS["adamw"].bytes_per_element(torch.float32) == 28
    assert ops.OPS["sgd"].bytes_per_element(torch.float32) == 20  # the bench runs SGD with momentum
    assert ops.OPS["sgd"].config["momentum"] > 0
    assert ops.OPS["adam_clip"].bytes_per_element(torch.float32) == 4 + 28  # the norm reads the gradient once more
    assert ops.OPS["layernorm"].bytes_per_element(torch.float32) == 20
    assert ops.OPS["layernorm-fwd"].bytes_per_element(torch.float32) == 8
    assert ops.OPS["batchnorm2d"].bytes_per_element(torch.float32) == 32
    assert ops.OPS["batchnorm2d-cl-fwd"].bytes_per_element(torch.float32) == 12


def test_forward_ops_time_the_forward_alone():
    """The -fwd ops' providers call the module without autograd; the full ops run the backward too."""
    inputs = ops.NORM_OPS[0].make_inputs([(4, 16)], torch.device("cpu"), torch.float32, 0)
    full = {p.name: p for p in ops.OPS["layernorm"].providers("cpu", torch.float32)}
    forward = {p.name: p for p in ops.OPS["layernorm-fwd"].providers("cpu", torch.float32)}
    assert set(full) == set(forward)
    y = forward["torch native"].build(inputs)()
    assert isinstance(y, torch.Tensor) and not y.requires_grad
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(inputs.x, (16,), inputs.weight, inputs.bias))
    grads = full["torch native"].build(inputs)()
    assert len(grads) == 3  # dx, dweight, dbias


class _TorchBacked:
    """A stand-in for a fused_optim optimizer not written yet: torch's, taking ``backend``."""

    def __init__(self, torch_class):
        self.torch_class = torch_class
        self.__name__ = torch_class.__name__

    def __call__(self, params, backend=None, **kwargs):
        return self.torch_class(params, foreach=False, **kwargs)


def test_rmsprop_and_adagrad_ops_appear_with_their_classes(monkeypatch):
    assert not hasattr(ops.fo_optim, "RMSprop") or "rmsprop" in ops.OPS  # guarded on the class
    monkeypatch.setattr(ops.fo_optim, "RMSprop", _TorchBacked(torch.optim.RMSprop), raising=False)
    monkeypatch.setattr(ops.fo_optim, "Adagrad", _TorchBacked(torch.optim.Adagrad), raising=False)
    later = {op.name: op for op in ops.later_optimizer_ops()}
    assert set(later) == {"rmsprop", "adagrad"}
    for name, op in later.items():
        assert op.bytes_per_element(torch.float32) == 20, name
        assert op.workloads == ops.OPTIMIZER_WORKLOADS
        providers = {p.name: p for p in op.providers("cpu", torch.float32)}
        assert {"fused_optim cpp", "torch for-loop", "torch foreach", "torch fused", "reference"} <= set(providers)
        inputs = op.make_inputs([(5,), (3, 2)], torch.device("cpu"), torch.float32, 0)
        providers["torch for-loop"].build(inputs)()
    rmsprop_fused = next(p for p in later["rmsprop"].providers("cpu", torch.float32) if p.name == "torch fused")
    assert rmsprop_fused.reason is not None  # torch has no fused RMSprop
    assert next(p for p in later["adagrad"].providers("cpu", torch.float32) if p.name == "torch fused").reason is None
    assert {t.metric for t in later["rmsprop"].targets} == {"speedup_vs_torch_best"}
    assert {t.against for t in later["adagrad"].targets} == {"torch fused"}
    rows = later["adagrad"].check(torch.device("cpu"), torch.float32)
    assert rows and all(r.passed in (True, None) for r in rows)


# ----- timing --------------------------------------------------------------------------------

def test_quantile_interpolates_like_numpy():
    values = [1.0, 2.0, 4.0, 8.0]
    assert timing.quantile(values, 0.5) == 3.0
    assert timing.quantile(values, 0.25) == 1.75
    assert timing.quantile([5.0], 0.75) == 5.0
    with pytest.raises(ValueError):
        timing.quantile([], 0.5)


def test_summarize_reports_spread():
    stats = timing.summarize([3.0, 1.0, 2.0, 10.0, 2.0], calls_per_sample=4)
    assert (stats.median_s, stats.min_s, stats.max_s, stats.samples) == (2.0, 1.0, 10.0, 5)
    assert stats.q1_s == 2.0 and stats.q3_s == 3.0
    assert stats.iqr_pct == pytest.approx(50.0)


def test_measure_interleaves_providers_and_ranks_them():
    order = []

    def sleeper(name, seconds):
        def fn():
            order.append(name)
            time.sleep(seconds)
        return fn

    settings = timing.Settings(budget_s=0.05, min_rounds=4, max_rounds=6, min_sample_s=0.001, warmup_s=0.0)
    stats = timing.measure({"fast": sleeper("fast", 0.002), "slow": sleeper("slow", 0.008)}, timing.Clock("cpu"), settings)
    assert stats["fast"].samples == stats["slow"].samples >= 4
    assert stats["fast"].median_s >= 0.002 and stats["slow"].median_s >= 0.008
    assert stats["slow"].median_s > 2 * stats["fast"].median_s
    # One call each to size the samples, then rounds that sample every provider, each round
    # starting from the next one.
    assert order[:2] == ["fast", "slow"]
    rounds = [order[2 + 2 * r: 4 + 2 * r] for r in range(4)]
    assert rounds == [["fast", "slow"], ["slow", "fast"], ["fast", "slow"], ["slow", "fast"]]


def test_measure_batches_fast_calls_into_samples():
    count = [0]

    def tick():
        count[0] += 1

    settings = timing.Settings(budget_s=0.01, min_rounds=3, max_rounds=3, min_sample_s=0.002, warmup_s=0.0)
    stats = timing.measure({"tick": tick}, timing.Clock("cpu"), settings)["tick"]
    assert stats.calls_per_sample > 10
    assert stats.median_s < 0.001


def test_settings_stop_rule():
    settings = timing.Settings(budget_s=1.0, min_rounds=5, max_rounds=50, slow_rounds=3, slow_case_s=3.0, max_case_s=20.0)
    assert not settings.done(4, 2.0)  # budget spent, too few rounds
    assert settings.done(5, 1.0)
    assert not settings.done(2, 10.0)  # a slow case still takes slow_rounds rounds
    assert settings.done(3, 3.5)
    assert settings.done(50, 0.1)
    assert settings.done(1, 20.0)  # a round of pathologically slow steps is the last one


def test_slow_first_call_skips_sizing_on_cpu():
    order = []

    def slow():
        order.append("slow")
        time.sleep(0.003)

    settings = timing.Settings(budget_s=0.0, min_rounds=2, max_rounds=2, min_sample_s=0.0001, warmup_s=0.0)
    stats = timing.measure({"slow": slow}, timing.Clock("cpu"), settings, first_call_s={"slow": 0.01})["slow"]
    assert stats.calls_per_sample == 1 and len(order) == 2  # two rounds, nothing else
    order.clear()
    stats = timing.measure({"slow": slow}, timing.Clock("cpu"), settings, first_call_s={"slow": 0.0005})["slow"]
    assert len(order) == 3  # one call to size the samples, then two rounds


def test_cold_mode_evicts_before_every_timed_call():
    order = []

    def fn(name):
        return lambda: order.append(name)

    settings = timing.Settings(budget_s=0.0, min_rounds=3, max_rounds=3, min_sample_s=0.01, warmup_s=0.0)
    stats = timing.measure({"a": fn("a"), "b": fn("b")}, timing.Clock("cpu"), settings, evict=fn("evict"))
    assert stats["a"].calls_per_sample == stats["b"].calls_per_sample == 1  # not sized: one call per sample
    assert order == ["evict", "a", "evict", "b", "evict", "b", "evict", "a", "evict", "a", "evict", "b"]


def test_cache_evictor_streams_through_more_than_the_cache():
    evictor = timing.CacheEvictor("cpu", cpu_cache_bytes=48 * 2**20)
    assert evictor.nbytes == 96 * 2**20 and evictor.gpu is None
    assert timing.CacheEvictor("cpu").nbytes == timing.MIN_EVICT_BYTES
    before = evictor.cpu[::4096].clone()
    evictor()
    assert torch.equal(evictor.cpu[::4096], before + 1)  # every page written


def test_cache_sizes_are_read_from_sysfs_notation():
    from fused_optim.benchmark import environment

    assert environment._parse_size("32768K") == 32 * 2**20
    assert environment._parse_size("1M") == 2**20 and environment._parse_size("512") == 512
    size = environment.last_level_cache_bytes()
    assert size is None or size >= 2**16


@pytest.mark.parametrize("ids, flags, expected", [
    ({"vendor_id": "AuthenticAMD", "cpu family": "26"}, {"avx512f"}, "Zen 5"),
    ({"vendor_id": "AuthenticAMD", "cpu family": "25"}, {"avx512f"}, "Zen 4"),
    ({"vendor_id": "AuthenticAMD", "cpu family": "25"}, {"avx2"}, "Zen 3"),
    ({"vendor_id": "AuthenticAMD", "cpu family": "23"}, {"avx2"}, "Zen 1/2"),
    ({"vendor_id": "GenuineIntel", "cpu family": "6"}, {"avx512f"}, None),
    ({"vendor_id": "AuthenticAMD"}, set(), None),
])
def test_microarchitecture_names_zen_generations(ids, flags, expected):
    from fused_optim.benchmark import environment

    assert environment.microarchitecture(ids, flags) == expected


def test_environment_records_the_cpu_family():
    from fused_optim.benchmark import environment, report

    env = environment.environment()
    cpu = env["cpu"]
    assert {"family", "model_number", "microarchitecture"} <= set(cpu)
    if cpu["microarchitecture"]:
        assert f"({cpu['microarchitecture']})" in report.describe_machine(env, "cpu")


def test_copy_bandwidth_is_measured():
    result = timing.copy_bandwidth("cpu", 1 << 20, timing.Settings.default(quick=True))
    assert result["bytes_per_copy"] == 1 << 20
    assert result["gbps"] > 0.01 and result["samples"] >= 3


# ----- one case ------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """Timing tests need no speed: one thread keeps them quick on a CPU shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_run_case_rows(one_thread):
    settings = timing.Settings.default(quick=True)
    case = runner.Case("adam", "small", "float32")
    rows = runner.run_case(case, torch.device("cpu"), True, False, settings, copy_gbps=10.0)
    by_name = {r["provider"]: r for r in rows}
    assert set(by_name) == {"fused_optim cpp", "fused_optim triton", "torch for-loop", "torch foreach", "torch fused", "reference"}
    shapes = workloads.WORKLOADS["small"].shapes("cpu", True)
    for row in rows:
        assert row["elements"] == workloads.numel(shapes) and row["tensors"] == len(shapes)
        assert row["bytes_per_step"] == 28 * row["elements"]
    assert not by_name["fused_optim triton"]["available"]
    assert by_name["fused_optim triton"]["reason"].startswith("unavailable: ")
    timed = [r for r in rows if r["available"]]
    assert len(timed) == 5
    best = min((r for r in timed if r["family"] == "torch"), key=lambda r: r["median_s"])
    assert best["speedup_vs_torch_best"] == 1.0
    for row in timed:
        assert row["torch_best"] == best["provider"]
        assert row["gbps"] == pytest.approx(row["bytes_per_step"] / row["median_s"] / 1e9)
        assert row["pct_of_copy"] == pytest.approx(10.0 * row["gbps"])
        assert row["q1_s"] <= row["median_s"] <= row["q3_s"]
        assert row["speedup_vs_torch_best"] == pytest.approx(best["median_s"] / row["median_s"])


def test_run_case_cold_rows(one_thread):
    """With an evictor, every provider is timed twice: warm rows, then cold rows, each mode's
    speedups over its own fastest torch provider."""
    settings = timing.Settings.default(quick=True)
    evict = timing.CacheEvictor("cpu")
    calls = []
    rows = runner.run_case(runner.Case("sgd", "tiny", "float32"), torch.device("cpu"), True, False, settings, 10.0,
                           evict=lambda: (calls.append(1), evict()))
    providers = [p.name for p in ops.OPS["sgd"].providers("cpu", torch.float32)]
    assert [r["provider"] for r in rows] == providers * 2
    assert [r["timing"] for r in rows] == ["warm"] * len(providers) + ["cold"] * len(providers)
    timed = sum(r["available"] for r in rows if r["timing"] == "cold")
    assert len(calls) == sum(r["samples"] for r in rows if r["timing"] == "cold" and r["available"]) >= 3 * timed
    for mode in ("warm", "cold"):
        mode_rows = [r for r in rows if r["timing"] == mode and r["available"]]
        best = min((r for r in mode_rows if r["family"] == "torch"), key=lambda r: r["median_s"])
        for row in mode_rows:
            assert row["torch_best"] == best["provider"]
            assert row["speedup_vs_torch_best"] == pytest.approx(best["median_s"] / row["median_s"])
            if mode == "cold":
                assert row["calls_per_sample"] == 1
    verdicts = runner.evaluate_targets([runner.Case("sgd", "tiny", "float32")], rows, torch.device("cpu"))
    assert [v["timing"] for v in verdicts] == ["warm", "cold"]
    assert verdicts[1]["description"].endswith("(cold)")


def test_cases_are_workload_major_and_share_inputs(one_thread):
    cases = runner.plan_cases(["sgd", "adam"], ["small", "gpt2"], ["float32", "bfloat16"])
    assert [c.label for c in cases[:4]] == ["sgd small float32", "adam small float32", "sgd small bfloat16",
                                            "adam small bfloat16"]
    cache = runner.InputCache()
    settings = timing.Settings.default(quick=True)
    runner.run_case(cases[0], torch.device("cpu"), True, False, settings, 10.0, inputs=cache)
    first = cache.inputs
    runner.run_case(cases[1], torch.device("cpu"), True, False, settings, 10.0, inputs=cache)
    assert cache.inputs is first  # adam steps copies of the inputs sgd had: they are unchanged
    assert all(torch.equal(p, q) for p, q in zip(first.params, ops.ParamsAndGrads(
        workloads.WORKLOADS["small"].shapes("cpu", True), torch.device("cpu"), torch.float32, 0).params))
    runner.run_case(cases[2], torch.device("cpu"), True, False, settings, 10.0, inputs=cache)
    assert cache.inputs is not first and cache.inputs.params[0].dtype == torch.bfloat16


def test_reference_is_left_out_of_large_workloads(monkeypatch, one_thread):
    monkeypatch.setattr(runner, "REFERENCE_LIMIT", 10)
    settings = timing.Settings.default(quick=True)
    rows = runner.run_case(runner.Case("sgd", "small", "float32"), torch.device("cpu"), True, False, settings, 10.0)
    reference = next(r for r in rows if r["provider"] == "reference")
    assert not reference["available"] and "--reference" in reference["reason"]
    rows = runner.run_case(runner.Case("sgd", "small", "float32"), torch.device("cpu"), True, True, settings, 10.0)
    assert next(r for r in rows if r["provider"] == "reference")["available"]


def test_case_skipped_when_memory_is_short(monkeypatch):
    monkeypatch.setattr(runner.environment, "available_memory", lambda device: 1000)
    rows = runner.run_case(runner.Case("adam", "small", "float32"), torch.device("cpu"), True, False,
                           timing.Settings.default(quick=True), 10.0)
    assert all(not r["available"] for r in rows)
    assert "GiB free" in next(r for r in rows if r["provider"] == "fused_optim cpp")["reason"]


def test_failing_provider_is_reported_not_raised(monkeypatch, one_thread):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    original = ops.optimizer_providers

    def providers(*args):
        result = original(*args)
        return [ops.Provider(p.name, p.family, broken, p.reason, p.slow) if p.name == "torch foreach" else p for p in result]

    op = ops.OPS["sgd"]
    patched = dataclasses.replace(op, providers=lambda device, dtype: providers(
        ops.fo_optim.SGD, torch.optim.SGD, op.config, device, dtype))
    monkeypatch.setitem(ops.OPS, "sgd", patched)
    rows = runner.run_case(runner.Case("sgd", "small", "float32"), torch.device("cpu"), True, False,
                           timing.Settings.default(quick=True), 10.0)
    foreach = next(r for r in rows if r["provider"] == "torch foreach")
    assert not foreach["available"] and "kernel exploded" in foreach["reason"]
    assert next(r for r in rows if r["provider"] == "torch fused")["available"]


def test_targets_are_read_off_results():
    cases = [runner.Case("adam", "1b", "float32"), runner.Case("adam", "gpt2", "float32")]
    rows = [
        {"op": "adam", "workload": "1b", "dtype": "float32", "provider": "fused_optim triton", "available": True,
         "pct_of_copy": 93.0, "median_s": 0.007},
        {"op": "adam", "workload": "gpt2", "dtype": "float32", "provider": "fused_optim triton", "available": True,
         "pct_of_copy": 50.0, "median_s": 0.001},
        {"op": "adam", "workload": "gpt2", "dtype": "float32", "provider": "torch fused", "available": True,
         "pct_of_copy": 40.0, "median_s": 0.0011},
    ]
    verdicts = {v["workload"]: v for v in runner.evaluate_targets(cases, rows, torch.device("cuda"))}
    assert verdicts["1b"]["met"] is True and verdicts["1b"]["value"] == 93.0 and verdicts["1b"]["median_s"] == 0.007
    assert verdicts["gpt2"]["met"] is False and verdicts["gpt2"]["value"] == pytest.approx(1.1)
    assert "resnet50" not in verdicts  # not run
    assert runner.evaluate_targets(cases, rows, torch.device("cpu")) == []
    from fused_optim.benchmark import report

    table = report.targets_table(list(verdicts.values()))
    assert "MET     adam: fused_optim triton on 1b (float32): >= 90% of copy bandwidth: 93% (step 7 ms)" in table
    assert "MISSED  adam: fused_optim triton on gpt2 (float32): >= 1.2x faster than torch fused: 1.10x" in table


# ----- check ---------------------------------------------------------------------------------

def test_compare_measures_error_against_tolerance():
    want = {"a": torch.tensor([1.0, 2.0, float("nan")])}
    same = ops.compare({"a": want["a"].clone()}, want, torch.float32)
    assert same == (0.0, 0.0, None)
    off = ops.compare({"a": torch.tensor([1.0, 2.001, float("nan")])}, want, torch.float32)
    assert off[0] == pytest.approx(1e-3, rel=1e-3) and off[1] > 1.0
    nan = ops.compare({"a": torch.tensor([1.0, float("nan"), float("nan")])}, want, torch.float32)
    assert math.isinf(nan[1])
    inf = {"a": torch.tensor([float("inf"), -1.0])}
    assert ops.compare({"a": inf["a"].clone()}, inf, torch.float32)[:2] == (0.0, 0.0)
    assert math.isinf(ops.compare({"a": torch.tensor([1.0, -1.0])}, inf, torch.float32)[1])
    missing = ops.compare({}, want, torch.float32)
    assert missing[2] is not None and "missing" in missing[2]


def test_check_passes_on_cpp_and_catches_a_wrong_reference(monkeypatch):
    rows = ops.OPS["adam"].check(torch.device("cpu"), torch.float32)
    cpp = next(r for r in rows if r.backend == "cpp")
    assert cpp.passed is True and cpp.error_ratio <= 1.0 and cpp.runs == 2 * 3
    torch_row = next(r for r in rows if r.backend == "torch.optim")
    assert torch_row.passed is True

    import fused_optim.reference.optim as reference

    original = reference.adam

    def off_by_a_bit(param, *args, **kwargs):
        original(param, *args, **kwargs)
        param.add_(1e-3)

    monkeypatch.setattr(reference, "adam", off_by_a_bit)
    rows = ops.OPS["adam"].check(torch.device("cpu"), torch.float32)
    cpp = next(r for r in rows if r.backend == "cpp")
    assert cpp.passed is False and cpp.error_ratio > 1.0 and "outside tolerance" in cpp.reason


def test_busy_note():
    from fused_optim.benchmark import report

    assert report.busy_note(None, "during the run") is None
    assert report.busy_note(0.05, "during the run") is None
    note = report.busy_note(0.4, "during the run")
    assert "other processes used 40% of this CPU during the run" in note and "--threads 1" in note


def test_other_cpu_use_leaves_out_this_process(monkeypatch):
    from fused_optim.benchmark import environment

    if environment.OtherCpuUse._sample() is None:
        pytest.skip("no /proc/stat here")
    samples = iter([(100.0, 500.0, 20.0), (110.0, 515.0, 28.0)])  # (time, machine busy s, own CPU s)
    monkeypatch.setattr(environment.OtherCpuUse, "_sample", staticmethod(lambda: next(samples)))
    monkeypatch.setattr(environment, "usable_cores", lambda: 2)
    usage = environment.OtherCpuUse()
    # 15 s busy on the machine, 8 of them this process's, over 10 s x 2 cores
    assert usage.share() == pytest.approx(7 / 20)
