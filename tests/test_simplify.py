import onnx
import pytest

from optimize.errors import MoptError
from optimize.onnx_model import read_metadata
from optimize.simplify import dynamic_dims, op_histogram, simplified_onnx_from_onnx


def test_simplify_shrinks_graph_keeps_dims_and_outputs(tiny_onnx, tiny_simplified_onnx):
    before, after = onnx.load(str(tiny_onnx)), onnx.load(str(tiny_simplified_onnx))
    assert len(after.graph.node) < len(before.graph.node)
    assert dynamic_dims(after) == dynamic_dims(before)
    assert "Identity" not in op_histogram(after)
    assert read_metadata(tiny_simplified_onnx)["mopt.arch"] == "cvunet-tiny"
    assert tiny_simplified_onnx.name == "tiny.sim.onnx"


def test_onnxsim_failure_is_reported_not_hidden(tiny_onnx, tmp_path, monkeypatch):
    import onnxsim

    def broken(model, **kwargs):
        raise RuntimeError("shape inference exploded")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    out = tmp_path / "x.sim.onnx"
    with pytest.raises(MoptError, match="onnxsim failed.*shape inference exploded"):
        simplified_onnx_from_onnx(tiny_onnx, out)
    assert not out.exists()


def test_unvalidated_result_is_refused(tiny_onnx, tmp_path, monkeypatch):
    import onnxsim

    monkeypatch.setattr(onnxsim, "simplify", lambda model, **kw: (model, False))
    with pytest.raises(MoptError, match="could not validate"):
        simplified_onnx_from_onnx(tiny_onnx, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(MoptError, match="not a readable ONNX model"):
        simplified_onnx_from_onnx(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
