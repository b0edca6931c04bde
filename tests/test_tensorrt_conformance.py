"""Every TensorRT name mopt's code uses exists in the TensorRT 10.x API and was not removed in TensorRT 11.

The 10.x API is read from the ``tensorrt-stubs`` type stubs (parsed with ``ast``; TensorRT itself is never
imported). The stubs cannot be a plain dependency: the package requires ``tensorrt==10.13.0.35``, whose wheel only
downloads TensorRT from NVIDIA's own index. ``make setup`` therefore fetches the wheel without its dependencies
into ``.venv/share/mopt/`` (``MOPT_TENSORRT_STUBS`` points elsewhere). How uses are found and what the walk cannot
see: ``tests/tensorrt_conformance.py``. The TensorRT 11 removals: ``tests/data/tensorrt11_removed.txt``.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
import sys
from pathlib import Path

import pytest
import tensorrt_conformance as tc
from trt_standin import make_tensorrt

from optimize import tensorrt_api

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "optimize"
STUBS_VERSION = "10.13.0.35.1"
REMOVED_IN_11 = tc.read_name_list(Path(__file__).parent / "data" / "tensorrt11_removed.txt")

# Names only the TensorRT 10.x route may touch, each with where the 11.x route is kept away from it.
ALLOWED_10X_ONLY = {
    "BuilderFlag.FP16": "--route builder-flag: engine.build_route refuses it on 11.x before anything is built",
}

# Every lookup by a name from data, mapped to the names that can reach it (checked by the code at run time).
DYNAMIC_SITES = {
    ("BuilderFlag", "optimize.tensorrt_api._builder_flag"): tensorrt_api.BUILDER_FLAG_NAMES,
    ("NetworkDefinitionCreationFlag", "optimize.tensorrt_api._network_flag_bits"): tensorrt_api.NETWORK_FLAG_NAMES,
    ("DataType", "optimize.tensorrt_api.dtype_name"): tuple(tensorrt_api.DTYPE_NAMES),
}

# Uses outside optimize/tensorrt_api.py: finding out which TensorRT is installed, nothing more.
OUTSIDE_THE_API_MODULE = {("optimize/engine.py", "__version__"), ("optimize/engine.py", "Builder")}


def stubs_source() -> Path:
    """The tensorrt-stubs wheel or installed folder; fails (CI must run this) with how to get it."""
    candidates = []
    if os.environ.get("MOPT_TENSORRT_STUBS"):
        candidates.append(Path(os.environ["MOPT_TENSORRT_STUBS"]))
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
        candidates.append(Path(dist.locate_file("")))
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates += sorted((Path(sys.prefix) / "share" / "mopt").glob("tensorrt_stubs-*.whl"), reverse=True)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pytest.fail(
        "tensorrt-stubs not found: run `make setup`, or `pip download --no-deps --dest .venv/share/mopt "
        f"tensorrt-stubs=={STUBS_VERSION}` (or set MOPT_TENSORRT_STUBS to the wheel)"
    )


@pytest.fixture(scope="module")
def api() -> tc.StubAPI:
    return tc.load_stubs(stubs_source())


@pytest.fixture(scope="module")
def found(api: tc.StubAPI) -> tuple[list[tc.Use], list[tc.DynamicSite]]:
    return tc.collect(api, PACKAGE)


def expand_dynamic(sites: list[tc.DynamicSite]) -> tuple[list[tc.Use], list[str]]:
    uses, unmapped = [], []
    for site in sites:
        names = DYNAMIC_SITES.get((site.owner, site.function))
        if names is None:
            unmapped.append(f"{site.file}:{site.line}: getattr({site.owner}, <name from data>) in {site.function}")
            continue
        uses += [tc.Use(site.owner, name, site.file, site.line) for name in names]
    return uses, unmapped


def test_every_tensorrt_name_mopt_uses_is_in_10x_and_not_removed_in_11(api, found) -> None:
    uses, sites = found
    dynamic_uses, unmapped = expand_dynamic(sites)
    assert unmapped == [], "map each of these to the names the code allows there (DYNAMIC_SITES)"
    assert tc.problems(api, uses + dynamic_uses, REMOVED_IN_11, ALLOWED_10X_ONLY) == []
    assert api.version.startswith("10.")


def test_the_walk_really_finds_the_calls(found) -> None:
    """Uses reached only through flow (return types, annotations, self attributes) are found, not just trt.X."""
    uses, sites = found
    names = {u.qualname for u in uses}
    for expected in (
        "Builder.build_serialized_network",  # builder = create_builder(...) -> tensorrt.Builder
        "IBuilderConfig.set_timing_cache",  # a parameter annotated tensorrt.IBuilderConfig
        "IBuilderConfig.builder_optimization_level",  # a property written
        "ITimingCache.serialize",  # config.get_timing_cache() -> ITimingCache, from the stubs' return type
        "IOptimizationProfile.set_shape",  # builder.create_optimization_profile()
        "IExecutionContext.set_optimization_profile_async",  # self.context in another method
        "IExecutionContext.execute_async_v3",
        "ICudaEngine.device_memory_size_v2",
        "ICudaEngine.get_tensor_profile_shape",
        "Runtime.deserialize_cuda_engine",
        "OnnxParser.parse_from_file",
        "ITensor.name",  # network.get_input(0).name
        "ILogger.ERROR",
        "TensorIOMode.INPUT",
        "MemoryPoolType.WORKSPACE",
    ):
        assert expected in names, expected
    assert {(s.owner, s.function) for s in sites} == set(DYNAMIC_SITES)
    assert len(names) >= 50


def test_tensorrt_is_used_only_through_the_api_module(found) -> None:
    uses, _ = found
    outside = {(u.file, u.name) for u in uses if u.file != "optimize/tensorrt_api.py"}
    assert outside <= OUTSIDE_THE_API_MODULE
    assert tc.naming_violations(PACKAGE) == []


def test_the_allowed_10x_names_are_removed_in_11_and_used(api, found) -> None:
    uses, sites = found
    dynamic_uses, _ = expand_dynamic(sites)
    used = {u.qualname for u in uses + dynamic_uses}
    for name in ALLOWED_10X_ONLY:
        assert name in REMOVED_IN_11 and name in used, f"{name}: drop it from ALLOWED_10X_ONLY"


def test_the_removed_list_names_real_10x_api(api) -> None:
    for qualname in REMOVED_IN_11:
        owner, _, name = qualname.rpartition(".")
        assert api.lookup(owner or tc.MODULE, name)[0], f"{qualname} is not in 10.x: a typo in the removed list?"


# --- the check fails when it should ---------------------------------------------------------------------------

BAD_CODE = '''
from __future__ import annotations
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import tensorrt

def build(trt, config: tensorrt.IBuilderConfig):
    builder = trt.Builder(None)
    network = builder.create_network(0)
    config.set_flag(trt.BuilderFlag.FP61)            # misspelt
    config.int8_calibrator = None                     # removed in 11, not allowed
    calibrator = trt.IInt8EntropyCalibrator2()        # removed in 11, not allowed
    network.get_input(0).nmae                         # misspelt, found through two return types
    config.set_flag(trt.BuilderFlag.FP16)             # removed in 11, allowed for the 10.x route
    return getattr(trt.BuilderFlag, name_from_data)
'''


def test_misspelt_and_removed_names_are_reported(api) -> None:
    uses, sites = tc.collect_source(api, BAD_CODE, "bad.py")
    found = tc.problems(api, uses, REMOVED_IN_11, ALLOWED_10X_ONLY)
    assert any("bad.py:10: BuilderFlag.FP61 is not in the TensorRT 10.13" in p for p in found)
    assert any("bad.py:13: ITensor.nmae is not in the TensorRT" in p for p in found)
    assert any("bad.py:11: IBuilderConfig.int8_calibrator was removed in TensorRT 11" in p for p in found)
    assert any("bad.py:12: IInt8EntropyCalibrator2 was removed in TensorRT 11" in p for p in found)
    assert not any("FP16" in p for p in found)
    assert len(found) == 4
    # Without the allowance the 10.x-only flag is reported as well.
    assert any("BuilderFlag.FP16 was removed" in p for p in tc.problems(api, uses, REMOVED_IN_11, {}))
    # The lookup by a name from data is a site the test has not mapped.
    _, unmapped = expand_dynamic(sites)
    assert len(unmapped) == 1 and "getattr(BuilderFlag, <name from data>)" in unmapped[0]


def test_tensorrt_bound_to_another_name_is_reported(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("import tensorrt as rt\n")
    (package / "b.py").write_text("from optimize.deps import require\nengine_lib = require('tensorrt')\n")
    (package / "c.py").write_text("trt = require('tensorrt')\nhint = install_hint('tensorrt')\n")
    problems = tc.naming_violations(package)
    assert len(problems) == 2 and "a.py:1" in problems[0] and "b.py:2" in problems[1]


def test_the_stand_in_invents_no_api(api) -> None:
    """The CPU stand-in (tests/trt_standin.py) only has members the real 10.x API has."""
    trt = make_tensorrt("10.13.0.35")
    invented = []
    for name, value in vars(trt).items():
        if name.startswith("_") or name == "calls":
            continue
        if not api.lookup(tc.MODULE, name)[0]:
            invented.append(name)
            continue
        if isinstance(value, type) and issubclass(value, enum.Enum):
            invented += [f"{name}.{m}" for m in value.__members__ if not api.lookup(name, m)[0]]
        elif isinstance(value, type):
            invented += [f"{name}.{m}" for m in vars(value) if not m.startswith("_") and not api.lookup(name, m)[0]]
    assert invented == []
