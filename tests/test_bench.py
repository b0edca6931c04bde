import io
import json
import re

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from optimize import backends
from optimize.backends import BackendSpec, CpuBackend, ModelSources, RssPeakSampler
from optimize.bench import (
    P99_MIN_RUNS,
    BenchReport,
    bench_from_sources,
    bench_warnings,
    measure_backend,
    spread_warning,
    summarize,
)
from optimize.cli import bench as bench_cli
from optimize.errors import MoptError


class CountingBackend(CpuBackend):
    backend = name = "counting"

    def __init__(self):
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        return np.zeros((batch.shape[0], 1, *batch.shape[2:]), np.float32)


class ScriptedBackend(CpuBackend):
    """Reports the timings it is given instead of timing anything: spreads and warnings without a clock."""

    backend = "scripted"

    def __init__(self, name: str = "scripted-cpu-fp32", times: list[float] | None = None, compile_s: float = None):
        self.name, self.times = name, times or [10.0] * 20
        if compile_s is not None:
            self.compile_s = {}
            self._compile = compile_s

    def infer(self, batch):
        return np.zeros((batch.shape[0], 1, *batch.shape[2:]), np.float32)

    def time_inference(self, batch, warmup, iterations):
        if hasattr(self, "_compile"):
            self.compile_s[tuple(batch.shape)] = self._compile
        return list(self.times)


def scripted_spec(name: str, *backend_names: str, times=None, fails: str | None = None, reason=None) -> BackendSpec:
    """A registry entry that makes one ScriptedBackend per name (or fails to start with ``fails``)."""

    def create(sources):
        if fails:
            raise MoptError(fails)
        for backend_name in backend_names:
            yield ScriptedBackend(backend_name, times)

    return BackendSpec(name, "test double", create, lambda s: reason, count=lambda s: max(1, len(backend_names)))


def test_summarize_percentiles_throughput_and_cost():
    stats = summarize([10.0] * 50 + [20.0] * 50, batch=4, price_per_hour=3.6)
    assert stats["p50_ms"] == pytest.approx(15.0)
    assert stats["p90_ms"] == pytest.approx(20.0)
    assert stats["images_per_s"] == pytest.approx(4 / 0.015)
    # 3.6 USD/h = 0.001 USD/s; 1000 images take 1000 / 266.7 s.
    assert stats["cost_per_1k_images_usd"] == pytest.approx(0.001 * 1000 / (4 / 0.015))
    assert summarize([5.0], 1, None)["cost_per_1k_images_usd"] is None
    with pytest.raises(MoptError):
        summarize([], 1, None)


def test_summarize_records_the_spread_of_the_runs():
    stats = summarize([12.0, 10.0, 31.0, 11.0, 10.5], batch=1, price_per_hour=None)
    assert (stats["min_ms"], stats["p50_ms"], stats["max_ms"]) == (10.0, 11.0, 31.0)
    assert stats["mean_ms"] == pytest.approx(74.5 / 5)


def _scripted(times, name="onnxruntime-cpu-fp32"):
    return measure_backend(ScriptedBackend(name, times), batch=8, height=512, width=512, warmup=0, iterations=1)


def test_a_steady_measurement_gives_no_warning():
    # 100 runs within 10 % of each other: a p99 of its own, and nothing to warn about.
    result = _scripted([100.0 + (i % 10) for i in range(P99_MIN_RUNS)])
    assert (result.min_ms, result.max_ms, result.iterations) == (100.0, 109.0, 100)
    assert spread_warning(result) is None
    assert bench_warnings([result]) == []


def test_a_wide_spread_warns_with_the_runs_range():
    # The numbers: one busy run of 1653 ms among runs of about 320 ms.
    result = _scripted([318.0, 320.0, 1653.0, 322.0, 319.0] * 20)
    warning = spread_warning(result)
    assert warning == (
        "onnxruntime-cpu-fp32 batch 8 512x512: runs spread from 318.0 to 1653.0 ms (p50 320.0); "
        "the machine was busy or throttling: rerun, or raise --iterations"
    )
    assert bench_warnings([result]) == [warning]


def test_a_slow_tenth_of_the_runs_warns_even_without_an_outlier_maximum():
    # max / min 1.4 (under 1.5), but p90 is 1.4x the median: a tenth of the runs and more were held up.
    result = _scripted([100.0] * 80 + [140.0] * 20)
    assert result.max_ms / result.min_ms < 1.5 and result.p90_ms / result.p50_ms > 1.25
    assert "runs spread from 100.0 to 140.0 ms (p50 100.0)" in spread_warning(result)


def test_too_few_runs_for_a_p99_warns_once():
    results = [_scripted([10.0] * 20, name) for name in ("torch-cpu-fp32", "onnxruntime-cpu-fp32")]
    warnings = bench_warnings(results)
    assert len(warnings) == 1
    assert warnings[0].startswith("p99 needs >= 100 timed runs (--iterations); with 20 per measurement")


def test_the_plan_counts_every_backend_that_can_run_and_shrinks_when_one_fails_to_start(monkeypatch):
    monkeypatch.setitem(backends._BACKENDS, "scripted-a", scripted_spec("scripted-a", "a-1", "a-2"))
    monkeypatch.setitem(backends._BACKENDS, "scripted-broken", scripted_spec("scripted-broken", fails="no driver"))
    monkeypatch.setitem(backends._BACKENDS, "scripted-b", scripted_spec("scripted-b", "b-1"))
    monkeypatch.setitem(backends._BACKENDS, "scripted-off", scripted_spec("scripted-off", "off", reason="no GPU"))
    names = ["scripted-a", "scripted-broken", "scripted-off", "scripted-b"]
    steps = []
    report = bench_from_sources(
        ModelSources(), names, [1, 2], [(8, 8)], warmup=0, iterations=1,
        on_step=lambda label, done, total: steps.append((label, done, total)),
    )  # fmt: skip
    # Planned: (a-1, a-2, broken, b-1) x 2 batches = 8; the broken one never starts, so 6 are left.
    assert steps == [
        ("a-1 batch 1 8x8", 0, 8),
        ("a-1 batch 2 8x8", 1, 8),
        ("a-2 batch 1 8x8", 2, 8),
        ("a-2 batch 2 8x8", 3, 8),
        ("b-1 batch 1 8x8", 4, 6),
        ("b-1 batch 2 8x8", 5, 6),
    ]
    assert len(report.results) == 6
    reasons = {s["backend"]: s["reason"] for s in report.skipped}
    assert reasons == {"scripted-off": "no GPU", "scripted-broken": "no driver"}


def test_the_onnx_backends_plan_one_run_per_model(tiny_simplified_onnx):
    sources = ModelSources(onnx=[tiny_simplified_onnx, tiny_simplified_onnx])
    assert backends.backend_spec("onnxruntime").planned(sources) == 2
    assert backends.backend_spec("openvino").planned(sources) == 2
    assert backends.backend_spec("openvino-bf16").planned(sources) == 2  # both FP32 files
    assert backends.backend_spec("torch").planned(sources) == 1


def test_measure_runs_warmup_plus_iterations_and_reports_memory():
    backend = CountingBackend()
    result = measure_backend(backend, batch=2, height=16, width=24, warmup=3, iterations=7)
    assert backend.calls == 10
    assert result.iterations == 7 and result.batch == 2 and (result.height, result.width) == (16, 24)
    assert result.peak_mem_mb is not None and result.peak_mem_mb > 10


def test_measure_records_whether_a_cuda_graph_was_replayed_and_why_not():
    backend = CountingBackend()
    result = measure_backend(backend, batch=1, height=8, width=8, warmup=0, iterations=1)
    assert result.cuda_graph is None and result.note is None  # a backend without graphs says nothing
    backend.graph_used = {(1, 3, 8, 8): False}
    backend.graph_notes = {(1, 3, 8, 8): "CUDA graph capture failed (not capturable); timing plain launches"}
    result = measure_backend(backend, batch=1, height=8, width=8, warmup=0, iterations=1)
    assert result.cuda_graph is False and "timing plain launches" in result.note


def test_rss_sampler_keeps_the_peak_of_the_window(monkeypatch):
    import threading

    # The window is held open until the sampling thread has read through the spike: however slowly the thread
    # is scheduled, the readings it sees are the same.
    spike = iter([100, 100, 300, 200])
    past_the_spike = threading.Event()

    def reading() -> int:
        value = next(spike, None)
        if value is None:
            past_the_spike.set()
            return 150
        return value

    sampler = RssPeakSampler(interval_s=0.0005)
    monkeypatch.setattr(sampler, "_rss", reading)
    with sampler:
        assert past_the_spike.wait(timeout=60), "the sampling thread never ran"
    assert sampler.peak_bytes == 300


def test_rss_sampler_reads_this_process():
    with RssPeakSampler() as sampler:
        pass
    assert sampler.peak_bytes > 10 * 2**20  # a Python process with numpy loaded


def test_bench_from_sources_measures_and_skips(tiny_checkpoint, tiny_simplified_onnx):
    sources = ModelSources(checkpoint=tiny_checkpoint, onnx=[tiny_simplified_onnx], threads=1)
    report = bench_from_sources(sources, ["torch", "onnxruntime"], [1, 2], [(32, 48)], warmup=1, iterations=2)
    assert {(r.name, r.batch) for r in report.results} == {
        ("torch-cpu-fp32", 1),
        ("torch-cpu-fp32", 2),
        ("onnxruntime-cpu-fp32", 1),
        ("onnxruntime-cpu-fp32", 2),
    }
    assert report.machine["cores"] >= 1 and report.machine["threads"] == 1
    missing = bench_from_sources(ModelSources(checkpoint=tiny_checkpoint), ["onnxruntime"], [1], [(32, 32)], 0, 1)
    assert missing.results == [] and "no ONNX" in missing.skipped[0]["reason"]
    with pytest.raises(MoptError, match="unknown backend"):
        bench_from_sources(sources, ["warp-drive"], [1], [(32, 32)])


def test_cli_json_schema(tiny_checkpoint, tiny_simplified_onnx, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        bench_cli.app,
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--onnx",
            str(tiny_simplified_onnx),
            "--batch",
            "1",
            "--size",
            "32x32",
            "--warmup",
            "0",
            "--iterations",
            "2",
            "--threads",
            "1",
            "--price-per-hour",
            "1.5",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    keys = {
        "backend",
        "device",
        "precision",
        "batch",
        "height",
        "width",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "images_per_s",
        "peak_mem_mb",
        "cost_per_1k_images_usd",
        "compile_s",
        "min_ms",
        "max_ms",
        "iterations",
    }
    # The default backends: eager PyTorch, ONNX Runtime and OpenVINO.
    assert [r["backend"] for r in data["results"]] == ["torch", "onnxruntime", "openvino"]
    assert all(keys <= set(r) for r in data["results"]) and all(r["compile_s"] is None for r in data["results"])
    assert all(r["cost_per_1k_images_usd"] > 0 for r in data["results"])
    assert {"cpu", "cores", "threads", "torch", "onnxruntime", "openvino", "date"} <= set(data["machine"])
    assert all(r["min_ms"] <= r["p50_ms"] <= r["max_ms"] and r["iterations"] == 2 for r in data["results"])
    # Two runs are no p99: the warning is in the JSON, once.
    assert [w for w in data["warnings"] if w.startswith("p99 needs >= 100 timed runs")] == [data["warnings"][0]]
    assert "p99 needs >= 100 timed runs" in result.output


# --- the printed table and the progress -------------------------------------------------------------------------


def _report(price: bool = False, compile_s: bool = False, iterations: int = 20) -> BenchReport:
    """Results with the longest names mopt gives and the widest numbers (seconds per batch, a GPU's 0.5 ms)."""
    shapes = [(1, 1024), (8, 1024), (8, 512)]
    names = ["torch-cpu-fp32", "torch-cpu-fp32-channels-last", "onnxruntime-cpu-fp32", "openvino-cpu-bf16"]
    results = []
    for i, name in enumerate(names):
        for batch, size in shapes:
            p50 = 1653.2 * batch / (i + 1)
            times = [p50 * 0.95, p50, p50 * 1.05] * (iterations // 3) + [p50] * (iterations % 3)
            backend = ScriptedBackend(name, times, compile_s=116.4 if compile_s and "channels" in name else None)
            backend.backend = "torch" if name == "torch-cpu-fp32" else name  # eager PyTorch: the speed-up reference
            result = measure_backend(backend, batch, size, size, 0, 1, 2.5 if price else None)
            result.peak_mem_mb = 1523.4
            results.append(result)
    gpu = measure_backend(ScriptedBackend("tensorrt-fp16", [0.52] * iterations), 8, 1024, 1024, 0, 1)
    gpu.device = "cuda:0 NVIDIA H200"
    results.append(gpu)
    machine = {"cpu": "AMD EPYC 7B13 64-Core Processor", "cores": 16, "threads": 2, "gpu": "NVIDIA H200"}
    report = BenchReport(machine=machine, results=results, skipped=[{"backend": "openvino", "reason": "x"}])
    report.warnings = bench_warnings(results)
    return report


def _printed(report: BenchReport, wide: bool = False, width: int = 80) -> str:
    out = Console(width=width, record=True, file=io.StringIO())
    bench_cli.print_bench(report, wide=wide, out=out)
    return out.export_text()


@pytest.mark.parametrize("price,compile_s,iterations", [(False, False, 20), (True, True, 20), (True, True, 100)])
def test_the_table_fits_80_columns_without_cutting_a_value(price, compile_s, iterations):
    text = _printed(_report(price, compile_s, iterations))
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    lines = text.splitlines()
    header = next(line for line in lines if "backend" in line)
    assert re.findall(r"\S+", header)[:5] == ["backend", "batch", "size", "min", "p50"]
    # Only the columns some result has a value in: $/1k with a price, the compile time when a backend compiled.
    assert ("$/1k" in header) == price and ("comp s" in header) == compile_s
    assert ("p99" in header) == (iterations >= P99_MIN_RUNS)
    # Every number is there in full; names longer than their column fold after a hyphen onto the next line.
    assert re.search(r"^ onnxruntime-(cpu-)?(fp32)? +1 1024x1024 +524 +551 ", text, re.M)
    assert re.search(r"^ torch-cpu-(fp32-)? +8 +512x512 +6282 +6613 ", text, re.M)
    assert re.search(r"^ channels-last +$", text, re.M)
    assert re.search(r"^ tensorrt-fp16 +8 1024x1024 +0\.52 +0\.52 ", text, re.M)  # a GPU's sub-millisecond batch
    assert f"ms per batch of images over {iterations} timed runs" in " ".join(text.split())


def test_the_legend_says_what_the_short_headers_mean():
    text = " ".join(_printed(_report(price=True, compile_s=True)).split())
    assert "min/p50/max: ms per batch of images over 20 timed runs" in text
    assert "$/1k: USD per 1000 images" in text and "comp s: the first call (compiling), not timed" in text
    assert "MB: peak memory" in text


def test_wide_gives_every_column_uncut_and_marks_a_p99_of_too_few_runs():
    # In an 80-column window too: --wide is asked for to see every value, so the table keeps its own width.
    text = _printed(_report(price=True, compile_s=True), wide=True, width=80)
    header = next(line for line in text.splitlines() if "backend" in line)
    for column in ("device", "prec", "runs", "min ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "img/s",
                   "peak MB", "$/1k img", "compile s"):  # fmt: skip
        assert column in header, column
    row = next(line for line in text.splitlines() if "tensorrt-fp16" in line)
    assert "cuda:0 NVIDIA H200" in row and re.search(r"│\s+-\s+│\s+0\.52 │", row)  # p99 "-", then max
    assert "…" not in text
    assert re.search(r"│ torch-cpu-fp32-channels-last │ cpu +│ fp32 │ +1 │ 1024x1024 │ +20 │ +785\.3 │", text)
    assert "│   0.5740 │     116.4 │" in text
    full = _printed(_report(iterations=100), wide=True, width=200)
    assert not re.search(r"│\s+-\s+│\s+0\.52 │", next(line for line in full.splitlines() if "tensorrt-fp16" in line))


def test_the_printout_carries_the_warnings_and_the_speed_ups():
    report = _report()
    report.results[0].max_ms = report.results[0].min_ms * 3  # torch batch 1: one run three times the fastest
    report.warnings = bench_warnings(report.results)
    text = " ".join(_printed(report).split())
    assert "warning: p99 needs >= 100 timed runs (--iterations)" in text
    assert "warning: torch-cpu-fp32 batch 1 1024x1024: runs spread from 1570.5 to 4711.6 ms" in text
    assert "onnxruntime-cpu-fp32 batch 8 1024x1024: 3.00x vs torch fp32 (cpu)" in text


def test_fold_name_breaks_after_hyphens_and_cuts_a_part_too_long():
    assert bench_cli.fold_name("torch-cpu-fp32-channels-last", 22) == "torch-cpu-fp32-\nchannels-last"
    assert bench_cli.fold_name("onnxruntime-cpu-fp32", 22) == "onnxruntime-cpu-fp32"
    assert bench_cli.fold_name("onnxruntime-cpu-fp32", 8) == "onnxrunt\nime-cpu-\nfp32"
    assert all(len(line) <= 5 for line in bench_cli.fold_name("tensorrt-fp16", 5).splitlines())


def test_the_cli_off_a_terminal_prints_one_progress_line_per_measurement(tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(backends._BACKENDS, "scripted-a", scripted_spec("scripted-a", "a-cpu-fp32"))
    monkeypatch.setitem(backends._BACKENDS, "scripted-b", scripted_spec("scripted-b", "b-cpu-fp32"))
    args = ["--checkpoint", str(tiny_checkpoint), "--backend", "scripted-a,scripted-b", "--batch", "1,4"]
    result = CliRunner().invoke(bench_cli.app, [*args, "--size", "32x32,64x64", "--iterations", "1"])
    assert result.exit_code == 0, result.output
    progress = [line for line in result.output.splitlines() if line.startswith("[")]
    assert progress == [
        f"[{i + 1}/8] {name} batch {batch} {size}"
        for i, (name, batch, size) in enumerate(
            (name, batch, size)
            for name in ("a-cpu-fp32", "b-cpu-fp32")
            for batch in (1, 4)
            for size in ("32x32", "64x64")
        )
    ]
    assert result.output.index("[8/8]") < result.output.index("backend")  # progress first, then the table


def test_the_cli_wide_option_prints_the_wide_table(tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(backends._BACKENDS, "scripted-a", scripted_spec("scripted-a", "a-cpu-fp32"))
    args = ["--checkpoint", str(tiny_checkpoint), "--backend", "scripted-a", "--batch", "1", "--size", "32x32"]
    compact = CliRunner().invoke(bench_cli.app, args)
    wide = CliRunner().invoke(bench_cli.app, [*args, "--wide"])
    assert compact.exit_code == 0 and wide.exit_code == 0, (compact.output, wide.output)
    assert "p90 ms" in wide.output and "device" in wide.output
    assert "p90" not in compact.output and "device" not in compact.output


def test_on_a_terminal_the_progress_is_a_bar_counting_done_of_planned(monkeypatch):
    from optimize.cli import common

    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(force_terminal=True, width=100, file=screen))
    with common.step_progress("bench") as step:
        step("onnxruntime-cpu-fp32 batch 8 512x512", 2, 12)
    # Leaving the bar draws it a last time before erasing it (transient): that frame has the label and 2/12.
    frames = Text.from_ansi(screen.getvalue()).plain
    assert "onnxruntime-cpu-fp32 batch 8 512x512" in frames and " 2/12" in frames
    assert not re.search(r"^\[\d+/\d+\]", frames, re.M)  # no plain progress lines on a terminal
