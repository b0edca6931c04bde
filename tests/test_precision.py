"""FP16 graph conversion (ModelOpt AutoCast): FP16 compute, FP32 I/O, dynamic dims, honest CPU verification."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from optimize.deps import is_available
from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.precision import (
    FP16_MAD,
    FP16_MAX_ABS,
    fp16_conversion_from_onnx,
    fp16_emulation_from_model,
    fp16_onnx_from_onnx,
    io_dims,
    run_onnx,
)

needs_modelopt = pytest.mark.skipif(
    not is_available("modelopt.onnx.autocast"),
    reason="FP16 conversion needs NVIDIA ModelOpt (pip install 'mopt[precision]')",
)
SMALL = {"size": (64, 96), "count": 2}


@pytest.fixture(scope="module")
def fp16_result(tiny_simplified_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    if not is_available("modelopt.onnx.autocast"):
        pytest.skip("FP16 conversion needs NVIDIA ModelOpt (pip install 'mopt[precision]')")
    return fp16_conversion_from_onnx(tiny_simplified_onnx, tmp_path_factory.mktemp("fp16") / "tiny.fp16.onnx", **SMALL)


def test_importing_the_precision_modules_needs_no_modelopt() -> None:
    code = (
        "import sys, optimize.precision, optimize.quantize, optimize.debug_precision, optimize.recipe, "
        "optimize.cli.convert_precision, optimize.cli.quantize, optimize.cli.debug; "
        "assert not [m for m in sys.modules if m.startswith('modelopt')], 'modelopt imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


@needs_modelopt
def test_converted_model_computes_in_fp16_with_fp32_io(fp16_result, tiny_simplified_onnx: Path) -> None:
    model = onnx.load(str(fp16_result.path))
    assert fp16_result.fp16_initializers > 0
    assert sum(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) == fp16_result.fp16_initializers
    assert not any(i.data_type == TensorProto.FLOAT for i in model.graph.initializer if i.name.endswith("weight"))
    assert fp16_result.casts >= 2  # input to FP16, alpha back to FP32
    assert fp16_result.converted > 0
    # I/O stays FP32 and dynamic: batch, height and width.
    assert io_dims(model) == io_dims(onnx.load(str(tiny_simplified_onnx)))
    assert io_dims(model)["input"] == ["batch", 3, "height", "width"]
    assert {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]} == {TensorProto.FLOAT}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mopt.precision"] == "fp16"
    assert meta["mopt.source_onnx_sha256"] == file_sha256(tiny_simplified_onnx)
    assert meta["mopt.arch"] == "cvunet-tiny" and "mopt.normalization" in meta
    assert json.loads(meta["mopt.fp16_kept_fp32"]) == fp16_result.kept_fp32


@needs_modelopt
def test_converted_model_runs_on_the_cpu_at_any_size_within_budget(fp16_result, tiny_simplified_onnx: Path) -> None:
    x = np.random.default_rng(3).standard_normal((3, 3, 72, 104)).astype(np.float32)
    out = run_onnx(fp16_result.path, x)
    ref = run_onnx(tiny_simplified_onnx, x)
    assert out.shape == (3, 1, 72, 104) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - ref).max() <= FP16_MAX_ABS
    labels = [c.label for c in fp16_result.checks]
    assert labels == ["onnxruntime-cpu", "fp16-emulation"]
    assert fp16_result.worst["max_abs"] <= FP16_MAX_ABS and fp16_result.worst["mad"] <= FP16_MAD
    # The CPU provider runs only a few FP16 kernels; the emulation is what exposes FP16 rounding.
    ran, total = fp16_result.ort_fp16_nodes
    assert 0 <= ran <= total and total > 0
    ort_check, emulated = fp16_result.checks
    assert emulated.mad >= ort_check.mad > 0


def test_emulation_rounds_and_overflows_like_fp16() -> None:
    """x -> FP16 -> (*300) -> (*300): 9e4 * x overflows FP16 (max 65504) although each step is in range."""
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="to16"),
        helper.make_node("Mul", ["h", "k"], ["a"], name="mul1"),
        helper.make_node("Mul", ["a", "k"], ["b"], name="mul2"),
        helper.make_node("Cast", ["b"], ["y"], to=TensorProto.FLOAT, name="to32"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array(300.0, np.float16), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    emulated = fp16_emulation_from_model(model)
    assert {i.data_type for i in emulated.graph.initializer} == {TensorProto.FLOAT}
    x = np.array([1.0, 0.5, 1.0 / 3.0], np.float32)
    y = run_onnx(emulated, x, batch=3)
    with np.errstate(over="ignore"):
        expected = (x.astype(np.float16) * np.float16(300)) * np.float16(300)  # numpy FP16 arithmetic
    assert np.isinf(y[0]) and np.isinf(expected[0])
    np.testing.assert_array_equal(y[1:], expected[1:].astype(np.float32))


@needs_modelopt
def test_default_output_path_and_input_untouched(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    source = tmp_path / "m.sim.onnx"
    source.write_bytes(tiny_simplified_onnx.read_bytes())
    before = file_sha256(source)
    path = fp16_onnx_from_onnx(source, **SMALL)
    assert path == tmp_path / "m.sim.fp16.onnx" and path.exists()
    assert file_sha256(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sim.fp16.onnx", "m.sim.onnx"]


@needs_modelopt
def test_over_budget_writes_nothing(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    with pytest.raises(MoptError, match="not written.*mopt debug precision") as info:
        fp16_conversion_from_onnx(tiny_simplified_onnx, out, max_abs=1e-9, mad=1e-12, **SMALL)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@needs_modelopt
def test_reduced_models_are_refused(fp16_result, tmp_path: Path) -> None:
    with pytest.raises(MoptError, match="already fp16"):
        fp16_conversion_from_onnx(fp16_result.path, tmp_path / "again.onnx", **SMALL)


def test_bad_paths(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(MoptError, match="does not exist"):
        fp16_conversion_from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a protobuf")
    with pytest.raises(MoptError, match="not a readable ONNX model"):
        fp16_conversion_from_onnx(junk)
    with pytest.raises(MoptError, match="must end in .onnx"):
        fp16_conversion_from_onnx(tiny_simplified_onnx, tmp_path / "out.plan")
    with pytest.raises(MoptError, match="is the input file"):
        fp16_conversion_from_onnx(tiny_simplified_onnx, tiny_simplified_onnx)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoptError, match="no images"):
        fp16_conversion_from_onnx(tiny_simplified_onnx, tmp_path / "o.onnx", images=tmp_path / "empty")
    assert not (tmp_path / "o.onnx").exists()


@needs_modelopt
def test_cli_converts_and_reports_both_measurements(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    from optimize.cli import convert_precision

    out = tmp_path / "cli.fp16.onnx"
    args = [str(tiny_simplified_onnx), "--fp16", "-o", str(out), "--size", "64x64", "--count", "2"]
    result = CliRunner().invoke(convert_precision.app, args)
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "onnxruntime-cpu" in result.output and "fp16-emulation" in result.output


def test_cli_requires_the_precision_flag(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    from optimize.cli import convert_precision

    result = CliRunner().invoke(convert_precision.app, [str(tiny_simplified_onnx), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code != 0 and isinstance(result.exception, MoptError)
    assert "--fp16" in str(result.exception)
    assert list(tmp_path.iterdir()) == []
