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
    Tolerance,
    batched_inputs,
    compare_models,
    reference_from_checkpoint,
    tolerance_for,
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


@pytest.mark.model
def test_faithful_export_passes_with_metrics(tiny_checkpoint, tiny_simplified_onnx):
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    report = compare_models(ref, [_candidate(tiny_simplified_onnx)], _inputs())
    assert report.passed
    (c,) = report.candidates
    assert c.max_abs <= PRECISION_TOLERANCES["fp32"].atol
    assert c.mad <= c.max_abs and c.conn >= 0 and c.grad >= 0
    assert (c.atol, c.rtol) == (PRECISION_TOLERANCES["fp32"].atol, PRECISION_TOLERANCES["fp32"].rtol)


@pytest.mark.model
def test_altered_weights_fail(tiny_checkpoint, tiny_simplified_onnx, tmp_path):
    bad = altered_copy(tiny_simplified_onnx, tmp_path / "bad.onnx")
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    report = compare_models(ref, [_candidate(tiny_simplified_onnx), _candidate(bad)], _inputs())
    good, broken = report.candidates
    assert good.passed and not broken.passed and not report.passed
    assert broken.max_abs > PRECISION_TOLERANCES["fp32"].atol
    assert any("atol" in f for f in broken.failures)


@pytest.mark.model
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
    "bf16": (2e-2, 0.0, 1e-3),
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


@pytest.mark.model
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


def test_images_folder_inputs(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    batches = batched_inputs(IMAGENET, 32, 24, batch=2, count=10, images=tmp_path)
    assert [b.shape for b in batches] == [(2, 3, 32, 24), (1, 3, 32, 24)]
    (first,) = batched_inputs(IMAGENET, 32, 24, batch=4, count=2, images=tmp_path)  # --count limits the folder
    np.testing.assert_array_equal(first, batches[0])


def test_generated_inputs_are_the_synthetic_composites_in_batches():
    from optimize.images import synthetic_inputs

    batches = batched_inputs(IMAGENET, 24, 32, batch=2, count=3)
    assert [b.shape for b in batches] == [(2, 3, 24, 32), (1, 3, 24, 32)]
    np.testing.assert_array_equal(np.concatenate(batches), synthetic_inputs(3, 24, 32, IMAGENET))
    assert [b.shape for b in batched_inputs(IMAGENET, 8, 8, batch=1, count=1)] == [(1, 3, 8, 8)]
    for count, batch in ((0, 1), (1, 0), (0, 0)):
        with pytest.raises(MoptError, match=rf"--count and --batch must be positive \(got {count}, {batch}\)"):
            batched_inputs(IMAGENET, 8, 8, batch=batch, count=count)


@pytest.mark.model
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


class PerImage(InferenceBackend):
    """Image ``i`` of every batch gets alpha ``values[i]`` everywhere; records the dtype it was fed."""

    def __init__(self, values: list[float], dtype=np.float32, shape: tuple[int, int] = (SIDE, SIDE)) -> None:
        self.values, self.dtype, self.shape, self.fed = values, dtype, shape, []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.fed.append(batch.dtype)
        alpha = np.stack([np.full((1, *self.shape), v) for v in self.values[: batch.shape[0]]])
        return alpha.astype(self.dtype)


def _run(reference: InferenceBackend, *candidates: tuple[str, InferenceBackend], **kwargs):
    inputs = kwargs.pop("inputs", [np.zeros((2, 3, SIDE, SIDE), np.float32)] * 2)
    return compare_models(
        Candidate("reference", "fp32", lambda: reference),
        [Candidate(name, precision, lambda b=backend: b) for (name, precision), backend in candidates],
        inputs,
        **kwargs,
    )


def test_mad_is_the_mean_over_every_image_of_every_batch():
    # Only the second image of each batch is off: a MAD over first images only would read 0.
    report = _run(PerImage([0.5, 0.5]), (("c", "int8"), PerImage([0.5, 0.52])))
    (c,) = report.candidates
    assert c.mad == pytest.approx(0.01, rel=1e-3) and c.max_abs == pytest.approx(0.02, rel=1e-3)
    assert c.mean_abs == pytest.approx(0.01, rel=1e-3)
    assert c.passed  # int8: MAD 1e-2 is the budget itself, not over it


def test_inputs_reach_every_backend_as_float32_and_the_verdicts_in_order():
    reference, good, bad = PerImage([0.5, 0.5]), PerImage([0.5, 0.5]), PerImage([0.6, 0.6])
    inputs = [np.zeros((2, 3, SIDE, SIDE), np.float64)]
    report = _run(reference, (("good", "fp16"), good), (("bad", "fp16"), bad), inputs=inputs)
    assert [backend.fed for backend in (reference, good, bad)] == [[np.float32]] * 3
    verdicts = [(c.name, c.precision, c.passed) for c in report.candidates]
    assert verdicts == [("good", "fp16", True), ("bad", "fp16", False)]
    assert report.passed is False and report.reference == "reference"
    assert all(c.inference_ms >= 0 for c in report.candidates)


def test_tolerance_overrides_replace_the_table_for_their_precision():
    off = PerImage([0.5 + 5e-3, 0.5 + 5e-3])
    assert not _run(PerImage([0.5, 0.5]), (("c", "fp16"), off)).passed  # MAD 5e-3 > 1e-3
    loose = {"fp16": Tolerance(atol=1e-2, rtol=0.0, mad=1e-2)}
    report = _run(PerImage([0.5, 0.5]), (("c", "fp16"), off), tolerances=loose)
    assert report.passed and report.candidates[0].mad_budget == 1e-2
    fp8 = _run(PerImage([0.5, 0.5]), (("c", "fp8"), off), tolerances={"fp8": Tolerance(1e-2, 0.0, 1e-2)})
    assert fp8.passed
    with pytest.raises(MoptError, match="no tolerance for precision 'fp8'; known: fp32, fp16, bf16, int8"):
        tolerance_for("fp8")


def test_nan_and_wrong_shape_candidates_fail_without_metrics():
    nan = PerImage([0.5, float("nan")])
    small = PerImage([0.5, 0.5], shape=(SIDE, SIDE - 1))
    report = _run(PerImage([0.5, 0.5]), (("nan", "int8"), nan), (("small", "int8"), small))
    by_name = {c.name: c for c in report.candidates}
    assert not by_name["nan"].passed and by_name["nan"].nonfinite == 2 * PIXELS  # one image of two, two batches
    assert by_name["nan"].failures == ["elements outside atol=1 rtol=0", f"{2 * PIXELS} NaN/Inf values"]
    assert np.isnan(by_name["nan"].mad) and np.isnan(by_name["nan"].max_abs)
    assert not by_name["small"].passed and "output shape differs from the reference" in by_name["small"].failures
    assert np.isnan(by_name["small"].mad) and np.isnan(by_name["small"].max_abs)


def test_no_candidates_and_duplicate_names():
    nothing = r"^nothing to compare: give an ONNX model \(--onnx\) or an engine \(--engine\)$"
    with pytest.raises(MoptError, match=nothing):
        _run(PerImage([0.5, 0.5]))
    with pytest.raises(MoptError, match="candidate names must be unique"):
        _run(PerImage([0.5, 0.5]), (("c", "fp32"), PerImage([0.5, 0.5])), (("c", "fp16"), PerImage([0.5, 0.5])))
    with pytest.raises(MoptError, match="unique"):
        _run(PerImage([0.5, 0.5]), (("reference", "fp32"), PerImage([0.5, 0.5])))


def test_the_report_dict_states_inputs_tolerances_and_every_candidate():
    report = _run(PerImage([0.5, 0.5]), (("c", "fp16"), PerImage([0.5, 0.5])), input_description={"size": "32x32"})
    data = report.to_dict()
    assert set(data) == {
        "passed",
        "reference",
        "reference_model",
        "reference_sha256",
        "inputs",
        "tolerances",
        "candidates",
    }
    assert data["passed"] is True and data["reference"] == "reference" and data["inputs"] == {"size": "32x32"}
    assert {k: (v["atol"], v["rtol"], v["mad"]) for k, v in data["tolerances"].items()} == README_TOLERANCES
    assert [c["name"] for c in data["candidates"]] == ["c"] and data["candidates"][0]["failures"] == []
    assert _run(PerImage([0.5, 0.5]), (("c", "fp16"), PerImage([0.5, 0.5]))).inputs == {}


def test_inference_time_is_the_median_per_batch_in_milliseconds(monkeypatch):
    import optimize.backends.polygraphy_runner as runner_module

    class Clock:
        """Every reading 0.25 s after the last: each inference lasts exactly 250 ms."""

        now = 0.0

        @classmethod
        def perf_counter(cls) -> float:
            cls.now += 0.25
            return cls.now

    monkeypatch.setattr(runner_module, "time", Clock)
    (c,) = _run(PerImage([0.5, 0.5]), (("c", "fp16"), PerImage([0.5, 0.5]))).candidates
    assert c.inference_ms == pytest.approx(250.0)


def test_the_reference_is_pytorch_fp32_on_the_cpu_running_the_checkpoint(tiny_checkpoint):
    import torch

    from optimize.checkpoint import load_checkpoint

    reference = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    assert (reference.name, reference.precision) == ("torch-cpu-fp32", "fp32")
    backend = reference.make_backend()
    assert (backend.name, backend.device, backend.precision) == ("torch-cpu-fp32", "cpu", "fp32")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 48)).astype(np.float32)
    with torch.inference_mode():
        expected = load_checkpoint(tiny_checkpoint).model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(backend.infer(x), expected, atol=1e-6)


def _sigmoid_of_channel_mean_onnx(path):
    """A two-node ONNX model with mopt's I/O names: alpha = sigmoid(mean over the colour channels)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
         helper.make_node("Sigmoid", ["mean"], ["alpha"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def test_candidates_are_every_available_backend_but_the_reference(tmp_path):
    from optimize.backends import backend_names
    from optimize.compare import candidates_from_sources

    model = _sigmoid_of_channel_mean_onnx(tmp_path / "m.onnx")
    candidates, skipped = candidates_from_sources(ModelSources(onnx=[model], threads=1))
    assert ("onnxruntime-cpu-fp32", "fp32") in [(c.name, c.precision) for c in candidates]
    x = np.zeros((2, 3, 8, 8), np.float32)
    np.testing.assert_allclose(candidates[0].make_backend().infer(x), np.full((2, 1, 8, 8), 0.5), atol=1e-6)
    # Every registered default backend but the reference is either a candidate (one model file: one each) or
    # skipped with its reason (on a CPU machine: all the GPU ones); baselines (default=False) only run by name.
    from optimize.backends import backend_spec

    defaults = [n for n in backend_names() if backend_spec(n).default]
    assert len(candidates) + len(skipped) == len(defaults) - 1
    assert {s["backend"] for s in skipped} <= set(backend_names()) - {"torch", "onnxruntime"}
    assert all(s["reason"] for s in skipped) and not any(c.name.startswith("torch-cpu") for c in candidates)
    only, none_skipped = candidates_from_sources(ModelSources(onnx=[model]), backends=["onnxruntime"])
    assert [c.name for c in only] == ["onnxruntime-cpu-fp32"] and none_skipped == []


def test_onnxruntime_threads_block_when_idle_unless_spinning_is_asked_for(tiny_simplified_onnx):
    def spinning(backend: OnnxRuntimeBackend) -> str:
        return backend.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    with (
        OnnxRuntimeBackend(tiny_simplified_onnx, threads=2) as quiet,
        OnnxRuntimeBackend(tiny_simplified_onnx, threads=2, spinning=True) as spinning_backend,
    ):
        assert spinning(quiet) == "0" and spinning(spinning_backend) == "1"
        x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
        assert np.array_equal(quiet.infer(x), spinning_backend.infer(x))
