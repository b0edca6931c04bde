"""The precision debugger finds the one fragile node of a model, and the converters honour the recipe it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from optimize.debug_precision import Int8Evaluator, minimal_fp32_set, precision_recipe_from_onnx
from optimize.deps import is_available
from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.recipe import Budget, load_recipe

needs_modelopt = pytest.mark.skipif(
    not is_available("modelopt.onnx.autocast"),
    reason="FP16 conversion needs NVIDIA ModelOpt (pip install 'mopt[precision]')",
)

FP16_FRAGILE = "cancel"
INT8_FRAGILE = "fragile"


def _conv(name: str, x: str, w: np.ndarray, out: str, inits: list, pad: int = 0) -> onnx.NodeProto:
    inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}.weight"))
    inits.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), f"{name}.bias"))
    return helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [out], name=name, pads=[pad] * 4)


def _model(nodes: list, inits: list) -> onnx.ModelProto:
    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "fragile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mopt-tests")
    model.ir_version = 8
    model.metadata_props.add(key="mopt.precision", value="fp32")
    onnx.checker.check_model(model, full_check=True)
    return model


def fp16_fragile_model(path: Path) -> Path:
    """A small matting-shaped model with one node that FP16 destroys by catastrophic cancellation.

    ``cancel`` computes ``10000 * t - 9999.5 * t = 0.5 t`` from two copies of the same channel. In FP16 both
    weights round to +-10000 (the spacing of FP16 numbers there is 8), so the node outputs 0 and the matte
    becomes a flat 0.5. Its inputs and outputs stay small, so AutoCast's range rule does not catch it: only a
    measurement does. Every other node is harmless in FP16.
    """
    rng = np.random.default_rng(0)
    inits: list = []
    nodes = [
        _conv("stem", "input", rng.normal(0, 0.3, (4, 3, 3, 3)), "s", inits, pad=1),
        helper.make_node("Relu", ["s"], ["r"], name="stem_relu"),
        _conv("mix", "r", rng.normal(0, 0.5, (1, 4, 1, 1)), "t", inits),
        helper.make_node("Concat", ["t", "t"], ["u"], name="duplicate", axis=1),
        _conv(FP16_FRAGILE, "u", np.array([10000.0, -9999.5]).reshape(1, 2, 1, 1), "v", inits),
        _conv("head", "v", np.full((1, 1, 1, 1), 4.0), "logit", inits),
        helper.make_node("Sigmoid", ["logit"], ["alpha"], name="alpha_sigmoid"),
    ]
    onnx.save(_model(nodes, inits), str(path))
    return path


def int8_fragile_model(path: Path) -> Path:
    """A small model with one convolution whose input has a huge range, which per-tensor INT8 destroys.

    ``amplify`` scales channel 1 by 1000, so the input of ``fragile`` spans +-thousands while channel 0, which
    carries the matte, spans +-3: one INT8 step (range / 127) is larger than channel 0's whole range. Kept in
    FP32, ``fragile`` (``c0 + 1e-4 * c1``) is exact; ``stem`` and ``head`` quantize fine.
    """
    rng = np.random.default_rng(1)
    inits: list = [numpy_helper.from_array(np.array([1.0, 1000.0], np.float32).reshape(1, 2, 1, 1), "gain")]
    nodes = [
        _conv("stem", "input", rng.normal(0, 0.6, (2, 3, 1, 1)), "s", inits),
        helper.make_node("Mul", ["s", "gain"], ["big"], name="amplify"),
        _conv(INT8_FRAGILE, "big", np.array([1.0, 1e-4]).reshape(1, 2, 1, 1), "y", inits),
        _conv("head", "y", np.full((1, 1, 1, 1), 3.0), "logit", inits),
        helper.make_node("Sigmoid", ["logit"], ["alpha"], name="alpha_sigmoid"),
    ]
    onnx.save(_model(nodes, inits), str(path))
    return path


@pytest.fixture(scope="module")
def fp16_fragile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fp16_fragile_model(tmp_path_factory.mktemp("fp16") / "fragile.onnx")


@pytest.fixture(scope="module")
def int8_fragile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return int8_fragile_model(tmp_path_factory.mktemp("int8") / "fragile.onnx")


SMALL = {"size": (64, 64), "count": 2}


@pytest.fixture(scope="module")
def fp16_recipe(fp16_fragile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimize.recipe import save_recipe

    recipe = precision_recipe_from_onnx(fp16_fragile, "fp16", "mad=0.004", **SMALL)
    return save_recipe(recipe, tmp_path_factory.mktemp("recipes") / "fp16.json")


@pytest.fixture(scope="module")
def int8_recipe(int8_fragile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimize.recipe import save_recipe

    cache = tmp_path_factory.mktemp("cache") / "calib.json"
    recipe = precision_recipe_from_onnx(
        int8_fragile, "int8", "mad=0.004", synthetic=4, method="minmax", calib_cache=cache, **SMALL
    )
    return save_recipe(recipe, tmp_path_factory.mktemp("recipes") / "int8.json")


@needs_modelopt
def test_fp16_debugger_keeps_exactly_the_fragile_node(fp16_recipe: Path, fp16_fragile: Path) -> None:
    recipe = load_recipe(fp16_recipe, precision="fp16")
    assert recipe.nodes_to_keep_fp32 == [FP16_FRAGILE]
    assert recipe.minimal
    assert recipe.baseline["mad"] > 0.05  # the flat 0.5 matte is far off
    assert recipe.measured["mad"] <= 0.004
    assert recipe.steps[0].action == "baseline" and not recipe.steps[0].passed
    assert recipe.steps[1].action == "bound" and recipe.steps[1].passed
    assert any(s.action == "bisect" for s in recipe.steps)
    assert recipe.steps[-1].passed or any(s.action == "prune" for s in recipe.steps)
    assert recipe.source_onnx_sha256 == file_sha256(fp16_fragile)


def test_int8_debugger_keeps_exactly_the_fragile_node(int8_recipe: Path) -> None:
    recipe = load_recipe(int8_recipe, precision="int8")
    assert recipe.nodes_to_keep_fp32 == [INT8_FRAGILE]
    assert recipe.baseline["mad"] > 0.01
    assert recipe.measured["mad"] <= 0.004
    assert recipe.inputs["calibration"]["method"] == "minmax"


@needs_modelopt
def test_fp16_converter_honours_the_recipe(fp16_fragile: Path, fp16_recipe: Path, tmp_path: Path) -> None:
    from optimize.precision import fp16_conversion_from_onnx

    out = tmp_path / "fragile.fp16.onnx"
    with pytest.raises(MoptError, match="mopt debug precision"):
        fp16_conversion_from_onnx(fp16_fragile, out, **SMALL)
    assert not out.exists() and list(tmp_path.iterdir()) == []

    result = fp16_conversion_from_onnx(fp16_fragile, out, recipe=fp16_recipe, **SMALL)
    assert FP16_FRAGILE in result.kept_fp32
    assert result.worst["mad"] <= 1e-3 and result.worst["max_abs"] <= 4e-3
    model = onnx.load(str(out))
    weights = {i.name: i for i in model.graph.initializer}
    # The fragile node kept its FP32 weights; the others were converted.
    assert weights[f"{FP16_FRAGILE}.weight"].data_type == TensorProto.FLOAT
    assert weights["head.weight"].data_type == TensorProto.FLOAT16
    assert json.loads({p.key: p.value for p in model.metadata_props}["mopt.fp16_kept_fp32"]) == result.kept_fp32


def test_int8_quantizer_honours_the_recipe(int8_fragile: Path, int8_recipe: Path, tmp_path: Path) -> None:
    from optimize.quantize import int8_quantization_from_onnx

    out = tmp_path / "fragile.int8.onnx"
    cache = tmp_path / "calib.json"
    with pytest.raises(MoptError, match="MAD"):
        int8_quantization_from_onnx(int8_fragile, out, synthetic=4, method="minmax", calib_cache=cache, **SMALL)
    assert not out.exists()
    result = int8_quantization_from_onnx(
        int8_fragile, out, synthetic=4, method="minmax", calib_cache=cache, recipe=int8_recipe, **SMALL
    )
    assert result.cache_status == "reused"  # the failed attempt calibrated already
    assert result.kept_fp32 == [INT8_FRAGILE]
    assert INT8_FRAGILE not in result.quantized and {"stem", "head"} <= set(result.quantized)
    assert result.worst["mad"] <= 1e-2


@needs_modelopt
def test_recipe_for_another_model_is_refused(fp16_recipe: Path, tmp_path: Path) -> None:
    from optimize.precision import fp16_conversion_from_onnx

    other = int8_fragile_model(tmp_path / "other.onnx")  # has no node called "cancel"
    with pytest.raises(MoptError, match="re-run `mopt debug precision`"):
        fp16_conversion_from_onnx(other, tmp_path / "o.onnx", recipe=fp16_recipe, **SMALL)


@needs_modelopt
def test_recipe_of_the_wrong_precision_is_refused(int8_fragile: Path, fp16_recipe: Path, tmp_path: Path) -> None:
    from optimize.quantize import int8_quantization_from_onnx

    with pytest.raises(MoptError, match="is for fp16, not int8"):
        int8_quantization_from_onnx(int8_fragile, tmp_path / "o.onnx", synthetic=2, recipe=fp16_recipe, **SMALL)


class _FakeEvaluator(Int8Evaluator):
    """Needs nodes a and d together (and nothing else): checks the search itself, without any model."""

    def __init__(self, needed: set[str], names: list[str]) -> None:
        self.precision, self.candidates, self.always_fp32, self.needed, self.calls = "int8", names, [], needed, 0

    def measure(self, kept):  # noqa: ANN001, ANN201 - matches the base signature
        self.calls += 1
        missing = len(self.needed - set(kept))
        return {"mad": 0.001 + 0.01 * missing, "max_abs": 0.01, "mse": 1e-6}


@pytest.mark.parametrize("needed", [set(), {"n03"}, {"n00", "n17"}, {"n05", "n06", "n30"}])
def test_search_finds_exactly_the_needed_nodes(needed: set[str]) -> None:
    names = [f"n{i:02d}" for i in range(32)]
    evaluator = _FakeEvaluator(needed, names)
    kept, minimal, steps, _ = minimal_fp32_set(evaluator, Budget({"mad": 0.004}))
    assert set(kept) == needed and minimal
    assert kept == sorted(kept)
    # Binary search: a handful of measurements per necessary node, far fewer than one per candidate.
    assert len(steps) == evaluator.calls <= 2 + len(needed) * 8
    assert [s.step for s in steps] == list(range(1, len(steps) + 1))


def test_search_stops_at_the_step_limit_with_a_passing_set() -> None:
    names = [f"n{i:02d}" for i in range(32)]
    kept, minimal, steps, measured = minimal_fp32_set(
        _FakeEvaluator({"n03", "n20"}, names), Budget({"mad": 0.004}), max_steps=4
    )
    assert not minimal and len(steps) == 4
    assert {"n03", "n20"} <= set(kept)
    assert measured[frozenset(kept)]["mad"] <= 0.004


def test_unreachable_budget_is_a_clear_error() -> None:
    class Hopeless(_FakeEvaluator):
        def measure(self, kept):  # noqa: ANN001, ANN201
            return {"mad": 0.5, "max_abs": 1.0, "mse": 0.1}

    with pytest.raises(MoptError, match="relax --budget"):
        minimal_fp32_set(Hopeless(set(), ["a", "b"]), Budget({"mad": 0.004}))


def test_nan_metrics_never_pass() -> None:
    assert not Budget({"mad": 0.004}).passes({"mad": math.nan})
    assert not Budget({"mad": 0.004}).passes({"mad": math.inf})


@needs_modelopt
def test_debug_cli_reports_steps_and_writes_the_recipe(fp16_fragile: Path, tmp_path: Path) -> None:
    from optimize.cli import debug

    out = tmp_path / "recipe.json"
    result = CliRunner().invoke(
        debug.app, ["precision", str(fp16_fragile), "--fp16", "--size", "64x64", "--count", "2", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "bisect" in result.output and FP16_FRAGILE in result.output
    assert load_recipe(out).nodes_to_keep_fp32 == [FP16_FRAGILE]


def test_debug_cli_needs_exactly_one_precision(fp16_fragile: Path, tmp_path: Path) -> None:
    from optimize.cli import debug

    for flags in ([], ["--fp16", "--int8"]):
        result = CliRunner().invoke(debug.app, ["precision", str(fp16_fragile), *flags, "-o", str(tmp_path / "r.json")])
        assert result.exit_code != 0
        assert isinstance(result.exception, MoptError) and "--fp16 or --int8" in str(result.exception)
    assert not (tmp_path / "r.json").exists()


def test_unnamed_nodes_cannot_be_written_into_a_recipe(tmp_path: Path) -> None:
    model = onnx.load(str(int8_fragile_model(tmp_path / "m.onnx")))
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, str(tmp_path / "unnamed.onnx"))
    with pytest.raises(MoptError, match="unnamed or duplicate node names"):
        precision_recipe_from_onnx(
            tmp_path / "unnamed.onnx", "int8", synthetic=2, calib_cache=tmp_path / "c.json", **SMALL
        )


def test_debug_cli_refuses_an_unknown_runtime_in_one_line(int8_fragile: Path, tmp_path: Path) -> None:
    from optimize.cli import debug

    out = tmp_path / "r.json"
    args = ["precision", str(int8_fragile), "--int8", "--runtime", "tvm", "-o", str(out)]
    result = CliRunner().invoke(debug.app, args)
    assert result.exit_code != 0 and isinstance(result.exception, MoptError)
    message = str(result.exception)
    assert "unknown --runtime 'tvm'" in message and "onnxruntime, openvino" in message and "\n" not in message
    assert not out.exists()
    with pytest.raises(MoptError, match="unknown runtime 'tvm'"):
        precision_recipe_from_onnx(int8_fragile, "int8", runtime="tvm", **SMALL)


def test_default_runtime_is_onnxruntime(int8_recipe: Path) -> None:
    assert load_recipe(int8_recipe).runtime == "onnxruntime"
