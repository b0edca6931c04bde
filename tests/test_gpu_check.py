"""``make gpu-check``: the no-GPU path (one line, exit 2, fast) and the parts that need no GPU: the bandwidth
arithmetic, the activation traffic count (meta tensors), the report files, carried wheels, test selection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from optimize import gpu_check

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = gpu_check.no_gpu_reason() is not None
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="checks what a machine without a GPU answers")


@needs_no_gpu
def test_make_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    start = time.monotonic()
    done = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", f"GPU_CHECK_OUT={tmp_path / 'out'}",
         f"GPU_PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert time.monotonic() - start < 10
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert ours == [ours[0]] and ours[0].startswith("gpu-check: no NVIDIA GPU") and done.stdout == ""
    assert not (tmp_path / "out").exists()


@needs_no_gpu
def test_main_without_a_gpu_returns_2(capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main(["--out", "unused"]) == gpu_check.EXIT_NO_GPU
    assert capsys.readouterr().err.count("\n") == 1


def test_no_gpu_reason_without_a_driver_does_not_need_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(gpu_check.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(gpu_check.Path, "exists", lambda self: False)
    monkeypatch.setitem(sys.modules, "torch", None)  # importing it would fail: it must not be needed
    assert "no NVIDIA GPU or driver" in gpu_check.no_gpu_reason()


def test_no_gpu_reason_with_a_driver_asks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "is a CPU build" in gpu_check.no_gpu_reason()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no CUDA GPU" in gpu_check.no_gpu_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.no_gpu_reason() is None


# --- the bandwidth floor --------------------------------------------------------------------------------------


def test_copy_rate_and_floor_arithmetic() -> None:
    # 1 GiB copied in 0.5 ms moves 2 GiB (read + write): 4.29e12 B/s, about what an H200 shows.
    rate = gpu_check.copy_rate(1 << 30, 0.5e-3)
    assert rate == pytest.approx(2 * (1 << 30) / 0.5e-3)
    assert gpu_check.floor_ms(int(rate), rate) == pytest.approx(1000.0)
    assert gpu_check.floor_ms(4_000_000_000, 4e12) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        gpu_check.floor_ms(1, 0)
    with pytest.raises(ValueError):
        gpu_check.copy_rate(1, 0.0)


class ConvBnAct(nn.Module):
    """conv (materialized) -> BN, ReLU (fused) -> conv -> sigmoid (fused); a view on the way (no memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv1(x)))  # N x 8 x H x W
        y = torch.cat([y, y], dim=1).view(x.shape[0], 16, x.shape[2], x.shape[3])  # cat: written in place
        return torch.sigmoid(self.conv2(y))  # N x 1 x H x W


def test_activation_traffic_counts_what_a_fused_engine_writes() -> None:
    model = ConvBnAct()
    t = gpu_check.activation_traffic(model, (2, 3, 16, 16))
    pixels = 2 * 16 * 16
    assert t.input_bytes == pixels * 3 * 4 and t.output_bytes == pixels * 1 * 4
    assert t.weight_bytes == sum(p.numel() * 4 for p in model.parameters())
    # conv1's 8 channels and conv2's 1 channel are written; BN, ReLU, cat, view and sigmoid are not.
    assert t.materialized_bytes == pixels * (8 + 1) * 4
    # Eager PyTorch writes BN, ReLU, cat and sigmoid outputs too (BN's saved statistics are small extras).
    assert t.eager_bytes >= pixels * (8 + 8 + 8 + 16 + 1 + 1) * 4
    assert t.floor_bytes == t.input_bytes + t.weight_bytes + 2 * t.materialized_bytes - t.output_bytes
    assert t.eager_traffic_bytes > t.floor_bytes
    half = gpu_check.activation_traffic(model, (2, 3, 16, 16), torch.float16)
    assert half.materialized_bytes * 2 == t.materialized_bytes
    assert next(model.parameters()).device.type == "cpu"  # counted on a copy


def test_activation_traffic_of_the_bundled_model_scales_with_the_batch(tiny_checkpoint: Path) -> None:
    from optimize.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_checkpoint).model
    one = gpu_check.activation_traffic(model, (1, 3, 64, 64))
    four = gpu_check.activation_traffic(model, (4, 3, 64, 64))
    assert four.materialized_bytes == 4 * one.materialized_bytes > 0
    assert four.weight_bytes == one.weight_bytes


def test_bandwidth_rows_and_floors_beside_measurements() -> None:
    traffic = {("fp16", 8): gpu_check.Traffic(10, 4, 6, 1000, 3000), ("fp32", 1): gpu_check.Traffic(1, 1, 0, 0, 0)}
    rows = gpu_check.bandwidth_rows(traffic, 1e6)
    assert [(r["precision"], r["batch"]) for r in rows] == [("fp16", 8), ("fp32", 1)]
    assert rows[0]["floor_bytes"] == 10 + 6 + 2000 - 4 and rows[0]["floor_ms"] == pytest.approx(2.012)
    results = [{"precision": "fp16", "batch": 8, "p50_ms": 4.024}, {"precision": "int8", "batch": 8, "p50_ms": 1}]
    gpu_check.attach_floors(results, rows)
    assert results[0]["x_floor"] == pytest.approx(2.0) and "floor_ms" not in results[1]


# --- the report -----------------------------------------------------------------------------------------------

REPORT = {
    "date": "2026-12-01 10:00 UTC",
    "mopt_version": "0.1.0",
    "machine": {"gpu_name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.159.04", "cuda": "13.0",
                "torch": "2.11.0+cu130", "tensorrt": None},
    "steps": [
        {"name": "bench", "status": "passed", "seconds": 12.5, "detail": "6 measurements"},
        {"name": "compare", "status": "skipped", "seconds": 0.0, "detail": "polygraphy is not installed | carry it"},
    ],
    "bench": {
        "results": [{"name": "torch-cuda-fp16", "precision": "fp16", "batch": 8, "p50_ms": 4.0, "p90_ms": 4.2,
                     "images_per_s": 2000.0, "peak_mem_mb": 900.0, "cuda_graph": True, "floor_ms": 1.0,
                     "x_floor": 4.0}],
        "skipped": [{"backend": "tensorrt", "reason": "TensorRT not installed"}],
    },
    "bandwidth": {"copy_gb_per_s": 4300.0, "rows": gpu_check.bandwidth_rows(
        {("fp16", 8): gpu_check.Traffic(50_331_648, 16_777_216, 6_000_000, 3_000_000_000, 9_000_000_000)}, 4.3e12)},
    "compare": {"reference": "torch-cpu-fp32", "candidates": [
        {"name": "torch-cuda-fp16", "passed": True, "failures": [], "max_abs": 1e-3, "mad": 1e-5}]},
    "tests": {"command": "pytest -m gpu or tensorrt", "summary": "3 passed, 1 skipped in 20.1s"},
}


def test_reports_are_named_after_the_device_and_hold_the_results(tmp_path: Path) -> None:
    json_path, md_path = gpu_check.write_reports(REPORT, tmp_path / "out")
    assert (json_path.name, md_path.name) == ("gpu-check-nvidia-h200.json", "gpu-check-nvidia-h200.md")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(REPORT))
    text = md_path.read_text()
    assert text.startswith("# mopt gpu-check: NVIDIA H200\n")
    assert "| torch-cuda-fp16 | fp16 | 8 | 4.00 | 4.20 | 2000.0 | 900 | replayed | 1.00 | 4.0 |" in text
    assert "| compare | skipped | 0.0 | polygraphy is not installed \\| carry it |" in text
    assert "Skipped tensorrt: TensorRT not installed" in text
    assert "copy rate 4300 GB/s" in text and "| fp16 | 8 | 3000 |" in text
    assert "| torch-cuda-fp16 | pass |" in text and "3 passed, 1 skipped" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [json_path.name, md_path.name]


def test_device_slug() -> None:
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_check.device_slug(None) == "unknown-gpu" and gpu_check.device_slug("???") == "unknown-gpu"


# --- carried wheels and the test selection -----------------------------------------------------------------------


def test_only_wheels_of_missing_modules_are_installed(tmp_path: Path) -> None:
    for name in ("pillow-13.0.0-cp312-cp312-manylinux_2_28_x86_64.whl", "polygraphy-0.53.6-py3-none-any.whl",
                 "not_a_real_module_xyz-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert gpu_check.wheel_module(tmp_path / "pillow-13.0.0-cp312-cp312-manylinux_2_28_x86_64.whl") == "PIL"
    assert [w.name for w in gpu_check.missing_wheels(tmp_path)] == ["not_a_real_module_xyz-1.0-py3-none-any.whl"]
    gpu_check.install_wheels([], tmp_path / "site")  # nothing to install: nothing happens
    assert not (tmp_path / "site").exists()


def test_the_gpu_tests_are_the_marked_files() -> None:
    files = [p.name for p in gpu_check.gpu_test_files(ROOT / "tests")]
    assert "test_gpu_backends.py" in files and "test_gpu_check.py" not in files and "test_deploy.py" not in files


def test_a_failing_step_is_recorded_and_the_rest_still_run(tmp_path: Path) -> None:
    check = gpu_check.Check(out=tmp_path, checkpoint=tmp_path / "c.pth", workdir=tmp_path)

    def fails() -> str:
        raise RuntimeError("the device fell over\nwith details")

    def skips() -> str:
        raise gpu_check.Skip("TensorRT not installed")

    check.run("a", fails)
    check.run("b", skips)
    check.run("c", lambda: "fine")
    assert [(s.name, s.status, s.detail) for s in check.steps] == [
        ("a", "failed", "RuntimeError: the device fell over"),
        ("b", "skipped", "TensorRT not installed"),
        ("c", "passed", "fine"),
    ]
    assert "Traceback" in check.report["tracebacks"]["a"]


def test_the_engine_step_builds_fp16_where_tensorrt_imports(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trt_standin import make_tensorrt

    from optimize import engine as engine_mod
    from optimize.engine import MachineInfo

    real_find_spec = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec",
                        lambda name, *a: None if name == "modelopt" else real_find_spec(name, *a))
    check = gpu_check.Check(out=tmp_path, checkpoint=tiny_checkpoint, workdir=tmp_path)
    for version, status in (("11.4.0", "skipped"), ("10.13.3.9", "passed")):
        monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version))
        machine = MachineInfo(gpu=True, gpu_name="NVIDIA H200", compute_capability="9.0", tensorrt=version)
        monkeypatch.setattr(engine_mod, "gpu_environment", lambda machine=machine: machine)
        check.run(f"engine {version}", lambda: gpu_check._engine(check))
        assert check.steps[-1].status == status, check.steps[-1].detail
    assert "needs ModelOpt" in check.steps[0].detail
    assert check.steps[1].detail.startswith("TensorRT 10.13.3.9, route builder-flag")
    sidecar = json.loads(check.engine.with_suffix(".json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["profiles"] == [
        {"min": [1, 3, 1024, 1024], "opt": [8, 3, 1024, 1024], "max": [8, 3, 1024, 1024]}
    ]
