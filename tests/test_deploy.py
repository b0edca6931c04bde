"""Triton model repositories: config.pbtxt parsed with Triton's own ModelConfig protobuf and checked field by field."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from trt_standin import make_tensorrt, write_model
from typer.testing import CliRunner

from optimize.cli import deploy as deploy_cli
from optimize.deploy import (
    DEFAULT_ONNX_MAX_BATCH,
    InstanceKind,
    profile_batch_limit,
    read_model_config,
    triton_repository_from_model,
)
from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.onnx_model import onnx_normalization
from optimize.profiles import ShapeProfile
from optimize.triton_releases import releases_for_tensorrt, triton_match

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


def test_several_profiles_reach_the_largest_batch_and_list_all(tmp_path: Path) -> None:
    sidecar = dict(SIDECAR, profiles=[
        {"min": [1, 3, 512, 512], "opt": [2, 3, 512, 512], "max": [4, 3, 512, 512]},
        {"min": [1, 3, 512, 512], "opt": [8, 3, 512, 512], "max": [16, 3, 512, 512]},
    ])
    folder = triton_repository_from_model(make_engine(tmp_path, sidecar), tmp_path / "repo")
    config = read_model_config(folder / "config.pbtxt")
    # Triton runs each batch in the closest listed profile: every batch 1..16 has one, so 16 is accepted.
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16]
    # Every profile fixes H and W to 512: the config says so instead of -1.
    assert list(config.input[0].dims) == [3, 512, 512]
    assert list(config.output[0].dims) == [1, 512, 512]
    assert list(config.instance_group[0].profile) == ["0", "1"]
    text = (folder / "config.pbtxt").read_text()
    assert text.startswith("# Written by mopt") and "max_batch_size 16: the largest B such that every batch" in text


def test_a_gap_in_the_profiles_batch_ranges_stops_the_batch_below_it(tmp_path: Path) -> None:
    sidecar = dict(SIDECAR, profiles=[
        {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]},
        {"min": [8, 3, 64, 64], "opt": [16, 3, 64, 64], "max": [32, 3, 64, 64]},
    ])
    config = read_model_config(triton_repository_from_model(make_engine(tmp_path, sidecar), tmp_path / "r") /
                               "config.pbtxt")
    # Batches 5..7 fit no profile, and the dynamic batcher would form them: stop at 4.
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert profile_batch_limit([ShapeProfile.from_dict(p) for p in sidecar["profiles"]]) == 4
    assert profile_batch_limit([ShapeProfile((2, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))]) == 0


def test_engine_io_names_and_types_come_from_the_sidecar(tmp_path: Path) -> None:
    profile = {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 128, 128]}
    io = {
        "inputs": [{"name": "input.1", "dtype": "float16", "shape": [-1, 3, -1, -1], "profiles": [profile]}],
        "outputs": [{"name": "mask", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
    }
    folder = triton_repository_from_model(make_engine(tmp_path, dict(SIDECAR, profiles=[profile], io=io)),
                                          tmp_path / "repo")
    config = read_model_config(folder / "config.pbtxt")
    assert (config.input[0].name, config.input[0].data_type) == ("input.1", model_config_pb2.TYPE_FP16)
    assert (config.output[0].name, config.output[0].data_type) == ("mask", model_config_pb2.TYPE_FP32)
    assert config.max_batch_size == 4

    broken = make_engine(tmp_path / "b", dict(SIDECAR, io={"inputs": [], "outputs": []}))
    with pytest.raises(MoptError, match="'io' entry that is not one input and one output"):
        triton_repository_from_model(broken, tmp_path / "repo2")
    odd = dict(io, outputs=[{"name": "mask", "dtype": "complex64", "shape": [-1, 1, -1, -1]}])
    with pytest.raises(MoptError, match="output 'mask' has data type 'complex64'"):
        triton_repository_from_model(make_engine(tmp_path / "c", dict(SIDECAR, profiles=[profile], io=odd)),
                                     tmp_path / "repo3")


def test_an_onnx_with_its_own_names_deploys_with_them(tmp_path: Path) -> None:
    model = write_model(tmp_path / "named.onnx", input_name="input.1", output_name="mask")
    folder = triton_repository_from_model(model, tmp_path / "repo", name="named")
    config = read_model_config(folder / "config.pbtxt")  # Triton's own protobuf parses it
    assert (config.input[0].name, list(config.input[0].dims)) == ("input.1", [3, -1, -1])
    assert (config.output[0].name, list(config.output[0].dims)) == ("mask", [1, -1, -1])
    assert config.input[0].data_type == config.output[0].data_type == model_config_pb2.TYPE_FP32
    half = write_model(tmp_path / "half.onnx", input_name="x", output_name="y", dims=["n", 3, 256, 320], elem_type=10)
    config = read_model_config(triton_repository_from_model(half, tmp_path / "repo", name="half") / "config.pbtxt")
    assert config.input[0].data_type == model_config_pb2.TYPE_FP16
    assert list(config.input[0].dims) == [3, 256, 320] and list(config.output[0].dims) == [1, 256, 320]


def test_an_engine_built_from_a_model_with_other_names_deploys_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimize import engine as engine_mod
    from optimize.engine import MachineInfo, engine_from_onnx

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.13.3.9"))
    machine = MachineInfo(gpu=True, gpu_name="NVIDIA H100", compute_capability="9.0", tensorrt="10.13.3.9")
    monkeypatch.setattr(engine_mod, "gpu_environment", lambda: machine)
    model = write_model(tmp_path / "named.onnx", input_name="input.1", output_name="mask")
    profiles = [ShapeProfile((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 128, 128)),
                ShapeProfile((1, 3, 64, 64), (8, 3, 64, 64), (8, 3, 64, 64))]
    built = engine_from_onnx(model, precision="fp32", profiles=profiles)
    assert built.sidecar["io"]["inputs"][0]["name"] == "input.1"
    assert built.sidecar["triton"]["releases"] == ["26.02", "26.01", "25.12", "25.11"]
    config = read_model_config(triton_repository_from_model(built.path, tmp_path / "repo") / "config.pbtxt")
    assert (config.input[0].name, config.output[0].name) == ("input.1", "mask")
    assert config.max_batch_size == 8
    assert config.parameters["mopt.triton_releases"].string_value == "26.02,26.01,25.12,25.11"
    triton_repository_from_model(built.path, tmp_path / "ok", triton_version="25.12")
    with pytest.raises(MoptError, match="Triton 25.10 ships TensorRT 10.11.0.33, which cannot load an engine built "
                                        "with TensorRT 10.13.3.9: serve it with Triton 26.02, 26.01, 25.12, 25.11"):
        triton_repository_from_model(built.path, tmp_path / "bad", triton_version="25.10")
    assert not (tmp_path / "bad").exists()


def test_triton_version_checks(tmp_path: Path) -> None:
    plan = make_engine(tmp_path, dict(SIDECAR, tensorrt_version="10.11.0.33"))
    triton_repository_from_model(plan, tmp_path / "a", triton_version="25.09")
    with pytest.raises(MoptError, match="not a Triton release like 25.11"):
        triton_repository_from_model(plan, tmp_path / "b", triton_version="2.61.0")
    with pytest.raises(MoptError, match="Triton 27.01 is not in mopt's table .*its TensorRT is unknown"):
        triton_repository_from_model(plan, tmp_path / "c", triton_version="27.01")
    unknown = make_engine(tmp_path / "u", {k: v for k, v in SIDECAR.items() if k != "tensorrt_version"})
    with pytest.raises(MoptError, match="does not record its TensorRT version"):
        triton_repository_from_model(unknown, tmp_path / "d", triton_version="25.09")
    # An ONNX runs in any Triton's ONNX Runtime backend: nothing to check.
    assert triton_match("11.4.0").releases == () and "no Triton release in mopt's table" in triton_match(
        "11.4.0"
    ).advice()
    assert "does not record its TensorRT version" in triton_match(None).advice()
    assert releases_for_tensorrt("10.13.0.35") == [] and releases_for_tensorrt("garbage") == []


def test_max_batch_option_is_bounded_by_the_profile(tmp_path: Path) -> None:
    plan = make_engine(tmp_path)
    config = read_model_config(triton_repository_from_model(plan, tmp_path / "a", max_batch=4) / "config.pbtxt")
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    with pytest.raises(MoptError, match="exceeds the largest batch the engine's profiles run from 1 up \\(8\\)"):
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
    # The sidecar's TensorRT (11.0.0) is in no Triton release of the table: the command says what to do.
    assert "no Triton release in mopt's table" in " ".join(result.output.split())
    config = read_model_config(tmp_path / "repo" / "matte" / "config.pbtxt")
    assert config.name == "matte"

    result = runner.invoke(deploy_cli.app, ["triton", str(plan), "-o", str(tmp_path / "repo"), "--name", "matte"])
    assert result.exit_code != 0
    assert isinstance(result.exception, MoptError) and "--force" in str(result.exception)

    matched = make_engine(tmp_path / "m", dict(SIDECAR, tensorrt_version="10.9.0.34"))
    result = runner.invoke(deploy_cli.app, ["triton", str(matched), "-o", str(tmp_path / "r2"), "--triton-version",
                                            "25.04"])
    assert result.exit_code == 0, result.output
    assert "serve it with Triton 25.05, 25.04, 25.03" in " ".join(result.output.split())
    result = runner.invoke(deploy_cli.app, ["triton", str(matched), "-o", str(tmp_path / "r3"), "--triton-version",
                                            "25.06"])
    assert result.exit_code == 1 and "ships TensorRT 10.10.0.31" in str(result.exception)


def test_a_new_version_joins_a_model_with_the_same_io_and_force_replaces_only_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = make_engine(tmp_path / "e1")
    second = make_engine(tmp_path / "e2", dict(SIDECAR, precision="int8"), content=b"another engine")
    triton_repository_from_model(first, repo)
    triton_repository_from_model(second, repo, version=2)  # no --force needed: same inputs and outputs
    assert (repo / "cvunet" / "1" / "model.plan").read_bytes() == first.read_bytes()
    assert (repo / "cvunet" / "2" / "model.plan").read_bytes() == second.read_bytes()
    params = {k: v.string_value for k, v in read_model_config(repo / "cvunet" / "config.pbtxt").parameters.items()}
    assert params["mopt.model.1.sha256"] == file_sha256(first) and params["mopt.model.2.sha256"] == file_sha256(second)
    assert params["mopt.model.2.precision"] == "int8" and params["mopt.model.2.file"] == second.name

    with pytest.raises(MoptError, match=r"cvunet/2 already exists; pass --force to replace that version"):
        triton_repository_from_model(first, repo, version=2)
    triton_repository_from_model(first, repo, version=2, force=True)
    assert (repo / "cvunet" / "1" / "model.plan").read_bytes() == first.read_bytes()  # version 1 kept
    assert (repo / "cvunet" / "2" / "model.plan").read_bytes() == first.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1", "e2", "repo"]  # no staging left


def test_a_model_with_other_io_is_refused_then_replaced_whole_with_force(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    triton_repository_from_model(make_engine(tmp_path / "e1"), repo)
    io = {
        "inputs": [{"name": "input.1", "dtype": "float32", "shape": [-1, 3, -1, -1], "profiles": SIDECAR["profiles"]}],
        "outputs": [{"name": "mask", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
    }
    other = make_engine(tmp_path / "e2", dict(SIDECAR, io=io), content=b"other names")
    with pytest.raises(MoptError, match=r"serves another model \(input input TYPE_FP32.*this one input.1"):
        triton_repository_from_model(other, repo, version=2)
    triton_repository_from_model(other, repo, version=2, force=True)
    assert sorted(p.name for p in (repo / "cvunet").iterdir()) == ["2", "config.pbtxt"]


@pytest.mark.parametrize(("gpu", "kind"), [(False, "KIND_CPU"), (True, "KIND_GPU")])
def test_onnx_instances_run_where_this_machine_can(
    tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool, kind: str
) -> None:
    from optimize import engine as engine_mod

    monkeypatch.setattr(engine_mod, "gpu_environment", lambda: engine_mod.MachineInfo(gpu=gpu))
    result = CliRunner().invoke(deploy_cli.app, ["triton", str(tiny_onnx), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"model: {tiny_onnx} (sha256 {file_sha256(tiny_onnx)[:12]}, cvunet-tiny, fp32)", lines[0]
    config = read_model_config(tmp_path / "repo" / "cvunet" / "config.pbtxt")
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == kind
    assert f"instances: 1 x {kind}" in result.output
    assert config.parameters["mopt.model.1.arch"].string_value == "cvunet-tiny"
    forced = CliRunner().invoke(
        deploy_cli.app, ["triton", str(tiny_onnx), "-o", str(tmp_path / "r2"), "--kind", "gpu" if not gpu else "cpu"]
    )
    assert forced.exit_code == 0, forced.output
    assert "--kind" in forced.output.splitlines()[-2]
