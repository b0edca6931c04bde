import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from optimize.checkpoint import load_checkpoint
from optimize.errors import MoptError
from optimize.export import EXPORT_ATOL, onnx_from_checkpoint
from optimize.onnx_model import onnx_normalization, read_metadata


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_export_has_dynamic_dims_names_and_metadata(tiny_onnx, tiny_checkpoint):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["alpha"]
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(model.graph.output[0]) == ["batch", 1, "height", "width"]
    meta = read_metadata(tiny_onnx)
    assert meta["mopt.arch"] == "cvunet-tiny"
    assert meta["mopt.checkpoint_sha256"] == load_checkpoint(tiny_checkpoint).sha256
    assert meta["mopt.precision"] == "fp32"
    assert json.loads(meta["mopt.config"])["encoder"] == "small"
    assert onnx_normalization(tiny_onnx) == load_checkpoint(tiny_checkpoint).normalization


@pytest.mark.parametrize("shape", [(1, 3, 65, 97), (3, 3, 111, 47), (2, 3, 32, 32)])
def test_onnx_agrees_with_pytorch(tiny_onnx, tiny_checkpoint, shape):
    model = load_checkpoint(tiny_checkpoint).model
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    got = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (shape[0], 1, *shape[2:])
    assert np.abs(got - expected).max() <= EXPORT_ATOL


def test_static_batch_fixes_only_batch(tiny_checkpoint, tmp_path):
    result = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "s.onnx", static_batch=True)
    assert _dims(onnx.load(str(result.path)).graph.input[0]) == [1, 3, "height", "width"]
    assert not result.dynamic_batch


def test_default_output_goes_to_engines(tiny_checkpoint, in_tmp):
    result = onnx_from_checkpoint(tiny_checkpoint)
    assert result.path == in_tmp.joinpath("engines", "tiny.onnx").relative_to(in_tmp)
    assert (in_tmp / "engines" / "tiny.onnx").is_file()


def test_disagreement_fails_loudly_and_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import optimize.export as export

    def corrupted(model, path, shapes):
        return [{"shape": list(shapes[0]), "max_abs": 0.5}]

    monkeypatch.setattr(export, "max_abs_vs_torch", corrupted)
    with pytest.raises(MoptError, match="disagrees with PyTorch"):
        onnx_from_checkpoint(tiny_checkpoint, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_bad_opset_and_suffix(tiny_checkpoint, tmp_path):
    with pytest.raises(MoptError, match="opset 9"):
        onnx_from_checkpoint(tiny_checkpoint, tmp_path / "a.onnx", opset=9)
    with pytest.raises(MoptError, match="must end in .onnx"):
        onnx_from_checkpoint(tiny_checkpoint, tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []
