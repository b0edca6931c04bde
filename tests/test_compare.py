import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from optimize.backends import ModelSources, OnnxRuntimeBackend
from optimize.checkpoint import IMAGENET
from optimize.cli import compare as compare_cli
from optimize.compare import (
    PRECISION_TOLERANCES,
    Candidate,
    batched_inputs,
    compare_models,
    reference_from_checkpoint,
)
from optimize.errors import MoptError


def altered_copy(source, path, scale=1.3):
    """The same model with the head convolution's weights scaled: what a broken optimizer might produce."""
    model = onnx.load(str(source))
    head = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    init = next(i for i in model.graph.initializer if i.name == head.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, init.name))
    onnx.save(model, str(path))
    return path


def _candidate(path, precision="fp32"):
    return Candidate(f"ort-{path.stem}", precision, lambda: OnnxRuntimeBackend(path))


def _inputs():
    return batched_inputs(IMAGENET, 64, 48, batch=2, count=3)


def test_faithful_export_passes_with_metrics(tiny_checkpoint, tiny_simplified_onnx):
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    report = compare_models(ref, [_candidate(tiny_simplified_onnx)], _inputs())
    assert report.passed
    (c,) = report.candidates
    assert c.max_abs <= PRECISION_TOLERANCES["fp32"].atol
    assert c.mad <= c.max_abs and c.conn >= 0 and c.grad >= 0
    assert (c.atol, c.rtol) == (PRECISION_TOLERANCES["fp32"].atol, PRECISION_TOLERANCES["fp32"].rtol)


def test_altered_weights_fail(tiny_checkpoint, tiny_simplified_onnx, tmp_path):
    bad = altered_copy(tiny_simplified_onnx, tmp_path / "bad.onnx")
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    report = compare_models(ref, [_candidate(tiny_simplified_onnx), _candidate(bad)], _inputs())
    good, broken = report.candidates
    assert good.passed and not broken.passed and not report.passed
    assert broken.max_abs > PRECISION_TOLERANCES["fp32"].atol
    assert any("atol" in f for f in broken.failures)


def test_fp16_tolerance_is_looser_than_fp32(tiny_checkpoint, tiny_simplified_onnx, tmp_path):
    # A small change that fails FP32's 1e-4 but sits inside FP16's budget.
    slightly = altered_copy(tiny_simplified_onnx, tmp_path / "slight.onnx", scale=1.0005)
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    as32 = compare_models(ref, [_candidate(slightly, "fp32")], _inputs()).candidates[0]
    as16 = compare_models(ref, [_candidate(slightly, "fp16")], _inputs()).candidates[0]
    assert as16.passed
    assert as16.atol > as32.atol


def test_nan_output_fails(tiny_checkpoint, tiny_simplified_onnx):
    class NanBackend(OnnxRuntimeBackend):
        def infer(self, batch):
            out = super().infer(batch)
            out[0, 0, 0, 0] = np.nan
            return out

    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    cand = Candidate("nan", "fp16", lambda: NanBackend(tiny_simplified_onnx))
    (c,) = compare_models(ref, [cand], _inputs()).candidates
    assert not c.passed and c.nonfinite == len(_inputs())  # one NaN per batch
    assert any("NaN" in f for f in c.failures)


def test_no_candidates_and_duplicate_names(tiny_checkpoint, tiny_simplified_onnx):
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    with pytest.raises(MoptError, match="nothing to compare"):
        compare_models(ref, [], _inputs())
    with pytest.raises(MoptError, match="unique"):
        compare_models(ref, [_candidate(tiny_simplified_onnx), _candidate(tiny_simplified_onnx)], _inputs())


def test_images_folder_inputs(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    batches = batched_inputs(IMAGENET, 32, 24, batch=2, count=10, images=tmp_path)
    assert [b.shape for b in batches] == [(2, 3, 32, 24), (1, 3, 32, 24)]


def test_cli_exit_codes_and_json(tiny_checkpoint, tiny_simplified_onnx, tmp_path):
    runner = CliRunner()
    args = ["--checkpoint", str(tiny_checkpoint), "--size", "64x48", "--count", "2", "--batch", "2"]
    ok = runner.invoke(
        compare_cli.app, [*args, "--onnx", str(tiny_simplified_onnx), "--json", str(tmp_path / "ok.json")]
    )
    assert ok.exit_code == 0, ok.output
    data = json.loads((tmp_path / "ok.json").read_text())
    assert data["passed"] is True and data["reference"] == "torch-cpu-fp32"
    keys = {"name", "precision", "passed", "atol", "rtol", "max_abs", "mean_abs", "mad", "mse", "sad", "grad", "conn"}
    assert keys <= set(data["candidates"][0])
    bad = altered_copy(tiny_simplified_onnx, tmp_path / "bad.onnx")
    failed = runner.invoke(compare_cli.app, [*args, "--onnx", str(bad)])
    assert failed.exit_code == 1
    assert "FAIL" in failed.output


def test_two_onnx_of_one_precision_are_named_by_file_and_the_json_says_which_file_ran(
    tiny_checkpoint, tiny_onnx, tiny_simplified_onnx, tmp_path
):
    from optimize.fileio import file_sha256

    out = tmp_path / "c.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--size", "64x48", "--count", "2", "--json", str(out)]
    result = CliRunner().invoke(compare_cli.app, [*args, "--onnx", str(tiny_onnx), "--onnx", str(tiny_simplified_onnx)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["reference_model"] == str(tiny_checkpoint) and data["reference_sha256"] == file_sha256(tiny_checkpoint)
    by_name = {c["name"]: c for c in data["candidates"]}
    for path in (tiny_onnx, tiny_simplified_onnx):
        candidate = by_name[f"onnxruntime-cpu-fp32 ({path.name})"]
        assert candidate["model"] == str(path) and candidate["sha256"] == file_sha256(path)


def test_the_table_fits_80_columns_with_tolerances_and_failures_below(tiny_checkpoint, tiny_simplified_onnx, tmp_path):
    from rich.console import Console

    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    bad = altered_copy(tiny_simplified_onnx, tmp_path / "cvunet.sim.fp16.onnx")
    long_names = [
        Candidate("onnxruntime-cpu-fp32 (cvunet.sim.onnx)", "fp32", lambda: OnnxRuntimeBackend(tiny_simplified_onnx)),
        Candidate("onnxruntime-cpu-fp16 (cvunet.sim.fp16.onnx)", "fp16", lambda: OnnxRuntimeBackend(bad)),
    ]
    report = compare_models(ref, long_names, _inputs())
    console = Console(width=80, record=True, color_system=None)
    compare_cli.print_compare(report, out=console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text  # nothing cut: long names fold onto a second line
    joined = "".join(text.split())
    assert "onnxruntime-cpu-fp16(cvunet.sim.fp16.onnx)" in joined
    assert "fp32: |d| <= atol 0.0001 + rtol 0.001 x |ref|, and MAD <= 1e-05" in text
    assert "fp16: |d| <= atol 0.02" in text
    assert "FAIL onnxruntime-cpu-fp16 (cvunet.sim.fp16.onnx): " in text
