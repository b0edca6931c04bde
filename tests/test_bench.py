import json

import numpy as np
import pytest
from typer.testing import CliRunner

from optimize.backends import CpuBackend, ModelSources, RssPeakSampler
from optimize.bench import bench_from_sources, measure_backend, summarize
from optimize.cli import bench as bench_cli
from optimize.errors import MoptError


class CountingBackend(CpuBackend):
    backend = name = "counting"

    def __init__(self):
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        return np.zeros((batch.shape[0], 1, *batch.shape[2:]), np.float32)


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
    }
    # The default backends: eager PyTorch, ONNX Runtime and OpenVINO.
    assert [r["backend"] for r in data["results"]] == ["torch", "onnxruntime", "openvino"]
    assert all(keys <= set(r) for r in data["results"]) and all(r["compile_s"] is None for r in data["results"])
    assert all(r["cost_per_1k_images_usd"] > 0 for r in data["results"])
    assert {"cpu", "cores", "threads", "torch", "onnxruntime", "openvino", "date"} <= set(data["machine"])
