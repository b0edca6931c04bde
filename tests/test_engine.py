"""Engine building around TensorRT: version dispatch, the calls each route makes (through a stand-in ``tensorrt``
module), sidecar cache keys and reuse, mismatch messages, and the skip path on a machine without GPU/TensorRT."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from trt_standin import ENGINE_MAGIC, make_tensorrt
from typer.testing import CliRunner

from optimize import engine as engine_mod
from optimize import tensorrt_api
from optimize.cli import build_engine as build_engine_cli
from optimize.engine import (
    EngineRequest,
    MachineInfo,
    build_route,
    cache_key,
    default_build_onnx,
    default_engine_path,
    engine_from_onnx,
    engine_io_from_sidecar,
    load_engine_checked,
    onnx_weight_bytes,
    read_sidecar,
    sidecar_mismatch,
    tensorrt_unavailable_reason,
)
from optimize.errors import MoptError
from optimize.onnx_model import read_metadata, set_metadata
from optimize.profiles import DEFAULT_PROFILE, ShapeProfile

H100 = MachineInfo(
    gpu=True, gpu_name="NVIDIA H100", compute_capability="9.0", driver="580.65", cuda="13.0", tensorrt="11.4.0"
)
SMALL = ShapeProfile((1, 3, 64, 64), (2, 3, 96, 96), (4, 3, 128, 128))


def write_onnx(path: Path, dims: list | None = None, precision: str = "fp32") -> Path:
    """A one-node stand-in for an exported model: input ``input`` N x 3 x H x W, output ``alpha``, mopt metadata."""
    dims = dims or ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["input"], ["alpha"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, {"mopt.precision": precision, "mopt.arch": "cvunet-tiny"})
    onnx.save(model, str(path))
    return path


# --- a stand-in for the tensorrt module (tests/trt_standin.py: the real binding's conventions) ---------------


def fake_tensorrt(version: str, calls: list, **kwargs):
    return make_tensorrt(version, calls, **kwargs)


def names(calls: list) -> list[str]:
    return [c[0] for c in calls]


@pytest.fixture
def gpu_machine(monkeypatch: pytest.MonkeyPatch):
    """Pretend this machine has an H100 and the given TensorRT (a stand-in module); return its call log."""

    def install(version: str = "11.4.0", **kwargs) -> list:
        calls: list = []
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls, **kwargs))
        machine = MachineInfo(**{**H100.to_dict(), "tensorrt": version})
        monkeypatch.setattr(engine_mod, "gpu_environment", lambda: machine)
        return calls

    return install


@pytest.fixture
def fake_precision(monkeypatch: pytest.MonkeyPatch) -> list:
    """A stand-in ``optimize.precision`` whose FP16 conversion copies the model and records fp16 metadata."""
    conversions: list = []

    def fp16_onnx_from_onnx(onnx_path: Path, output: Path | None = None, recipe: Path | None = None) -> Path:
        conversions.append((Path(onnx_path), Path(output), recipe))
        model = onnx.load(str(onnx_path))
        set_metadata(model, {"mopt.precision": "fp16"})
        model.graph.node[0].name = "converted"  # different bytes, so a different sha256
        onnx.save(model, str(output))
        return Path(output)

    monkeypatch.setitem(
        sys.modules, "optimize.precision", types.SimpleNamespace(fp16_onnx_from_onnx=fp16_onnx_from_onnx)
    )
    return conversions


# --- version dispatch -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "precision", "route", "expected"),
    [
        ("11.4.0", "fp16", "graph", ("strongly-typed", True, (), (), ())),
        ("11.0.0", "int8", "graph", ("strongly-typed", True, (), (), ())),
        ("11.4.0", "fp32", "graph", ("strongly-typed", True, (), (), ("TF32",))),
        ("10.13.0.35", "fp16", "graph", ("strongly-typed", True, ("STRONGLY_TYPED",), (), ())),
        ("10.0.1", "int8", "graph", ("strongly-typed", True, ("STRONGLY_TYPED",), (), ())),
        ("10.13.0.35", "fp16", "builder-flag", ("builder-flag", False, (), ("FP16",), ())),
        ("10.8.0", "fp32", "builder-flag", ("strongly-typed", True, ("STRONGLY_TYPED",), (), ("TF32",))),
    ],
)
def test_build_route_per_version(version: str, precision: str, route: str, expected: tuple) -> None:
    chosen = build_route(version, precision, route)
    assert (
        chosen.name,
        chosen.precision_in_graph,
        chosen.network_flags,
        chosen.builder_flags,
        chosen.cleared_flags,
    ) == (expected)
    assert chosen.tensorrt_major == int(version.split(".")[0])


@pytest.mark.parametrize(
    ("version", "precision", "route", "fragment"),
    [
        ("11.4.0", "fp16", "builder-flag", "removed in 11.0"),
        ("10.13.0", "int8", "builder-flag", "explicit Q/DQ"),
        ("8.6.1", "fp16", "graph", "needs 10.0 or newer"),
        ("11.4.0", "bf16", "graph", "not one of fp32, fp16, int8"),
        ("11.4.0", "fp16", "flag", "not one of graph, builder-flag"),
    ],
)
def test_build_route_refuses_what_a_version_lacks(version: str, precision: str, route: str, fragment: str) -> None:
    with pytest.raises(MoptError, match=fragment):
        build_route(version, precision, route)


def test_build_route_accepts_version_tuples_and_parse_version() -> None:
    assert build_route((10, 3, 0), "fp16").network_flags == ("STRONGLY_TYPED",)
    assert tensorrt_api.parse_version("10.13.0.35") == (10, 13, 0)
    assert tensorrt_api.parse_version("11.4") == (11, 4, 0)
    assert tensorrt_api.parse_version("11.0.0rc2") == (11, 0, 0)
    with pytest.raises(MoptError):
        tensorrt_api.parse_version("unknown")


# --- the calls each route makes -------------------------------------------------------------------------------


def spec_for(route, onnx_path: Path, cache: Path | None = None, **kwargs) -> tensorrt_api.BuildSpec:
    if onnx_path.is_dir():
        onnx_path = onnx_path / "m.onnx"
    if not onnx_path.exists():
        write_onnx(onnx_path)
    return tensorrt_api.BuildSpec(
        onnx_path=onnx_path,
        profiles=(SMALL,),
        network_flags=route.network_flags,
        builder_flags=route.builder_flags,
        cleared_flags=route.cleared_flags,
        timing_cache=cache,
        **kwargs,
    )


def test_trt11_route_never_touches_removed_flags(tmp_path: Path) -> None:
    calls: list = []
    trt = fake_tensorrt("11.4.0", calls)
    route = build_route(trt.__version__, "fp16")
    out = tensorrt_api.serialized_engine_from_onnx(trt, spec_for(route, tmp_path / "m.fp16.onnx", opt_level=3))
    assert out.engine.startswith(ENGINE_MAGIC)
    assert ("create_network", 0) in calls  # strongly typed by default: no flag passed
    assert not [c for c in calls if c[0] in ("set_flag", "clear_flag")]
    assert ("parse_from_file", str(tmp_path / "m.fp16.onnx")) in calls
    assert ("add_optimization_profile", {"input": (SMALL.min, SMALL.opt, SMALL.max)}) in calls
    assert ("builder_optimization_level", 3) in calls


def test_trt10_strongly_typed_route_sets_the_network_flag(tmp_path: Path) -> None:
    calls: list = []
    trt = fake_tensorrt("10.13.0.35", calls)
    route = build_route(trt.__version__, "fp16")
    tensorrt_api.serialized_engine_from_onnx(trt, spec_for(route, tmp_path / "m.onnx", workspace_bytes=2 << 30))
    assert ("create_network", 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in calls
    assert not [c for c in calls if c[0] == "set_flag"]
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in calls


def test_trt10_builder_flag_route_sets_fp16_on_a_weakly_typed_network(tmp_path: Path) -> None:
    calls: list = []
    trt = fake_tensorrt("10.13.0.35", calls)
    route = build_route(trt.__version__, "fp16", "builder-flag")
    tensorrt_api.serialized_engine_from_onnx(trt, spec_for(route, tmp_path / "m.onnx"))
    assert ("create_network", 0) in calls
    assert ("set_flag", "FP16") in calls


def test_fp32_clears_tf32_on_both_versions(tmp_path: Path) -> None:
    for version in ("10.13.0", "11.4.0"):
        calls: list = []
        trt = fake_tensorrt(version, calls)
        tensorrt_api.serialized_engine_from_onnx(trt, spec_for(build_route(version, "fp32"), tmp_path / "m.onnx"))
        assert ("clear_flag", "TF32") in calls


def test_a_flag_the_version_lacks_is_a_clear_error_not_an_attribute_error(tmp_path: Path) -> None:
    trt = fake_tensorrt("11.4.0", [])
    spec = tensorrt_api.BuildSpec(onnx_path=write_onnx(tmp_path / "m.onnx"), profiles=(SMALL,), builder_flags=("FP16",))
    with pytest.raises(MoptError, match="no BuilderFlag.FP16"):
        tensorrt_api.serialized_engine_from_onnx(trt, spec)


def test_parse_and_build_failures_are_one_line_errors(tmp_path: Path) -> None:
    route = build_route("11.4.0", "fp32")
    with pytest.raises(MoptError, match="cannot parse .*UNSUPPORTED_NODE"):
        tensorrt_api.serialized_engine_from_onnx(fake_tensorrt("11.4.0", [], parse_ok=False), spec_for(route, tmp_path))
    with pytest.raises(MoptError, match="failed to build.*out of memory while building"):
        tensorrt_api.serialized_engine_from_onnx(fake_tensorrt("11.4.0", [], build_ok=False), spec_for(route, tmp_path))


def test_timing_cache_is_saved_and_loaded_on_the_next_build(tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    route = build_route("11.4.0", "fp16")
    first_calls: list = []
    first = tensorrt_api.serialized_engine_from_onnx(
        fake_tensorrt("11.4.0", first_calls), spec_for(route, tmp_path, cache)
    )
    assert ("create_timing_cache", b"") in first_calls and ("set_timing_cache", False, "11.4.0") in first_calls
    assert first.timing_cache_saved and not first.timing_cache_loaded
    saved = cache.read_bytes()
    assert saved.endswith(b"+timings")
    second_calls: list = []
    second = tensorrt_api.serialized_engine_from_onnx(
        fake_tensorrt("11.4.0", second_calls), spec_for(route, tmp_path, cache)
    )
    assert ("create_timing_cache", saved) in second_calls
    assert second.timing_cache_loaded and not second.warnings
    assert cache.read_bytes().endswith(b"+timings+timings")


# --- cache keys, sidecars, mismatches -------------------------------------------------------------------------


def request(**overrides) -> EngineRequest:
    fields = dict(
        onnx=Path("engines/m.onnx"),
        onnx_sha256="a" * 64,
        source_precision="fp32",
        precision="fp16",
        profiles=(DEFAULT_PROFILE,),
        route="strongly-typed",
        timing_cache=Path("engines/timing.cache"),
    )
    return EngineRequest(**{**fields, **overrides})


def test_cache_key_depends_on_what_changes_the_engine_only() -> None:
    base = cache_key(request(), "11.4.0", "9.0")
    assert base == cache_key(request(), "11.4.0", "9.0")
    # Paths and the timing cache do not change what is built.
    assert base == cache_key(request(onnx=Path("elsewhere/copy.onnx"), timing_cache=None), "11.4.0", "9.0")
    for changed in (
        cache_key(request(precision="int8"), "11.4.0", "9.0"),
        cache_key(request(profiles=(SMALL,)), "11.4.0", "9.0"),
        cache_key(request(onnx_sha256="b" * 64), "11.4.0", "9.0"),
        cache_key(request(opt_level=5), "11.4.0", "9.0"),
        cache_key(request(workspace_gib=4.0), "11.4.0", "9.0"),
        cache_key(request(recipe_sha256="c" * 64), "11.4.0", "9.0"),
        cache_key(request(), "11.4.1", "9.0"),
        cache_key(request(), "11.4.0", "8.9"),
    ):
        assert changed != base


def sidecar(**overrides) -> dict:
    return {
        "compute_capability": "9.0",
        "tensorrt_version": "11.4.0",
        "precision": "fp16",
        "onnx": "engines/cvunet.sim.onnx",
        **overrides,
    }


def test_sidecar_matching_this_machine_has_no_mismatch() -> None:
    assert sidecar_mismatch(sidecar(), H100) is None
    assert sidecar_mismatch(sidecar(), MachineInfo(**{**H100.to_dict(), "driver": "999.1"})) is None


def test_sidecar_mismatch_messages_say_what_and_how_to_rebuild() -> None:
    ada = MachineInfo(**{**H100.to_dict(), "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    message = sidecar_mismatch(sidecar(), ada)
    assert message.startswith("engine built for sm_90 with TensorRT 11.4.0; this GPU is sm_89 (NVIDIA L4)")
    assert "rebuild it here with `mopt build-engine engines/cvunet.sim.onnx --fp16 --force`" in message

    older = MachineInfo(**{**H100.to_dict(), "tensorrt": "10.13.0.35"})
    assert "this machine has TensorRT 10.13.0.35" in sidecar_mismatch(sidecar(), older)
    both = sidecar_mismatch(sidecar(), MachineInfo(**{**ada.to_dict(), "tensorrt": "10.13.0.35"}))
    assert "sm_89" in both and "10.13.0.35" in both

    assert "no NVIDIA GPU" in sidecar_mismatch(sidecar(), MachineInfo(gpu=False))
    assert "pip install 'mopt[tensorrt]'" in sidecar_mismatch(
        sidecar(), MachineInfo(**{**H100.to_dict(), "tensorrt": None})
    )


def test_unavailable_reason_names_what_is_missing() -> None:
    assert tensorrt_unavailable_reason(H100) is None
    no_trt = tensorrt_unavailable_reason(MachineInfo(**{**H100.to_dict(), "tensorrt": None}))
    assert no_trt == "TensorRT not installed: pip install 'mopt[tensorrt]' on a machine with an NVIDIA GPU"
    assert "no NVIDIA GPU" in tensorrt_unavailable_reason(MachineInfo(gpu=False, tensorrt="10.13.0"))
    both = tensorrt_unavailable_reason(MachineInfo(gpu=False))
    assert "no NVIDIA GPU" in both and "pip install 'mopt[tensorrt]'" in both
    assert "too old" in tensorrt_unavailable_reason(MachineInfo(**{**H100.to_dict(), "tensorrt": "8.6.1"}))


def test_this_machine_reports_why_tensorrt_cannot_run() -> None:
    machine = engine_mod.gpu_environment()
    if machine.gpu and machine.tensorrt:
        pytest.skip("this machine has a GPU and TensorRT")
    reason = tensorrt_unavailable_reason()
    assert reason and "\n" not in reason


# --- engine_from_onnx orchestration with the stand-in module --------------------------------------------------


def test_build_writes_engine_and_sidecar_then_reuses_it(tmp_path: Path, gpu_machine) -> None:
    calls = gpu_machine("11.4.0")
    model = write_onnx(tmp_path / "m.onnx")
    result = engine_from_onnx(model, profiles=[SMALL], precision="fp32")
    assert result.path == tmp_path / "m.fp32.plan" and not result.reused
    assert result.path.read_bytes().startswith(ENGINE_MAGIC)
    data = read_sidecar(result.path)
    assert data == result.sidecar
    for key in ("tensorrt_version", "gpu", "compute_capability", "driver", "onnx_sha256", "precision", "profiles"):
        assert data[key] is not None
    assert data["tensorrt_version"] == "11.4.0" and data["compute_capability"] == "9.0"
    assert data["profiles"] == [SMALL.to_dict()] and data["route"] == "strongly-typed"
    assert data["builder"]["cleared_flags"] == ["TF32"] and data["builder"]["opt_level"] == 3
    assert data["built_onnx_sha256"] == data["onnx_sha256"]
    assert (tmp_path / "timing-trt11.4.0-sm_90.cache").is_file()
    assert names(calls).count("build_serialized_network") == 1

    again = engine_from_onnx(model, profiles=[SMALL], precision="fp32")
    assert again.reused and names(calls).count("build_serialized_network") == 1

    forced = engine_from_onnx(model, profiles=[SMALL], precision="fp32", force=True)
    assert not forced.reused and names(calls).count("build_serialized_network") == 2
    # The second build loaded the timing cache the first one saved.
    assert any(c[0] == "create_timing_cache" and c[1] for c in calls)

    engine_from_onnx(model, profiles=[DEFAULT_PROFILE], precision="fp32")
    assert names(calls).count("build_serialized_network") == 3


def test_a_changed_engine_file_is_rebuilt(tmp_path: Path, gpu_machine) -> None:
    calls = gpu_machine("11.4.0")
    model = write_onnx(tmp_path / "m.onnx")
    result = engine_from_onnx(model, profiles=[SMALL])
    result.path.write_bytes(b"something else")
    assert not engine_from_onnx(model, profiles=[SMALL]).reused
    assert names(calls).count("build_serialized_network") == 2


def test_fp16_on_trt11_converts_the_graph_and_builds_it_strongly_typed(
    tmp_path: Path, gpu_machine, fake_precision
) -> None:
    calls = gpu_machine("11.4.0")
    model = write_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    result = engine_from_onnx(model, precision="fp16", profiles=[SMALL])
    assert result.path == tmp_path / "m.fp16.plan"
    ((source, converted, recipe),) = fake_precision
    assert source == model and recipe is None
    parsed = [c[1] for c in calls if c[0] == "parse_from_file"]
    assert parsed == [str(converted)] and converted.parent != tmp_path  # built from the converted graph
    assert not [c for c in calls if c[0] in ("set_flag", "clear_flag")]
    assert result.sidecar["built_onnx_sha256"] != result.sidecar["onnx_sha256"]
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m.fp16.json",
        "m.fp16.plan",
        "m.onnx",
        "timing-trt11.4.0-sm_90.cache",
    ]


def test_fp16_builder_flag_route_on_trt10_builds_the_fp32_graph(tmp_path: Path, gpu_machine, fake_precision) -> None:
    calls = gpu_machine("10.13.0.35")
    model = write_onnx(tmp_path / "m.onnx")
    result = engine_from_onnx(model, precision="fp16", route="builder-flag", profiles=[SMALL])
    assert fake_precision == []
    assert [c[1] for c in calls if c[0] == "parse_from_file"] == [str(model)]
    assert ("set_flag", "FP16") in calls and ("create_network", 0) in calls
    assert result.sidecar["route"] == "builder-flag" and result.sidecar["builder"]["builder_flags"] == ["FP16"]


def test_builder_flag_route_on_trt11_is_refused_before_building(tmp_path: Path, gpu_machine) -> None:
    calls = gpu_machine("11.4.0")
    with pytest.raises(MoptError, match="removed in 11.0"):
        engine_from_onnx(write_onnx(tmp_path / "m.onnx"), precision="fp16", route="builder-flag", profiles=[SMALL])
    assert "build_serialized_network" not in names(calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_fp16_graph_builds_directly(tmp_path: Path, gpu_machine, fake_precision) -> None:
    calls = gpu_machine("11.4.0")
    model = write_onnx(tmp_path / "m.fp16.onnx", precision="fp16")
    result = engine_from_onnx(model, profiles=[SMALL])
    assert result.path == tmp_path / "m.fp16.plan" and result.sidecar["precision"] == "fp16"
    assert fake_precision == [] and [c[1] for c in calls if c[0] == "parse_from_file"] == [str(model)]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"precision": "fp32", "source": "fp16"}, "already fp16"),
        ({"precision": "int8"}, "needs calibration data"),
        ({"precision": "fp16", "output": "m.onnx.out"}, "must end in .plan or .engine"),
        ({"opt_level": 7}, "0..5"),
        ({"workspace_gib": 0}, "positive number of GiB"),
        ({"precision": "fp32", "recipe": "recipe.json"}, "--recipe applies only"),
        ({"precision": "fp16", "calib_synthetic": 8}, "calibration options apply only"),
        ({"profiles": [ShapeProfile((1, 3, 64, 64), (2, 3, 32, 64), (4, 3, 128, 128))]}, r"height \(dim 2\)"),
    ],
)
def test_bad_requests_fail_before_tensorrt_even_on_this_machine(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    kwargs = dict(kwargs)
    model = write_onnx(tmp_path / "m.onnx", precision=kwargs.pop("source", "fp32"))
    if "output" in kwargs:
        kwargs["output"] = tmp_path / kwargs["output"]
    if "recipe" in kwargs:
        kwargs["recipe"] = (tmp_path / kwargs["recipe"]).resolve()
        kwargs["recipe"].write_text("{}")
    with pytest.raises(MoptError, match=fragment):
        engine_from_onnx(model, **kwargs)
    assert not list(tmp_path.glob("*.plan")) and not list(tmp_path.glob("*.cache"))


def test_without_gpu_or_tensorrt_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_mod, "gpu_environment", lambda: MachineInfo(gpu=False))
    model = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(
        MoptError, match=r"cannot build a TensorRT engine: no NVIDIA GPU.*pip install 'mopt\[tensorrt\]'"
    ):
        engine_from_onnx(model, precision="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_default_paths(tmp_path: Path) -> None:
    assert default_engine_path(Path("engines/cvunet.sim.onnx"), "fp16") == Path("engines/cvunet.sim.fp16.plan")
    assert default_engine_path(Path("engines/cvunet.sim.int8.onnx"), "int8") == Path("engines/cvunet.sim.int8.plan")
    write_onnx(tmp_path / "cvunet.onnx")
    fp32 = write_onnx(tmp_path / "cvunet.sim.onnx")
    assert default_build_onnx("fp16", tmp_path) == fp32
    fp16 = write_onnx(tmp_path / "cvunet.sim.fp16.onnx", precision="fp16")
    assert default_build_onnx("fp16", tmp_path) == fp16
    assert default_build_onnx("fp16", tmp_path, converting=True) == fp32
    assert default_build_onnx("int8", tmp_path) == fp32
    assert default_build_onnx(None, tmp_path) == fp32


# --- loading --------------------------------------------------------------------------------------------------


def test_load_checks_the_sidecar_before_deserializing(tmp_path: Path, gpu_machine, monkeypatch) -> None:
    calls = gpu_machine("11.4.0")
    result = engine_from_onnx(write_onnx(tmp_path / "m.onnx"), profiles=[SMALL])
    loaded = load_engine_checked(result.path)
    assert loaded.engine.num_io_tensors == 2 and loaded.precision == "fp32"

    l4 = MachineInfo(**{**H100.to_dict(), "gpu_name": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(MoptError, match="built for sm_90 with TensorRT 11.4.0; this GPU is sm_89"):
        load_engine_checked(result.path, machine=l4)

    result.path.write_bytes(b"replaced")
    with pytest.raises(MoptError, match="changed after its sidecar"):
        load_engine_checked(result.path)
    # One deserialization to describe the engine for its sidecar, one to load it.
    assert names(calls).count("deserialize_cuda_engine") == 2


def test_load_without_sidecar_or_file(tmp_path: Path, gpu_machine) -> None:
    gpu_machine("11.4.0")
    bare = tmp_path / "other.plan"
    bare.write_bytes(tensorrt_api.serialized_engine_from_onnx(
        sys.modules["tensorrt"], spec_for(build_route("11.4.0", "fp32"), tmp_path / "other.onnx")
    ).engine)
    assert load_engine_checked(bare).sidecar is None
    garbage = tmp_path / "garbage.plan"
    garbage.write_bytes(b"from elsewhere")
    with pytest.raises(MoptError, match="could not deserialize the engine: Serialization assertion"):
        load_engine_checked(garbage)
    with pytest.raises(MoptError, match="does not exist"):
        load_engine_checked(tmp_path / "missing.plan")
    (tmp_path / "broken.plan").write_bytes(b"x")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(MoptError, match="not valid JSON"):
        load_engine_checked(tmp_path / "broken.plan")


def test_profile_lookup_of_an_execution_session() -> None:
    session = object.__new__(tensorrt_api.ExecutionSession)
    session.profiles = [SMALL, DEFAULT_PROFILE]
    assert session.profile_for((1, 3, 64, 64)) == 0
    assert session.profile_for((8, 3, 1024, 1024)) == 1
    with pytest.raises(MoptError, match=r"input 16x3x512x512 is outside the engine's profiles .*--profile"):
        session.profile_for((16, 3, 512, 512))


# --- the command ----------------------------------------------------------------------------------------------


def test_cli_on_a_machine_without_gpu_exits_1_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    machine = engine_mod.gpu_environment()
    if machine.gpu and machine.tensorrt:
        pytest.skip("this machine can build engines")
    model = write_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(build_engine_cli.app, [str(model), "--fp16"])
    assert result.exit_code == 1
    assert isinstance(result.exception, MoptError)
    message = str(result.exception)
    assert "\n" not in message and "cannot build a TensorRT engine" in message
    assert "pip install 'mopt[tensorrt]'" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_reports_shape_mistakes_first(tmp_path: Path) -> None:
    model = write_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(
        build_engine_cli.app, [str(model), "--fp16", "--min", "1x3x512x512", "--opt", "1x3x256x256"]
    )
    assert result.exit_code == 1 and "height (dim 2) has min 512 > opt 256" in str(result.exception)
    result = CliRunner().invoke(build_engine_cli.app, [str(model), "--fp16", "--int8"])
    assert result.exit_code == 1 and "give one of --fp32, --fp16, --int8" in str(result.exception)


def test_cli_builds_with_the_stand_in_module_and_uses_engines_dir_by_default(
    in_tmp: Path, gpu_machine, fake_precision
) -> None:
    calls = gpu_machine("11.4.0")
    (in_tmp / "engines").mkdir()
    write_onnx(in_tmp / "engines" / "cvunet.onnx")
    shutil.copy(in_tmp / "engines" / "cvunet.onnx", in_tmp / "engines" / "cvunet.sim.onnx")
    args = ["--fp16", "--profile", "1x3x64x64:2x3x96x96:4x3x128x128", "--workspace", "2", "--opt-level", "4"]
    result = CliRunner().invoke(build_engine_cli.app, args)
    assert result.exit_code == 0, result.output
    assert "built engines/cvunet.sim.fp16.plan" in result.output
    data = json.loads((in_tmp / "engines" / "cvunet.sim.fp16.json").read_text())
    assert data["onnx"] == "engines/cvunet.sim.onnx" and data["builder"]["workspace_gib"] == 2.0
    assert ("builder_optimization_level", 4) in calls
    again = CliRunner().invoke(build_engine_cli.app, args)
    assert again.exit_code == 0 and "reused engines/cvunet.sim.fp16.plan" in again.output
    assert read_metadata(in_tmp / "engines" / "cvunet.sim.onnx")["mopt.precision"] == "fp32"


# --- the engine's I/O in the sidecar ----------------------------------------------------------------------------


def test_the_sidecar_records_the_engines_io_memory_weights_and_triton(tmp_path: Path, gpu_machine) -> None:
    gpu_machine("10.13.3.9")
    result = engine_from_onnx(write_onnx(tmp_path / "m.onnx"), profiles=[SMALL, DEFAULT_PROFILE], precision="fp32")
    data = result.sidecar
    assert data["schema"] == 2
    assert data["io"]["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": [-1, 3, -1, -1], "profiles": [SMALL.to_dict(),
                                                                                      DEFAULT_PROFILE.to_dict()]}
    ]
    assert data["io"]["outputs"] == [{"name": "alpha", "dtype": "float32", "shape": [-1, 3, -1, -1]}]
    assert data["device_memory_bytes"] == 64 << 20 and data["weights_bytes"] == 0  # Sigmoid: no weights
    assert data["triton"] == {"container": "trtllm-python-py3", "releases": ["26.02", "26.01", "25.12", "25.11"]}
    io = engine_io_from_sidecar(data)
    assert (io.input_name, io.output_name, io.input_dtype, io.recorded) == ("input", "alpha", "float32", True)
    assert io.profiles == (SMALL, DEFAULT_PROFILE) and io.output_shape == (-1, 3, -1, -1)


def test_old_sidecars_keep_working_with_mopts_default_names() -> None:
    io = engine_io_from_sidecar({"schema": 1, "profiles": [SMALL.to_dict()]})
    assert (io.input_name, io.output_name, io.input_dtype, io.output_dtype) == ("input", "alpha", "float32", "float32")
    assert io.profiles == (SMALL,) and not io.recorded
    with pytest.raises(MoptError, match="records no 'profiles'"):
        engine_io_from_sidecar({"schema": 1})
    empty = {"inputs": [{"name": "x", "dtype": "float32", "profiles": []}], "outputs": [{"name": "y", "dtype": "f"}]}
    with pytest.raises(MoptError, match="records no profiles for input 'x'"):
        engine_io_from_sidecar({"io": empty})


def test_onnx_weight_bytes_counts_initializers_in_their_stored_type(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT16, [2, 3], [0.0] * 6)],
    )
    path = tmp_path / "w.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert onnx_weight_bytes(path) == 12


def test_type_stubs_alone_are_not_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    # tensorrt-stubs installs a tensorrt/ folder of .pyi files, which imports as an empty namespace package.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    version, why = engine_mod._tensorrt_version()
    assert version is None and "only the tensorrt-stubs type stubs" in why


def test_matte_takes_the_engines_profile_from_its_recorded_io(tmp_path: Path) -> None:
    from optimize.backends import ModelSources
    from optimize.matte import _engine_details

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    io = {
        "inputs": [{"name": "input.1", "dtype": "float32", "shape": [-1, 3, -1, -1], "profiles": [SMALL.to_dict()]}],
        "outputs": [{"name": "mask", "dtype": "float32", "shape": [-1, 1, -1, -1]}],
    }
    (tmp_path / "m.json").write_text(json.dumps({"profiles": [DEFAULT_PROFILE.to_dict()], "io": io}))
    _, limits = _engine_details(ModelSources(engine=plan))
    assert (limits.min_side, limits.max_side, limits.max_batch) == (64, 128, 4)  # SMALL, as the engine has it
    (tmp_path / "m.json").write_text(json.dumps({"profiles": [DEFAULT_PROFILE.to_dict()]}))  # an old sidecar
    _, limits = _engine_details(ModelSources(engine=plan))
    assert (limits.min_side, limits.max_side, limits.max_batch) == (256, 1024, 8)
