import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_compare import altered_copy
from typer.testing import CliRunner

from architectures import create_model
from optimize.checkpoint import save_checkpoint
from optimize.cli.main import app as mopt_app
from optimize.errors import MoptError
from optimize.pipeline import PipelineSettings, run_pipeline

REPO = Path(__file__).resolve().parents[1]
MOPT = [sys.executable, "-m", "optimize.cli.main"]
# The pipeline command `make compare` runs, at sizes that keep it to seconds on cvunet-tiny.
FAST = ["--size", "64x48", "--bench-batch", "1", "--bench-size", "32x32", "--iterations", "1", "--threads", "1"]


def _settings(checkpoint, tmp_path):
    return PipelineSettings(
        checkpoint=checkpoint,
        report_dir=tmp_path / "report",
        engines_dir=tmp_path / "engines",
        size=(64, 48),
        compare_batch=2,
        compare_count=2,
        bench_batches=(1,),
        bench_sizes=((32, 32),),
        warmup=0,
        iterations=1,
        threads=1,
        calibration_synthetic=4,
    )


@pytest.mark.slow
def test_pipeline_runs_every_stage_and_writes_the_report(tiny_checkpoint, tmp_path):
    seen, steps = [], []
    state = run_pipeline(
        _settings(tiny_checkpoint, tmp_path),
        on_stage=lambda s: seen.append((s.name, s.status)),
        on_step=lambda label, done, total: steps.append((label, done, total)),
    )
    stages = {s.name: s for s in state.stages}
    assert list(stages) == ["checkpoint", "export", "simplify", "fp16", "int8", "tensorrt-engine", "compare", "bench"]
    assert ("export", "pending") in seen and ("export", "ok") in seen
    for name in ("checkpoint", "export", "simplify", "compare", "bench"):
        assert stages[name].status == "ok", (name, stages[name].detail)
    # INT8 is calibrated at the size the pipeline compares at, not the quantizer's 256x256 default.
    assert stages["int8"].status == "ok" and stages["int8"].detail.count("at 64x48") == 1
    cache = json.loads(next((tmp_path / "engines").glob("*.int8.calib.json")).read_text())
    assert cache["calibration"]["size"] == "64x48"
    engine = stages["tensorrt-engine"]
    if engine.status == "skipped":  # every CPU machine
        assert "GPU" in engine.detail or "TensorRT" in engine.detail
    report = tmp_path / "report"
    for name in ("summary.md", "latency.png", "compare.json", "bench.json", "stages.json"):
        assert (report / name).is_file(), name
    compare = json.loads((report / "compare.json").read_text())
    assert compare["reference"] == "torch-cpu-fp32"
    assert any(c["precision"] == "fp32" for c in compare["candidates"])
    summary = (report / "summary.md").read_text()
    assert "tensorrt-engine" in summary and "torch" in summary
    # The bench stage's progress counts every measurement against the plan, torch's first.
    bench = json.loads((report / "bench.json").read_text())
    assert steps[0] == ("torch-cpu-fp32 batch 1 32x32", 0, len(steps))
    assert [done for _, done, _ in steps] == list(range(len(steps))) and steps[-1][2] == len(steps)
    assert len(steps) == len(bench["results"]) + sum("batch" in s for s in bench["skipped"])


def test_failed_stage_is_recorded_and_dependents_skip(tiny_checkpoint, tmp_path, monkeypatch):
    import optimize.simplify

    def broken(*args, **kwargs):
        raise MoptError("onnxsim failed on purpose")

    monkeypatch.setattr(optimize.simplify, "simplified_onnx_from_onnx", broken)
    state = run_pipeline(_settings(tiny_checkpoint, tmp_path))
    stages = {s.name: s for s in state.stages}
    assert stages["simplify"].status == "failed" and "on purpose" in stages["simplify"].detail
    assert stages["fp16"].status == "skipped" and "earlier stage failed" in stages["fp16"].detail
    assert not state.passed
    assert (tmp_path / "report" / "summary.md").is_file()


# --- `make compare`: the command, its exit code on a model out of tolerance --------------------------------------


def test_make_compare_runs_the_pipeline_command_on_the_given_checkpoint(tmp_path):
    """`make compare CHECKPOINT=... REPORT=...` runs `mopt pipeline` with them, and `mopt` is optimize.cli.main."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    checkpoint, report = tmp_path / "model.pth", tmp_path / "report"
    venv = tmp_path / "venv"  # a venv that does not exist: -n lists the setup steps and runs nothing
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), "compare", f"CHECKPOINT={checkpoint}", f"REPORT={report}", f"VENV={venv}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    lines = [line for line in dry.stdout.splitlines() if line.strip() and not line.startswith("make")]
    assert lines[-1] == f"{venv}/bin/mopt pipeline --checkpoint {checkpoint} --report {report}"
    assert not venv.exists() and not report.exists()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mopt"] == "optimize.cli.main:main"


@pytest.fixture(scope="module")
def int8_breaking_checkpoint(tmp_path_factory) -> Path:
    """cvunet-tiny made wrong for INT8 on purpose: one head input channel is always 0 (its BatchNorm bias sends
    it below ReLU6's floor) but has a weight of 1000. FP32 and FP16 compute the same mattes; INT8, which
    quantizes the head's weights per output channel, rounds every other head weight to 0."""
    torch.manual_seed(0)
    model = create_model("cvunet-tiny")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
        model.head.weight.mul_(6.0)  # a matte with contrast, so that a flat INT8 matte is far from it
        model.decoder[-1].bn.bias[0] = -1000.0
        model.head.weight[0, 0] = 1000.0
    return save_checkpoint(model, tmp_path_factory.mktemp("broken") / "broken.pth")


@pytest.mark.slow
def test_the_pipeline_command_exits_1_when_a_model_is_out_of_tolerance(int8_breaking_checkpoint, tmp_path):
    report = tmp_path / "report"
    result = subprocess.run(
        [*MOPT, "pipeline", "--checkpoint", str(int8_breaking_checkpoint), "--report", str(report), *FAST],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout[-3000:], result.stderr[-3000:])
    assert "pipeline failed: int8" in result.stdout
    stages = {s["name"]: s for s in json.loads((report / "stages.json").read_text())}
    assert stages["int8"]["status"] == "failed"
    int8 = stages["int8"]["detail"]
    assert "INT8 mattes differ from FP32 by MAD" in int8 and "budget 1e-02" in int8
    for name in ("checkpoint", "export", "simplify", "fp16", "compare", "bench"):
        assert stages[name]["status"] == "ok", (name, stages[name]["detail"])
    assert not list((tmp_path / "engines").glob("*.int8.onnx"))  # the failed model was not written
    assert "int8" in (report / "summary.md").read_text()


@pytest.mark.slow
def test_the_pipeline_command_exits_1_when_compare_finds_a_candidate_out_of_tolerance(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """A converter that writes a wrong FP16 model past its own check: compare is the stage that says so."""
    import optimize.precision

    convert = optimize.precision.fp16_onnx_from_onnx

    def tampered(*args, **kwargs):
        path = convert(*args, **kwargs)
        return altered_copy(path, path, scale=3.0)  # the head 3x as strong: far outside FP16's tolerance

    monkeypatch.setattr(optimize.precision, "fp16_onnx_from_onnx", tampered)
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "report"
    result = CliRunner().invoke(mopt_app, ["pipeline", "--checkpoint", str(tiny_checkpoint), "--report", str(report),
                                           *FAST])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "pipeline failed: compare" in result.output
    compare = json.loads((report / "compare.json").read_text())
    verdicts = {c["precision"]: c for c in compare["candidates"]}
    assert compare["passed"] is False
    assert verdicts["fp16"]["passed"] is False and verdicts["fp16"]["failures"]
    assert verdicts["fp32"]["passed"] is True and verdicts["int8"]["passed"] is True
    stages = {s["name"]: s for s in json.loads((report / "stages.json").read_text())}
    assert stages["compare"]["status"] == "failed" and "out of tolerance" in stages["compare"]["detail"]
    assert "onnxruntime-cpu-fp16 FAIL" in stages["compare"]["detail"]


@pytest.mark.slow
def test_the_pipeline_command_exits_0_when_every_model_is_within_tolerance(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(mopt_app, ["pipeline", "--checkpoint", str(tiny_checkpoint), "--report",
                                           str(tmp_path / "report"), *FAST])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "pipeline passed" in result.output
    # Off a terminal, each bench measurement is a plain line with the count done and planned.
    assert re.search(r"^\[1/\d+\] torch-cpu-fp32 batch 1 32x32$", result.output, re.M), result.output
    compare = json.loads((tmp_path / "report" / "compare.json").read_text())
    precisions = {c["precision"] for c in compare["candidates"]}
    # bf16: OpenVINO's on CPUs with BF16 kernels only.
    assert compare["passed"] is True and {"fp32", "fp16", "int8"} <= precisions <= {"fp32", "fp16", "int8", "bf16"}
    # The INT8 ONNX was quantized for ONNX Runtime (no recipe beside this checkpoint): OpenVINO's run of it is
    # listed as not judged, with what it would need.
    skipped = {s["backend"]: s["reason"] for s in compare["skipped"]}
    reason = skipped["openvino-cpu-int8"]
    assert "quantized for onnxruntime (no recipe" in reason and "--int8 --runtime openvino" in reason
    assert any(c["name"].startswith("onnxruntime") and c["precision"] == "int8" for c in compare["candidates"])
