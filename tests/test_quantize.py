"""INT8 Q/DQ quantization: TensorRT-compatible graph, calibration from folders, the cache, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.onnx_model import io_dims, run_onnx
from optimize.quantize import (
    CACHE_FORMAT,
    INT8_MAD,
    WEIGHTED_OP_TYPES,
    calibration_set_from_folder,
    int8_onnx_from_onnx,
    int8_quantization_from_onnx,
    qdq_model_from_ranges,
)

SMALL = {"size": (64, 96), "count": 2, "calib_size": (64, 64)}


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from optimize.synthetic import write_synthetic_folder

    root = tmp_path_factory.mktemp("calib")
    write_synthetic_folder(root, 4, (80, 72), seed=5)
    return root / "images"


@pytest.fixture(scope="module")
def int8_result(tiny_simplified_onnx: Path, calib_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("int8")
    return int8_quantization_from_onnx(
        tiny_simplified_onnx,
        out / "tiny.int8.onnx",
        calib_dir=calib_folder,
        method="minmax",
        calib_cache=out / "c.json",
        **SMALL,
    )


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_qdq_graph_is_what_tensorrt_needs(int8_result, tiny_simplified_onnx: Path) -> None:
    model = onnx.load(str(int8_result.path))
    inits = _initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq_nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert q_nodes and dq_nodes and int8_result.qdq_nodes == (len(q_nodes), len(dq_nodes))
    for node in q_nodes + dq_nodes:
        # Symmetric signed INT8: every zero point is int8 and 0.
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OP_TYPES]
    assert {n.name for n in weighted} == set(int8_result.quantized)
    for conv in weighted:
        activation, weight = (producers[i] for i in conv.input[:2])
        assert activation.op_type == weight.op_type == "DequantizeLinear"
        assert inits[weight.input[0]].dtype == np.int8  # weights stored quantized
        scale = inits[weight.input[1]]
        assert scale.shape == (inits[weight.input[0]].shape[0],)  # per output channel
        if len(conv.input) > 2:
            assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32  # bias left in float
    # No Q/DQ on the outputs of weighted ops: the matte logits are never quantized.
    alpha_producer = producers["alpha"]
    assert all(producers[i].op_type != "DequantizeLinear" for i in alpha_producer.input if i in producers)
    assert io_dims(model) == io_dims(onnx.load(str(tiny_simplified_onnx)))
    assert io_dims(model)["alpha"] == ["batch", 1, "height", "width"]


def test_int8_model_runs_in_onnxruntime_within_budget(int8_result, tiny_simplified_onnx: Path) -> None:
    x = np.random.default_rng(4).standard_normal((3, 3, 80, 56)).astype(np.float32)
    out = run_onnx(int8_result.path, x)
    assert out.shape == (3, 1, 80, 56) and np.isfinite(out).all()
    assert np.abs(out - run_onnx(tiny_simplified_onnx, x)).mean() <= INT8_MAD
    check = int8_result.checks[0]
    assert check.label == "onnxruntime-cpu" and 0 < check.mad <= INT8_MAD
    meta = {p.key: p.value for p in onnx.load(str(int8_result.path)).metadata_props}
    assert meta["mopt.precision"] == "int8" and meta["mopt.arch"] == "cvunet-tiny"
    assert meta["mopt.source_onnx_sha256"] == file_sha256(tiny_simplified_onnx)
    assert json.loads(meta["mopt.int8_calibration"]) == {"method": "minmax", **int8_result.calibration}


def test_calibration_reads_the_folder_like_inference(
    int8_result, calib_folder: Path, tiny_simplified_onnx: Path
) -> None:
    from optimize.images import inputs_from_folder
    from optimize.onnx_model import onnx_normalization

    assert int8_result.calibration == {"source": str(calib_folder), "count": 4, "size": "64x64"}
    calibration = calibration_set_from_folder(calib_folder, tiny_simplified_onnx, (64, 64))
    expected = inputs_from_folder(calib_folder, onnx_normalization(tiny_simplified_onnx), 64, 64)
    np.testing.assert_array_equal(calibration.inputs, expected)


def test_cache_is_written_reused_and_replaced(tiny_simplified_onnx: Path, calib_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "calib.json"
    common = {"calib_cache": cache, "calib_dir": calib_folder, **SMALL}
    first = int8_quantization_from_onnx(tiny_simplified_onnx, tmp_path / "a.onnx", method="minmax", **common)
    assert first.cache_status == "written" and first.cache_path == cache
    data = json.loads(cache.read_text())
    assert data["format"] == CACHE_FORMAT and data["key"]["method"] == "minmax"
    assert data["key"]["onnx_sha256"] == file_sha256(tiny_simplified_onnx)
    assert data["ranges"] and all(lo <= hi for lo, hi in data["ranges"].values())

    second = int8_quantization_from_onnx(tiny_simplified_onnx, tmp_path / "b.onnx", method="minmax", **common)
    assert second.cache_status == "reused"
    assert file_sha256(tmp_path / "a.onnx") == file_sha256(tmp_path / "b.onnx")  # same ranges, same model

    third = int8_quantization_from_onnx(tiny_simplified_onnx, tmp_path / "c.onnx", method="percentile", **common)
    assert third.cache_status == "replaced" and json.loads(cache.read_text())["key"]["method"] == "percentile"
    other_data = int8_quantization_from_onnx(
        tiny_simplified_onnx,
        tmp_path / "d.onnx",
        method="percentile",
        calib_cache=cache,
        synthetic=2,
        size=(64, 64),
        count=2,
    )
    assert other_data.cache_status == "replaced"


def test_a_foreign_file_at_the_cache_path_is_never_overwritten(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "notes.json"
    cache.write_text('{"mine": true}')
    with pytest.raises(MoptError, match="not a mopt calibration cache"):
        int8_quantization_from_onnx(tiny_simplified_onnx, tmp_path / "o.onnx", synthetic=2, calib_cache=cache, **SMALL)
    assert cache.read_text() == '{"mine": true}' and not (tmp_path / "o.onnx").exists()


def _bad_folder(tmp_path: Path, kind: str) -> Path:
    from PIL import Image

    folder = tmp_path / kind
    folder.mkdir()
    if kind == "empty":
        (folder / "readme.txt").write_text("no images here")
    elif kind == "unreadable":
        Image.new("RGB", (64, 64), (10, 200, 30)).save(folder / "good.png")
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a jpeg")
    elif kind == "tiny":
        Image.new("RGB", (64, 64), (10, 200, 30)).save(folder / "good.png")
        Image.new("RGB", (8, 12), (1, 2, 3)).save(folder / "thumb.png")
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [("empty", "no images"), ("unreadable", "cannot read image .*broken.jpg"), ("tiny", "thumb.png is 8x12 px")],
)
def test_bad_calibration_folders_write_nothing(
    tiny_simplified_onnx: Path, tmp_path: Path, kind: str, message: str
) -> None:
    folder = _bad_folder(tmp_path, kind)
    out, cache = tmp_path / "o.onnx", tmp_path / "c.json"
    with pytest.raises(MoptError, match=message) as info:
        int8_quantization_from_onnx(tiny_simplified_onnx, out, calib_dir=folder, calib_cache=cache, **SMALL)
    assert "\n" not in str(info.value)
    assert not out.exists() and not cache.exists()
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


def test_calibration_size_must_fit_a_fixed_size_model(
    tiny_simplified_onnx: Path, tmp_path: Path, calib_folder: Path
) -> None:
    model = onnx.load(str(tiny_simplified_onnx))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = 64, 64  # fix H x W
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    with pytest.raises(MoptError, match="fixed at 64x64"):
        int8_quantization_from_onnx(fixed, tmp_path / "o.onnx", calib_dir=calib_folder, calib_size=(128, 128))
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either --calib DIR .* or --synthetic N"),
        ({"synthetic": 2, "calib_dir": "x"}, "either --calib DIR .* or --synthetic N"),
        ({"synthetic": 2, "method": "kl"}, "method 'kl' is unknown"),
        ({"synthetic": 0}, "positive number"),
        ({"synthetic": 2, "calib_cache": "cache.txt"}, "must end in .json"),
    ],
)
def test_bad_arguments(tiny_simplified_onnx: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(MoptError, match=message):
        int8_quantization_from_onnx(tiny_simplified_onnx, tmp_path / "o.onnx", **kwargs)
    assert not (tmp_path / "o.onnx").exists()


def test_default_paths_and_input_untouched(tiny_simplified_onnx: Path, tmp_path: Path) -> None:
    source = tmp_path / "m.sim.onnx"
    source.write_bytes(tiny_simplified_onnx.read_bytes())
    before = file_sha256(source)
    path = int8_onnx_from_onnx(source, synthetic=2, method="minmax", size=(64, 64), count=2, calib_size=(64, 64))
    assert path == tmp_path / "m.sim.int8.onnx"
    assert file_sha256(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sim.int8.calib.json", "m.sim.int8.onnx", "m.sim.onnx"]
    with pytest.raises(MoptError, match="already int8"):
        int8_quantization_from_onnx(path, tmp_path / "again.onnx", synthetic=2)


def test_excluded_nodes_stay_float(int8_result, tiny_simplified_onnx: Path) -> None:
    cache = json.loads(int8_result.cache_path.read_text())
    ranges = {k: (lo, hi) for k, (lo, hi) in cache["ranges"].items()}
    convs = [n.name for n in onnx.load(str(tiny_simplified_onnx)).graph.node if n.op_type == "Conv"]
    model = qdq_model_from_ranges(tiny_simplified_onnx, ranges, nodes_to_exclude=convs[:2])
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    for name in convs:
        dequantized = [producers.get(i) == "DequantizeLinear" for i in by_name[name].input[:2]]
        assert dequantized == ([False, False] if name in convs[:2] else [True, True]), name


def test_compare_reports_int8_against_pytorch(int8_result, tiny_checkpoint: Path) -> None:
    from optimize.backends import ModelSources, OnnxRuntimeBackend
    from optimize.checkpoint import IMAGENET
    from optimize.compare import PRECISION_TOLERANCES, Candidate, compare_models, reference_from_checkpoint
    from optimize.images import synthetic_inputs

    inputs = [synthetic_inputs(2, 64, 64, IMAGENET)]
    candidate = Candidate("onnxruntime-cpu-int8", "int8", lambda: OnnxRuntimeBackend(int8_result.path))
    report = compare_models(reference_from_checkpoint(ModelSources(checkpoint=tiny_checkpoint)), [candidate], inputs)
    (result,) = report.candidates
    assert result.precision == "int8" and result.mad_budget == PRECISION_TOLERANCES["int8"].mad
    assert result.passed, result.failures
    assert 0 < result.mad <= 1e-2


def test_cli_quantizes_from_a_folder(tiny_simplified_onnx: Path, calib_folder: Path, tmp_path: Path) -> None:
    from optimize.cli import quantize

    out = tmp_path / "q.onnx"
    args = [str(tiny_simplified_onnx), "--int8", "--calib", str(calib_folder), "--method", "minmax", "-o", str(out)]
    args += ["--calib-cache", str(tmp_path / "c.json"), "--calib-size", "64x64", "--size", "64x64", "--count", "2"]
    result = CliRunner().invoke(quantize.app, args)
    assert result.exit_code == 0, result.output
    assert out.exists() and "cache written" in result.output and "MAD" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--synthetic", "2"], "--int8"),
        (["--int8", "--synthetic", "2", "--calib-size", "big"], "size 'big'"),
    ],
)
def test_cli_errors(tiny_simplified_onnx: Path, tmp_path: Path, args: list[str], message: str) -> None:
    from optimize.cli import quantize

    result = CliRunner().invoke(quantize.app, [str(tiny_simplified_onnx), *args, "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code != 0 and isinstance(result.exception, MoptError)
    assert message in str(result.exception)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_every_calibration_method_meets_the_budget(tiny_simplified_onnx: Path, tmp_path: Path, method: str) -> None:
    result = int8_quantization_from_onnx(
        tiny_simplified_onnx, tmp_path / "o.onnx", synthetic=3, method=method, calib_cache=tmp_path / "c.json", **SMALL
    )
    assert result.method == method and result.cache_status == "written"
    assert json.loads((tmp_path / "c.json").read_text())["key"]["method"] == method
    assert result.checks[0].mad <= INT8_MAD
