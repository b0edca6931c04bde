"""Triton model repositories: config.pbtxt parsed with Triton's own ModelConfig protobuf and checked field by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from optimize.cli import deploy as deploy_cli
from optimize.deploy import (
    DEFAULT_ONNX_MAX_BATCH,
    InstanceKind,
    read_model_config,
    triton_repository_from_model,
)
from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.onnx_model import onnx_normalization

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")

# The fields of a `mopt build-engine` sidecar that deploy reads (optimize.engine.sidecar_from_build writes more).
SIDECAR = {
    "schema": 1,
    "precision": "fp16",
    "profiles": [{"min": [1, 3, 256, 256], "opt": [4, 3, 512, 512], "max": [8, 3, 1024, 1024]}],
    "tensorrt_version": "11.0.0",
    "onnx_sha256": "ab" * 32,
    "gpu": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
}


def make_engine(
    folder: Path, sidecar: dict | None = SIDECAR, name: str = "cvunet.sim.fp16", content: bytes = b"engine"
) -> Path:
    """A stand-in engine (opaque bytes: nothing here deserializes it) with its sidecar, hash included."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / f"{name}.plan"
    plan.write_bytes(b"\x00serialized-" + content + b"\x01" * 64)
    if sidecar is not None:
        (folder / f"{name}.json").write_text(json.dumps(dict(sidecar, engine_sha256=file_sha256(plan))))
    return plan


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_engine_repository_matches_sidecar(tmp_path: Path) -> None:
    plan = make_engine(tmp_path / "engines")
    folder = triton_repository_from_model(plan, tmp_path / "repo")

    assert folder == tmp_path / "repo" / "cvunet"
    assert tree(tmp_path / "repo") == ["cvunet", "cvunet/1", "cvunet/1/model.plan", "cvunet/config.pbtxt"]
    assert (folder / "1" / "model.plan").read_bytes() == plan.read_bytes()

    config = read_model_config(folder / "config.pbtxt")
    profile = SIDECAR["profiles"][0]
    assert config.name == "cvunet"
    assert config.platform == "tensorrt_plan" and config.backend == "tensorrt"
    assert config.max_batch_size == profile["max"][0]
    (inp,) = config.input
    (out,) = config.output
    assert (inp.name, list(inp.dims), inp.data_type) == ("input", [3, -1, -1], model_config_pb2.TYPE_FP32)
    assert (out.name, list(out.dims), out.data_type) == ("alpha", [1, -1, -1], model_config_pb2.TYPE_FP32)
    assert list(config.dynamic_batching.preferred_batch_size) == [profile["opt"][0], profile["max"][0]]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 1
    assert list(group.profile) == []  # one profile: the backend's default (profile 0) is the right one
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["mopt.precision"] == "fp16"
    assert params["mopt.tensorrt_version"] == SIDECAR["tensorrt_version"]
    assert params["mopt.onnx_sha256"] == SIDECAR["onnx_sha256"]
    assert params["mopt.engine_sha256"] == file_sha256(plan)
    assert params["mopt.compute_capability"] == "9.0"


def test_engine_normalization_comes_from_its_onnx(tiny_onnx: Path, tmp_path: Path) -> None:
    plan = make_engine(tmp_path / "engines", dict(SIDECAR, onnx=str(tiny_onnx)))
    config = read_model_config(triton_repository_from_model(plan, tmp_path / "repo") / "config.pbtxt")
    recorded = json.loads(config.parameters["mopt.normalization"].string_value)
    assert recorded == onnx_normalization(tiny_onnx).to_dict()


def test_several_profiles_fit_the_smallest_and_list_all(tmp_path: Path) -> None:
    sidecar = dict(SIDECAR, profiles=[
        {"min": [1, 3, 512, 512], "opt": [2, 3, 512, 512], "max": [4, 3, 512, 512]},
        {"min": [1, 3, 512, 512], "opt": [8, 3, 512, 512], "max": [16, 3, 512, 512]},
    ])
    folder = triton_repository_from_model(make_engine(tmp_path, sidecar), tmp_path / "repo")
    config = read_model_config(folder / "config.pbtxt")
    # Triton sizes buffers for max_batch_size on every profile an instance uses: the smallest max wins.
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    # Every profile fixes H and W to 512: the config says so instead of -1.
    assert list(config.input[0].dims) == [3, 512, 512]
    assert list(config.output[0].dims) == [1, 512, 512]
    assert list(config.instance_group[0].profile) == ["0", "1"]


def test_max_batch_option_is_bounded_by_the_profile(tmp_path: Path) -> None:
    plan = make_engine(tmp_path)
    config = read_model_config(triton_repository_from_model(plan, tmp_path / "a", max_batch=4) / "config.pbtxt")
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    with pytest.raises(MoptError, match="exceeds the engine's profile max batch 8"):
        triton_repository_from_model(plan, tmp_path / "b", max_batch=9)
    assert not (tmp_path / "b").exists()


def test_engine_errors(tmp_path: Path) -> None:
    with pytest.raises(MoptError, match="has no sidecar"):
        triton_repository_from_model(make_engine(tmp_path / "x", sidecar=None), tmp_path / "repo")
    bad = make_engine(tmp_path / "y", dict(SIDECAR, profiles=[{"min": [2, 3, 64, 64], "opt": [2, 3, 64, 64],
                                                               "max": [4, 3, 64, 64]}]))
    with pytest.raises(MoptError, match="min batch of 1"):
        triton_repository_from_model(bad, tmp_path / "repo")
    broken = make_engine(tmp_path / "z", dict(SIDECAR, profiles=[{"min": [1, 3, 64, 64], "opt": [4, 3, 64, 64],
                                                                  "max": [2, 3, 64, 64]}]))
    with pytest.raises(MoptError, match="opt 4 > max 2"):
        triton_repository_from_model(broken, tmp_path / "repo")
    stale = make_engine(tmp_path / "u")
    stale.write_bytes(b"rebuilt without its sidecar")
    with pytest.raises(MoptError, match="describes another engine"):
        triton_repository_from_model(stale, tmp_path / "repo")
    with pytest.raises(MoptError, match="GPU only"):
        triton_repository_from_model(make_engine(tmp_path / "w"), tmp_path / "repo", instance_kind=InstanceKind.cpu)
    unknown = tmp_path / "model.bin"
    unknown.write_bytes(b"1234")
    with pytest.raises(MoptError, match="neither a TensorRT engine"):
        triton_repository_from_model(unknown, tmp_path / "repo")
    with pytest.raises(MoptError, match="does not exist"):
        triton_repository_from_model(tmp_path / "missing.onnx", tmp_path / "repo")
    with pytest.raises(MoptError, match="model name"):
        triton_repository_from_model(make_engine(tmp_path / "v"), tmp_path / "repo", name="bad/name")
    assert not (tmp_path / "repo").exists()


def test_onnx_repository(tiny_onnx: Path, tmp_path: Path) -> None:
    folder = triton_repository_from_model(tiny_onnx, tmp_path / "repo", name="tiny", instance_kind=InstanceKind.cpu)
    config = read_model_config(folder / "config.pbtxt")
    assert (folder / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == DEFAULT_ONNX_MAX_BATCH
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [1, -1, -1]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [DEFAULT_ONNX_MAX_BATCH // 2, DEFAULT_ONNX_MAX_BATCH]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    params = {k: v.string_value for k, v in config.parameters.items()}
    # A client of the raw-tensor model must normalize exactly as the export did: the config tells it how.
    assert json.loads(params["mopt.normalization"]) == onnx_normalization(tiny_onnx).to_dict()
    assert params["mopt.precision"] == "fp32"


def test_static_batch_onnx_does_not_batch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from optimize.export import onnx_from_checkpoint

    static = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "static.onnx", static_batch=True).path
    config = read_model_config(triton_repository_from_model(static, tmp_path / "repo") / "config.pbtxt")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 3, -1, -1]
    assert not config.HasField("dynamic_batching")
    with pytest.raises(MoptError, match="fixed batch of 1"):
        triton_repository_from_model(static, tmp_path / "repo2", max_batch=4)


def test_existing_model_needs_force_and_other_models_stay(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    (repo / "other" / "config.pbtxt").write_text('name: "other"\n')
    first = make_engine(tmp_path / "e1")
    triton_repository_from_model(first, repo)
    second = make_engine(tmp_path / "e2", dict(SIDECAR, precision="int8"), content=b"another engine")
    with pytest.raises(MoptError, match="already exists; pass --force"):
        triton_repository_from_model(second, repo)
    assert (repo / "cvunet" / "1" / "model.plan").read_bytes() == first.read_bytes()

    triton_repository_from_model(second, repo, force=True)
    assert (repo / "cvunet" / "1" / "model.plan").read_bytes() == second.read_bytes() != first.read_bytes()
    params = read_model_config(repo / "cvunet" / "config.pbtxt").parameters
    assert params["mopt.precision"].string_value == "int8"
    assert (repo / "other" / "config.pbtxt").read_text() == 'name: "other"\n'
    # No staging or backup folder is left beside or inside the repository.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1", "e2", "repo"]
    assert sorted(p.name for p in repo.iterdir()) == ["cvunet", "other"]


def test_cli_writes_repository_and_reports_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    plan = make_engine(tmp_path / "engines")
    result = runner.invoke(deploy_cli.app, ["triton", str(plan), "-o", str(tmp_path / "repo"), "--name", "matte"])
    assert result.exit_code == 0, result.output
    assert "max batch 8" in result.output
    config = read_model_config(tmp_path / "repo" / "matte" / "config.pbtxt")
    assert config.name == "matte"

    result = runner.invoke(deploy_cli.app, ["triton", str(plan), "-o", str(tmp_path / "repo"), "--name", "matte"])
    assert result.exit_code != 0
    assert isinstance(result.exception, MoptError) and "--force" in str(result.exception)
