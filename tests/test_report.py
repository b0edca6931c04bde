"""The report folder: Markdown content, speed-up arithmetic, the chart, and refusing malformed input."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from optimize.errors import MoptError
from optimize.report import latency_chart_png, markdown_report, speedups, write_report

GPU = "cuda:0 NVIDIA H100"


def _result(backend: str, device: str, precision: str, batch: int, size: int, p50: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "device": device,
        "precision": precision,
        "batch": batch,
        "height": size,
        "width": size,
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "p99_ms": p50 * 1.5,
        "images_per_s": batch * 1000.0 / p50,
        "peak_mem_mb": 300.0,
        "cost_per_1k_images_usd": None,
    }


@pytest.fixture
def bench() -> dict[str, Any]:
    return {
        "machine": {"cpu": "2 cores"},
        "results": [
            _result("torch", "cpu", "fp32", 1, 256, 40.0),
            _result("onnxruntime", "cpu", "fp32", 1, 256, 20.0),
            _result("tensorrt", GPU, "fp16", 1, 256, 0.5),
            _result("torch", "cpu", "fp32", 8, 256, 240.0),
            _result("onnxruntime", "cpu", "fp32", 8, 256, 160.0),
            _result("tensorrt", GPU, "fp16", 8, 256, 2.0),
            _result("torch", "cpu", "fp32", 1, 512, 160.0),
            _result("onnxruntime", "cpu", "fp32", 1, 512, 100.0),
        ],
    }


@pytest.fixture
def compare() -> dict[str, Any]:
    def candidate(name: str, precision: str, passed: bool, atol: float, max_abs: float) -> dict[str, Any]:
        return {
            "name": name,
            "precision": precision,
            "passed": passed,
            "atol": atol,
            "rtol": atol * 10,
            "max_abs": max_abs,
            "mean_abs": max_abs / 10,
            "mad": max_abs / 10,
            "mse": max_abs**2 / 100,
            "sad": 0.5,
            "grad": 0.01,
            "conn": 0.2,
            "seconds": 1.0,  # extra fields are allowed
        }

    return {
        "passed": False,
        "reference": "torch-cpu-fp32",
        "candidates": [
            candidate("onnxruntime-cpu-fp32", "fp32", True, 1e-4, 2e-6),
            candidate("tensorrt-fp16", "fp16", False, 3e-3, 0.02),
        ],
    }


@pytest.fixture
def stages() -> list[dict[str, Any]]:
    return [
        {"name": "export", "status": "ok", "detail": "opset 17", "seconds": 2.5, "artifact": "engines/m.onnx"},
        {"name": "simplify", "status": "ok", "detail": "", "seconds": 1.0, "artifact": "engines/m.sim.onnx"},
        {
            "name": "engine",
            "status": "skipped",
            "detail": "TensorRT is not installed | pip install 'mopt[tensorrt]'",
            "seconds": None,
            "artifact": None,
        },
        {"name": "compare", "status": "failed", "detail": "tensorrt-fp16 over tolerance", "seconds": 4.0},
    ]


MACHINE = {"host": "ci-runner", "cpu": "2 cores", "gpu": None}


def _row(markdown: str, first_cell: str) -> str:
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]
    assert rows, f"no table row starts with {first_cell!r}"
    return rows[0]


def test_write_report_writes_summary_and_a_valid_png(tmp_path: Path, compare, bench, stages) -> None:
    report_dir = tmp_path / "reports" / "latest"
    path = write_report(report_dir, compare=compare, bench=bench, stages=stages, machine=MACHINE)
    assert path == report_dir / "summary.md"
    assert sorted(p.name for p in report_dir.iterdir()) == ["latency.png", "summary.md"]  # no temp files left
    with Image.open(report_dir / "latency.png") as image:
        assert image.format == "PNG"
        image.verify()
        width, height = image.size
    assert width > 600 and height > 400
    markdown = path.read_text()
    assert "![p50 latency and throughput per backend](latency.png)" in markdown
    assert "ci-runner" in markdown


def test_markdown_names_every_backend_stage_and_candidate(compare, bench, stages) -> None:
    markdown = markdown_report({"machine": MACHINE, "stages": stages, "compare": compare, "bench": bench})
    for backend in ("torch", "onnxruntime", "tensorrt"):
        assert f"| {backend} |" in markdown
    assert GPU in markdown
    for stage in stages:
        assert f"| {stage['name']} |" in markdown
    for candidate in compare["candidates"]:
        assert candidate["name"] in markdown
    assert "**Failed stages: compare.**" in markdown
    assert "Overall: **FAILED**" in markdown


def test_skipped_stage_shows_its_reason_in_its_row(stages) -> None:
    markdown = markdown_report({"machine": {}, "stages": stages, "compare": None, "bench": None})
    row = _row(markdown, "engine")
    assert "skipped" in row
    # The pipe inside the reason is escaped, so it stays one cell instead of breaking the table.
    assert "TensorRT is not installed \\| pip install 'mopt[tensorrt]'" in row
    assert row.count(" | ") == _row(markdown, "export").count(" | ")
    assert "**FAILED**" in _row(markdown, "compare")
    assert "Not run" in markdown.split("## Accuracy")[1]
    assert "Not run" in markdown.split("## Speed")[1]


def test_compare_table_states_tolerances_and_verdicts(compare, bench, stages) -> None:
    markdown = markdown_report({"machine": {}, "stages": stages, "compare": compare, "bench": bench})
    fp32 = _row(markdown, "onnxruntime-cpu-fp32")
    fp16 = _row(markdown, "tensorrt-fp16")
    assert "| 0.0001 | 0.001 |" in fp32 and fp32.rstrip().endswith("| pass |")
    assert "| 0.003 | 0.03 |" in fp16 and fp16.rstrip().endswith("| **FAIL** |")
    # max |diff| 2e-6 is within one 8-bit alpha step; 0.02 is five steps.
    cells = [c.strip() for c in fp32.split(" | ")]
    assert cells[6] == "yes"
    assert [c.strip() for c in fp16.split(" | ")][6] == "no"
    # MAD is printed x1e3: 0.002 -> 2.
    assert [c.strip() for c in fp16.split(" | ")][7] == "2"


def test_compare_section_says_what_the_verdicts_were_reached_on(compare, bench, stages) -> None:
    judged = {**compare, "inputs": {"images": "engines/photos", "count": 3, "size": "256x256"}}
    markdown = markdown_report({"machine": {}, "stages": stages, "compare": judged, "bench": bench})
    assert "Judged on: engines/photos (3 images at 256x256)." in markdown
    unrecorded = markdown_report({"machine": {}, "stages": stages, "compare": compare, "bench": bench})
    assert "Judged on: " in unrecorded


def test_speedups_are_reference_p50_over_p50_at_the_same_batch_and_size(bench) -> None:
    ratios = speedups(bench["results"])
    by_key = {(r["backend"], r["batch"], r["height"]): ratio for r, ratio in zip(bench["results"], ratios, strict=True)}
    assert by_key[("torch", 1, 256)]["speedup_p50"] == pytest.approx(1.0)
    assert by_key[("onnxruntime", 1, 256)]["speedup_p50"] == pytest.approx(40.0 / 20.0)
    assert by_key[("tensorrt", 1, 256)]["speedup_p50"] == pytest.approx(40.0 / 0.5)
    assert by_key[("onnxruntime", 8, 256)]["speedup_p50"] == pytest.approx(240.0 / 160.0)
    assert by_key[("tensorrt", 8, 256)]["speedup_p50"] == pytest.approx(240.0 / 2.0)
    assert by_key[("onnxruntime", 1, 512)]["speedup_p50"] == pytest.approx(160.0 / 100.0)
    # images/s = batch * 1000 / p50 here, so the throughput ratio equals the latency ratio.
    assert by_key[("tensorrt", 8, 256)]["throughput_ratio"] == pytest.approx(120.0)
    assert by_key[("tensorrt", 8, 256)]["reference"] == "torch fp32 (cpu)"


def test_speedups_appear_in_the_bench_table(compare, bench, stages) -> None:
    markdown = markdown_report({"machine": {}, "stages": stages, "compare": compare, "bench": bench})
    bench_part = markdown.split("## Speed")[1]
    rows = [line for line in bench_part.splitlines() if line.startswith("| onnxruntime |")]
    assert any("| 8 | 256x256 |" in row and "| 1.50× | 1.50× |" in row for row in rows)
    assert any("| 1 | 512x512 |" in row and "| 1.60× |" in row for row in rows)
    assert "`torch fp32 (cpu)`" in bench_part


def test_reference_prefers_torch_on_cpu_and_falls_back_to_eager_fp32_elsewhere() -> None:
    results = [
        _result("torch", GPU, "fp32", 1, 64, 2.0),
        _result("torch", "cpu", "fp32", 1, 64, 50.0),
        _result("tensorrt", GPU, "fp16", 1, 64, 1.0),
        _result("torch", GPU, "fp32", 4, 64, 4.0),
        _result("tensorrt", GPU, "fp16", 4, 64, 1.0),
        _result("tensorrt", GPU, "fp16", 2, 64, 1.0),  # no eager result at batch 2
    ]
    ratios = speedups(results)
    assert ratios[2]["speedup_p50"] == pytest.approx(50.0)  # against torch cpu, not torch cuda
    assert ratios[4]["speedup_p50"] == pytest.approx(4.0)  # only torch on the GPU ran at batch 4
    assert ratios[4]["reference"] == f"torch fp32 ({GPU})"
    assert ratios[5] == {"reference": None, "speedup_p50": None, "throughput_ratio": None}


def test_no_reference_in_the_run_says_so() -> None:
    bench = {"results": [_result("onnxruntime", "cpu", "fp32", 1, 64, 5.0)]}
    markdown = markdown_report({"stages": [], "bench": bench})
    assert "no speed-ups are given" in markdown
    assert _row(markdown, "onnxruntime").rstrip().endswith("| — | — |")


def test_chart_without_results_still_renders(tmp_path: Path, stages) -> None:
    stages = [*stages, {"name": "bench", "status": "skipped", "detail": "no GPU", "seconds": None, "artifact": None}]
    write_report(tmp_path, compare=None, bench=None, stages=stages, machine={})
    with Image.open(tmp_path / "latency.png") as image:
        assert image.format == "PNG"
    png = latency_chart_png({"results": []}, note="bench skipped")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_bench_table_shows_the_spread_and_a_p99_only_from_enough_runs(bench) -> None:
    bench["results"][1].update(iterations=20, min_ms=18.5, max_ms=31.25)  # onnxruntime batch 1 256x256
    bench["results"][2].update(iterations=100, min_ms=0.45, max_ms=0.61)  # tensorrt batch 1 256x256
    bench["warnings"] = ["p99 needs >= 100 timed runs (--iterations); with 20 per measurement it ..."]
    markdown = markdown_report({"stages": [], "bench": bench})
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| backend | precision | device |"))
    assert "| runs | min ms | p50 ms | p90 ms | p99 ms | max ms |" in header
    ort = next(line for line in lines if line.startswith("| onnxruntime |") and "| 1 | 256x256 |" in line)
    assert "| 20 | 18.50 | 20.00 | 24.00 | — | 31.25 |" in ort  # 20 runs: no p99
    trt = next(line for line in lines if line.startswith("| tensorrt |") and "| 1 | 256x256 |" in line)
    assert "| 100 | 0.45 | 0.50 | 0.60 | 0.75 | 0.61 |" in trt
    # A result from a bench JSON without the spread keeps its p99 and shows the missing values as such.
    torch = next(line for line in lines if line.startswith("| torch |") and "| 1 | 256x256 |" in line)
    assert "| — | — | 40.00 | 48.00 | 60.00 | — |" in torch
    assert "Warnings:\n\n- p99 needs >= 100 timed runs (--iterations)" in markdown
    assert "p99 is shown from 100 runs on" in markdown


def _break(data: Any, path: list[Any], value: Any) -> Any:
    """A deep copy of ``data`` with the item at ``path`` replaced by ``value`` (or deleted)."""
    broken = copy.deepcopy(data)
    target = broken
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return broken


_DELETE = object()


@pytest.mark.parametrize(
    ("part", "path", "value", "message"),
    [
        ("stages", [2, "status"], "done", r"stages\[2\]\.status"),
        ("stages", [0, "name"], _DELETE, r"stages\[0\] lacks 'name'"),
        ("stages", [0, "seconds"], "fast", r"stages\[0\]\.seconds"),
        ("compare", ["candidates", 1, "atol"], _DELETE, r"compare\.candidates\[1\] lacks 'atol'"),
        ("compare", ["passed"], "yes", r"compare\.passed"),
        ("bench", ["results", 3, "p50_ms"], -1.0, r"bench\.results\[3\]\.p50_ms"),
        ("bench", ["results", 0, "batch"], True, r"bench\.results\[0\]\.batch"),
        ("bench", ["results"], "none", r"bench\.results must be a list"),
        ("bench", ["results", 1, "iterations"], 0, r"bench\.results\[1\]\.iterations"),
        ("bench", ["results", 1, "max_ms"], "slow", r"bench\.results\[1\]\.max_ms"),
        ("bench", ["warnings"], "busy", r"bench\.warnings must be a list of strings"),
    ],
)
def test_invalid_input_raises_and_writes_nothing(
    tmp_path: Path, compare, bench, stages, part: str, path: list[Any], value: Any, message: str
) -> None:
    inputs = {"compare": compare, "bench": bench, "stages": stages}
    inputs[part] = _break(inputs[part], path, value)
    report_dir = tmp_path / "report"
    with pytest.raises(MoptError, match=message):
        write_report(report_dir, machine=MACHINE, **inputs)
    assert not report_dir.exists()


def test_invalid_input_leaves_an_earlier_report_untouched(tmp_path: Path, stages) -> None:
    (tmp_path / "summary.md").write_text("previous report\n")
    with pytest.raises(MoptError, match="machine"):
        write_report(tmp_path, compare=None, bench=None, stages=stages, machine=["not", "a", "dict"])  # type: ignore[arg-type]
    assert (tmp_path / "summary.md").read_text() == "previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]
