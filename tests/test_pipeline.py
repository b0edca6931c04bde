import json

import pytest

from optimize.errors import MoptError
from optimize.pipeline import PipelineSettings, run_pipeline


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
    seen = []
    state = run_pipeline(_settings(tiny_checkpoint, tmp_path), on_stage=lambda s: seen.append((s.name, s.status)))
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
