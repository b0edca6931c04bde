"""The OpenVINO backend: numerics against PyTorch, dynamic shapes, compare, registry, precision hints."""

from __future__ import annotations

import numpy as np
import pytest
from test_compare import altered_copy

from optimize.backends import ModelSources, OpenVinoBackend, backend_names, backend_spec
from optimize.backends.openvino import cpu_capabilities, inference_precision_reason
from optimize.checkpoint import IMAGENET, load_checkpoint
from optimize.compare import PRECISION_TOLERANCES, Candidate, batched_inputs, compare_models, reference_from_checkpoint
from optimize.errors import MoptError

pytest.importorskip("openvino", reason="OpenVINO is a base dependency: pip install mopt")


def test_fp32_matches_pytorch_on_varying_shapes(tiny_checkpoint, tiny_simplified_onnx):
    model = load_checkpoint(tiny_checkpoint).model.eval()
    import torch

    with OpenVinoBackend(tiny_simplified_onnx, threads=1) as backend:
        assert backend.name == "openvino-cpu-fp32" and backend.precision == "fp32" and backend.device == "cpu"
        assert (backend.input_name, backend.output_name) == ("input", "alpha")
        rng = np.random.default_rng(0)
        # One compiled model, any batch and size: the ONNX's dims are dynamic.
        for shape in [(1, 3, 64, 64), (3, 3, 96, 32), (2, 3, 64, 128)]:
            x = rng.standard_normal(shape).astype(np.float32)
            with torch.inference_mode():
                expected = model(torch.from_numpy(x)).numpy()
            got = backend.infer(x)
            assert got.shape == (shape[0], 1, *shape[2:])
            assert np.abs(got - expected).max() <= PRECISION_TOLERANCES["fp32"].atol


def test_output_is_not_overwritten_by_the_next_call(tiny_simplified_onnx):
    with OpenVinoBackend(tiny_simplified_onnx, threads=1) as backend:
        first = backend.infer(np.zeros((1, 3, 64, 64), np.float32))
        kept = first.copy()
        backend.infer(np.ones((1, 3, 64, 64), np.float32))
        assert np.array_equal(first, kept)


def test_compare_passes_faithful_and_fails_tampered_onnx_through_openvino(
    tiny_checkpoint, tiny_simplified_onnx, tmp_path
):
    bad = altered_copy(tiny_simplified_onnx, tmp_path / "bad.onnx")
    ref = reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint))
    candidates = [
        Candidate("ov-good", "fp32", lambda: OpenVinoBackend(tiny_simplified_onnx, threads=1)),
        Candidate("ov-bad", "fp32", lambda: OpenVinoBackend(bad, threads=1)),
    ]
    report = compare_models(ref, candidates, batched_inputs(IMAGENET, 64, 48, batch=2, count=3))
    good, broken = report.candidates
    assert good.passed and good.max_abs <= 1e-4
    assert not broken.passed and not report.passed and any("atol" in f for f in broken.failures)


def test_registered_and_in_compare_candidates(tiny_simplified_onnx):
    from optimize.compare import candidates_from_sources

    assert {"openvino", "openvino-bf16"} <= set(backend_names())
    assert "no ONNX file given" in backend_spec("openvino").unavailable_reason(ModelSources())
    candidates, _ = candidates_from_sources(ModelSources(onnx=[tiny_simplified_onnx], threads=1), ["openvino"])
    assert [(c.name, c.precision) for c in candidates] == [("openvino-cpu-fp32", "fp32")]


def test_bf16_runs_where_the_cpu_has_it_and_says_why_not_elsewhere(tiny_simplified_onnx, monkeypatch):
    if "BF16" in cpu_capabilities():
        with OpenVinoBackend(tiny_simplified_onnx, threads=1, inference_precision="bf16") as backend:
            assert backend.precision == "bf16" and backend.name == "openvino-cpu-bf16"
            assert backend.infer(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 1, 64, 64)
    from optimize.backends import openvino as ov_mod

    monkeypatch.setattr(ov_mod, "cpu_capabilities", lambda: ["FP32", "INT8"])
    reason = inference_precision_reason("bf16")
    assert reason and "no BF16 support" in reason and "FP32, INT8" in reason
    assert backend_spec("openvino-bf16").unavailable_reason(ModelSources(onnx=[tiny_simplified_onnx])) == reason
    with pytest.raises(MoptError, match="cannot run .* in bf16"):
        OpenVinoBackend(tiny_simplified_onnx, inference_precision="bf16")


def test_bad_options_and_files_are_user_errors(tiny_simplified_onnx, tmp_path):
    with pytest.raises(MoptError, match="performance hint 'FAST'.*LATENCY, THROUGHPUT"):
        OpenVinoBackend(tiny_simplified_onnx, performance_hint="FAST")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(MoptError, match="OpenVINO cannot read"):
        OpenVinoBackend(junk)


# --- mopt debug precision --runtime openvino --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fragile_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from test_debug_precision import fp16_fragile_model, int8_fragile_model

    folder = tmp_path_factory.mktemp("ov-fragile")
    return {"fp16": fp16_fragile_model(folder / "fp16.onnx"), "int8": int8_fragile_model(folder / "int8.onnx")}


def _inputs() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((3, 3, 32, 48)).astype(np.float32)


def test_openvino_int8_evaluator_measures_what_onnxruntime_measures_with_nothing_reduced(fragile_models, tmp_path):
    from optimize.backends.openvino import run_openvino
    from optimize.debug_precision import Int8Evaluator, OpenVinoInt8Evaluator
    from optimize.onnx_model import run_onnx
    from optimize.quantize import calibration_ranges_cached, calibration_set_from_synthetic

    path, x = fragile_models["int8"], _inputs()
    reference = run_onnx(path, x, threads=1)
    # The FP32 model itself: OpenVINO computes what ONNX Runtime computes.
    assert np.abs(run_openvino(path, x, threads=1) - reference).max() <= PRECISION_TOLERANCES["fp32"].atol
    calibration = calibration_set_from_synthetic(2, path, (32, 48))
    ranges, _ = calibration_ranges_cached(path, calibration, "minmax", tmp_path / "calib.json")
    ort = Int8Evaluator(path, x, reference, ranges, threads=1)
    ov = OpenVinoInt8Evaluator(path, x, reference, ranges, threads=1)
    assert ov.candidates == ort.candidates
    everything_fp32 = [ort.measure(ort.candidates), ov.measure(ov.candidates)]
    for metrics in everything_fp32:
        assert metrics["max_abs"] <= 1e-5 and metrics["mad"] <= 1e-6
    # Quantized, the fragile node ruins the matte on both runtimes: OpenVINO really ran the Q/DQ model.
    assert ov.measure([])["mad"] > 0.01 and ort.measure([])["mad"] > 0.01


def test_openvino_int8_recipe_records_its_runtime(fragile_models, tmp_path):
    from test_debug_precision import INT8_FRAGILE

    from optimize.debug_precision import precision_recipe_from_onnx
    from optimize.recipe import load_recipe, save_recipe

    recipe = precision_recipe_from_onnx(
        fragile_models["int8"],
        "int8",
        "mad=0.004",
        size=(32, 48),
        count=2,
        synthetic=2,
        method="minmax",
        calib_cache=tmp_path / "calib.json",
        threads=1,
        runtime="openvino",
    )
    assert recipe.runtime == "openvino" and recipe.nodes_to_keep_fp32 == [INT8_FRAGILE]
    assert load_recipe(save_recipe(recipe, tmp_path / "r.json")).runtime == "openvino"


def test_keep_fp32_leaves_the_named_node_in_fp32_under_a_reduced_hint(fragile_models):
    from test_debug_precision import FP16_FRAGILE

    from optimize.backends.openvino import reduced_inference_precision, run_openvino
    from optimize.onnx_model import run_onnx

    if not ({"FP16", "BF16"} & set(cpu_capabilities())):
        pytest.skip("this CPU has neither FP16 nor BF16 in OpenVINO")
    path, x = fragile_models["fp16"], _inputs()
    hint = reduced_inference_precision()
    reference = run_onnx(path, x, threads=1)
    # `cancel` subtracts two numbers that f16/bf16 round to the same value: reduced, the matte is a flat 0.5.
    reduced = run_openvino(path, x, threads=1, inference_precision=hint)
    kept = run_openvino(path, x, threads=1, inference_precision=hint, keep_fp32=[FP16_FRAGILE])
    assert np.abs(reduced - reference).mean() > 0.05
    assert np.abs(kept - reference).mean() <= 4e-3
    with pytest.raises(MoptError, match="no operations of node.*nowhere"):
        run_openvino(path, x, threads=1, inference_precision=hint, keep_fp32=["nowhere"])


def test_openvino_fp16_debugger_finds_the_fragile_node(fragile_models):
    from test_debug_precision import FP16_FRAGILE

    from optimize.debug_precision import precision_recipe_from_onnx

    if not ({"FP16", "BF16"} & set(cpu_capabilities())):
        pytest.skip("this CPU has neither FP16 nor BF16 in OpenVINO")
    recipe = precision_recipe_from_onnx(
        fragile_models["fp16"], "fp16", "mad=0.004", size=(32, 48), count=2, threads=1, runtime="openvino"
    )
    assert recipe.nodes_to_keep_fp32 == [FP16_FRAGILE] and recipe.minimal and recipe.runtime == "openvino"
    assert recipe.inputs["inference_precision"] in ("fp16", "bf16") and recipe.baseline["mad"] > 0.05


def test_openvino_fp16_is_refused_in_one_line_on_a_cpu_without_it(fragile_models, monkeypatch):
    from optimize.backends import openvino as ov_mod
    from optimize.debug_precision import precision_recipe_from_onnx

    monkeypatch.setattr(ov_mod, "cpu_capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(MoptError, match="cannot compute in FP16 or BF16.*--runtime onnxruntime") as info:
        precision_recipe_from_onnx(fragile_models["fp16"], "fp16", size=(32, 48), count=2, runtime="openvino")
    assert "\n" not in str(info.value)


def test_each_shape_gets_a_static_compilation_and_the_oldest_is_dropped(tiny_simplified_onnx):
    rng = np.random.default_rng(1)
    shapes = [(1, 3, 64, 64), (2, 3, 64, 64), (1, 3, 96, 32)]
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    with OpenVinoBackend(tiny_simplified_onnx, threads=1, static_shapes=0) as dynamic:
        expected = [dynamic.infer(x) for x in inputs]
        assert not dynamic._by_shape  # off: every shape runs on the one dynamic compilation
    # static_after_s=0: a shape has earned its static compilation at once.
    with OpenVinoBackend(tiny_simplified_onnx, threads=1, static_shapes=2, static_after_s=0.0) as backend:
        for x, want in zip(inputs, expected):
            assert np.abs(backend.infer(x) - want).max() <= 1e-5
        assert list(backend._by_shape) == shapes[1:]  # the least recently used shape went first
        backend.infer(inputs[1])
        assert list(backend._by_shape) == [shapes[2], shapes[1]]
    with pytest.raises(MoptError, match="static_shapes must be 0"):
        OpenVinoBackend(tiny_simplified_onnx, static_shapes=-1)


def test_a_shape_runs_dynamic_until_its_calls_have_cost_a_compilation(tiny_simplified_onnx):
    x = np.zeros((1, 3, 64, 64), np.float32)
    with OpenVinoBackend(tiny_simplified_onnx, threads=1, static_after_s=3600.0) as backend:
        for _ in range(3):
            backend.infer(x)
        assert not backend._by_shape and backend._dynamic_s[x.shape] > 0
        backend._dynamic_s[x.shape] = 3600.0  # as if it had run for an hour at this shape
        backend.infer(x)
        assert list(backend._by_shape) == [x.shape] and x.shape not in backend._dynamic_s
    with OpenVinoBackend(tiny_simplified_onnx, threads=1, static_after_s=3600.0) as timed:
        # Timing measures the steady state: the timed shape is compiled before the first timed call.
        assert len(timed.time_inference(x, 0, 2)) == 2 and list(timed._by_shape) == [x.shape]


def test_throughput_hint_splits_a_batch_over_its_streams_and_returns_it_in_order(tiny_simplified_onnx):
    x = np.random.default_rng(2).standard_normal((5, 3, 64, 64)).astype(np.float32)
    with OpenVinoBackend(tiny_simplified_onnx, threads=2) as latency:
        expected = latency.infer(x)
    with OpenVinoBackend(
        tiny_simplified_onnx, threads=2, performance_hint="THROUGHPUT", static_after_s=0.0
    ) as throughput:
        got = throughput.infer(x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5
        if len(throughput._requests) > 1:  # more than one stream: the batch ran as chunks (3 + 2 on two streams)
            assert sorted(throughput._by_shape) == sorted({(len(c), 3, 64, 64) for c in np.array_split(x, 2)})
