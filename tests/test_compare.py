import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from optimize.backends import InferenceBackend, ModelSources, OnnxRuntimeBackend
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
    # A 2% larger head: about 5e-4 worst and 2e-4 mean off, past FP32's budget, well inside FP16's.
    slightly = altered_copy(tiny_simplified_onnx, tmp_path / "slight.onnx", scale=1.02)
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    as32 = compare_models(ref, [_candidate(slightly, "fp32")], _inputs()).candidates[0]
    as16 = compare_models(ref, [_candidate(slightly, "fp16")], _inputs()).candidates[0]
    assert 1e-5 < as32.mad < 1e-3 and as32.max_abs < 2e-2
    assert not as32.passed and any("MAD" in f for f in as32.failures)
    assert as16.passed and as16.failures == []
    assert as16.atol > as32.atol


# --- verdicts pinned to the README's tolerance table ----------------------------------------------------------

# The README's table, written out here on purpose: a test that read the constants back would pass whatever
# they were changed to. precision -> (atol, rtol, MAD budget).
README_TOLERANCES = {
    "fp32": (1e-4, 1e-3, 1e-5),
    "fp16": (2e-2, 0.0, 1e-3),
    "int8": (1.0, 0.0, 1e-2),
}
SIDE = 32  # synthetic mattes of SIDE x SIDE, two batches of two
PIXELS = SIDE * SIDE


class FixedMatte(InferenceBackend):
    """A backend whose alpha is a fixed matte (the same for every image) plus a known offset.

    The reference is ``FixedMatte(base)``; a candidate ``FixedMatte(base, offset)`` differs from it by exactly
    ``offset`` at every pixel, so a test sets the worst and the mean error it wants.
    """

    def __init__(self, base: np.ndarray, offset: np.ndarray | None = None) -> None:
        self.alpha = base + (0.0 if offset is None else offset)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.alpha.astype(np.float32), (batch.shape[0], 1, SIDE, SIDE)).copy()


def _verdict(precision: str, offset: np.ndarray, base: float = 0.0):
    base_matte = np.full((SIDE, SIDE), base)
    reference = Candidate("reference", "fp32", lambda: FixedMatte(base_matte))
    candidate = Candidate("candidate", precision, lambda: FixedMatte(base_matte, offset))
    inputs = [np.zeros((2, 3, SIDE, SIDE), np.float32)] * 2
    (result,) = compare_models(reference, [candidate], inputs).candidates
    return result


def _offset_on(pixels: int, value: float) -> np.ndarray:
    """``value`` on the first ``pixels`` pixels (row-major), 0 elsewhere: worst error ``value``, MAD known."""
    offset = np.zeros(PIXELS)
    offset[:pixels] = value
    return offset.reshape(SIDE, SIDE)


@pytest.mark.parametrize("precision", list(README_TOLERANCES))
def test_each_precision_is_judged_with_the_readme_tolerances(precision):
    result = _verdict(precision, np.zeros((SIDE, SIDE)))
    assert result.passed
    assert (result.atol, result.rtol, result.mad_budget) == README_TOLERANCES[precision]
    assert tuple(vars(PRECISION_TOLERANCES[precision]).values()) == README_TOLERANCES[precision]


@pytest.mark.parametrize("precision", list(README_TOLERANCES))
@pytest.mark.parametrize("mad_ratio, passes", [(0.9, True), (1.1, False)])
def test_mad_budget_decides_when_every_pixel_is_inside_atol(precision, mad_ratio, passes):
    """Every pixel at 90% of atol (50% for INT8, whose atol of 1.0 no valid matte exceeds), on as many pixels as
    put the MAD at 90% or 110% of the budget: inside passes, over fails on MAD alone."""
    atol, _, budget = README_TOLERANCES[precision]
    value = 0.9 * atol if precision != "int8" else 0.5
    pixels = round(mad_ratio * budget * PIXELS / value)
    result = _verdict(precision, _offset_on(pixels, value))
    assert result.mad == pytest.approx(pixels * value / PIXELS, rel=1e-4)  # metrics agree with the arithmetic
    assert result.max_abs == pytest.approx(value, rel=1e-4)
    assert result.passed is passes, result.failures
    if not passes:
        assert len(result.failures) == 1 and result.failures[0].startswith("MAD")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("atol_ratio, passes", [(0.9, True), (1.1, False)])
def test_one_pixel_just_inside_or_past_atol(precision, atol_ratio, passes):
    """One pixel off by 90% / 110% of atol where the reference is 0 (so rtol allows nothing): MAD is negligible."""
    atol = README_TOLERANCES[precision][0]
    result = _verdict(precision, _offset_on(1, atol_ratio * atol))
    assert result.passed is passes, result.failures
    if not passes:
        assert result.failures == [f"elements outside atol={atol:g} rtol={README_TOLERANCES[precision][1]:g}"]


@pytest.mark.parametrize("difference, passes", [(4e-4, True), (6e-4, False)])
def test_fp32_rtol_is_relative_to_the_value(difference, passes):
    """Where alpha is 0.5, FP32 accepts a difference past atol (1e-4) while within rtol (1e-3) of the value."""
    result = _verdict("fp32", _offset_on(1, difference), base=0.5)
    assert result.mad < 1e-5
    assert result.passed is passes, result.failures


def test_int8_accepts_any_valid_pixel_and_lets_mad_decide():
    """An INT8 matte may flip a boundary pixel from 0 to 1: the worst possible pixel passes while MAD stays low."""
    flipped = _verdict("int8", _offset_on(8, 1.0))
    assert flipped.passed and flipped.max_abs == 1.0 and flipped.mad == pytest.approx(8 / PIXELS)
    as_fp16 = _verdict("fp16", _offset_on(8, 1.0))
    assert not as_fp16.passed


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
