"""ONNX -> TensorRT engine: precision route per TensorRT version, a sidecar that is the cache key, checked loading.

What is decided here, in plain Python (tested on CPU machines):

* the *route* (:func:`build_route`): TensorRT 11 is strongly typed only, so FP16/INT8 must already be in the ONNX
  graph (ModelOpt AutoCast FP16, Q/DQ INT8) and the network is built as written. TensorRT 10.x takes the same
  strongly typed route by default; for FP16 it can instead build the FP32 graph with ``BuilderFlag.FP16``
  (``route="builder-flag"``), which 11.x no longer has. INT8 is always explicit Q/DQ: mopt has no calibrator.
* the *sidecar* JSON beside each engine (TensorRT version, GPU, compute capability, driver, ONNX sha256,
  precision, profiles, the engine's own I/O tensor names, dtypes and per-profile shapes, its activation memory,
  the Triton releases that can load it, builder options, build time, mopt version). Its ``cache_key`` hashes the
  request with the TensorRT version and compute capability: the same request on the same kind of machine reuses
  the engine. Every consumer (deploy, serve, matte, the TensorRT backend) reads the I/O from
  :func:`engine_io_from_sidecar`, which gives older sidecars mopt's own names (``input`` / ``alpha``).
* the *machine check* (:func:`sidecar_mismatch`): engines only run on the GPU architecture and TensorRT version
  they were built with, so loading one elsewhere fails with a message that says so and how to rebuild.

The TensorRT calls themselves are in :mod:`optimize.tensorrt_api`.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from optimize import __version__
from optimize.artifacts import ENGINES_DIR, derived_path, latest_fp32_onnx
from optimize.deps import install_hint
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256, write_json
from optimize.profiles import (
    DEFAULT_PROFILE,
    ShapeProfile,
    onnx_input_dims,
    profile_for_fixed_dims,
    validate_profiles,
)

PRECISIONS = ("fp32", "fp16", "int8")
ROUTES = ("graph", "builder-flag")
ENGINE_SUFFIXES = (".plan", ".engine")
SIDECAR_SCHEMA = 2  # 2: adds "io", "device_memory_bytes", "weights_bytes", "triton"
# What a sidecar without "io" (schema 1) means: mopt's export names and FP32 I/O (AutoCast keeps I/O types).
LEGACY_INPUT_NAME, LEGACY_OUTPUT_NAME, LEGACY_DTYPE = "input", "alpha", "float32"
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; written out so that it is part of the cache key
MIN_TENSORRT_MAJOR = 10  # the name-based tensor API and strongly typed networks


# --- the machine --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineInfo:
    """The GPU and TensorRT of this machine, as far as they can be found without failing.

    Attributes:
        gpu: whether an NVIDIA GPU is visible (through torch CUDA or ``nvidia-smi``).
        gpu_name: e.g. ``"NVIDIA H100 80GB HBM3"``.
        compute_capability: ``"major.minor"``, e.g. ``"9.0"``.
        driver: NVIDIA driver version from ``nvidia-smi``.
        cuda: CUDA runtime version torch was built with.
        tensorrt: installed TensorRT version, ``None`` when it does not import.
        tensorrt_error: why it does not import.
    """

    gpu: bool
    gpu_name: str | None = None
    compute_capability: str | None = None
    driver: str | None = None
    cuda: str | None = None
    tensorrt: str | None = None
    tensorrt_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "driver": self.driver,
            "cuda": self.cuda,
            "tensorrt": self.tensorrt,
        }


def sm_name(compute_capability: str | None) -> str:
    """``"8.9"`` -> ``"sm_89"`` (the name engines and CUDA kernels are built for)."""
    if not compute_capability:
        return "an unknown GPU"
    return "sm_" + compute_capability.replace(".", "")


def _nvidia_smi() -> dict[str, str]:
    """Name, driver and compute capability of GPU 0 from ``nvidia-smi``; empty when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    # compute_cap is a query field only in recent drivers; ask without it when it is refused.
    for fields in (("name", "driver_version", "compute_cap"), ("name", "driver_version")):
        try:
            done = subprocess.run(
                [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return {}
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and lines:
            values = [v.strip() for v in lines[0].split(",")]
            return dict(zip(fields, values, strict=False))  # trailing fields may be missing
    return {}


@functools.lru_cache(maxsize=1)
def _gpu_info() -> dict[str, Any]:
    """The GPU facts; cached because the GPU does not change while the process runs and nvidia-smi is slow."""
    info: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            info.update(name=torch.cuda.get_device_name(0), compute_cap=f"{major}.{minor}", cuda=torch.version.cuda)
    except (ImportError, RuntimeError, AssertionError):  # a CUDA torch without a driver raises while probing
        info = {}
    smi = _nvidia_smi()
    for key in ("name", "compute_cap"):
        info.setdefault(key, smi.get(key))
    info["driver"] = smi.get("driver_version")
    info["gpu"] = bool(info.get("name"))
    return info


def _tensorrt_version() -> tuple[str | None, str | None]:
    try:
        trt = importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        return None, str(exc)
    version = getattr(trt, "__version__", None)
    if version is None or not hasattr(trt, "Builder"):
        # tensorrt-stubs alone leaves a `tensorrt` folder of .pyi files, which imports as an empty namespace
        # package: that is not TensorRT.
        return None, "only the tensorrt-stubs type stubs are installed, not TensorRT itself"
    return str(version), None


def gpu_environment() -> MachineInfo:
    """What this machine has: GPU, compute capability, driver, CUDA and TensorRT; never fails on a CPU machine."""
    gpu = _gpu_info()
    trt_version, trt_error = _tensorrt_version()
    return MachineInfo(
        gpu=gpu["gpu"],
        gpu_name=gpu.get("name"),
        compute_capability=gpu.get("compute_cap"),
        driver=gpu.get("driver"),
        cuda=gpu.get("cuda"),
        tensorrt=trt_version,
        tensorrt_error=trt_error,
    )


def tensorrt_unavailable_reason(machine: MachineInfo | None = None) -> str | None:
    """Why TensorRT engines cannot be built or run here, in one line with the fix; ``None`` when they can."""
    machine = machine or gpu_environment()
    hint = install_hint("tensorrt")
    if not machine.gpu and machine.tensorrt is None:
        return f"no NVIDIA GPU and TensorRT not installed: TensorRT needs an NVIDIA GPU; on a machine with one, {hint}"
    if not machine.gpu:
        return f"no NVIDIA GPU on this machine (TensorRT {machine.tensorrt} is installed but needs a GPU and driver)"
    if machine.tensorrt is None:
        return f"TensorRT not installed: {hint} on a machine with an NVIDIA GPU"
    from optimize.tensorrt_api import parse_version

    if parse_version(machine.tensorrt)[0] < MIN_TENSORRT_MAJOR:
        return f"TensorRT {machine.tensorrt} is too old (mopt needs {MIN_TENSORRT_MAJOR}.0 or newer): {hint} --upgrade"
    return None


# --- the route ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """How a precision reaches TensorRT on one TensorRT version.

    Attributes:
        name: ``"strongly-typed"`` (precision written in the ONNX graph) or ``"builder-flag"`` (10.x FP16 flag).
        precision: ``fp32``, ``fp16`` or ``int8``.
        tensorrt_major: the TensorRT major version the route was chosen for.
        precision_in_graph: the ONNX must carry ``precision`` itself (an FP32 model is converted first).
        network_flags: ``NetworkDefinitionCreationFlag`` names passed to ``create_network``.
        builder_flags: ``BuilderFlag`` names set on the builder config.
        cleared_flags: ``BuilderFlag`` names cleared (TF32 for FP32 engines, so FP32 means FP32).
    """

    name: str
    precision: str
    tensorrt_major: int
    precision_in_graph: bool
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    cleared_flags: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.name == "builder-flag":
            return f"FP32 graph + BuilderFlag.FP16 (TensorRT {self.tensorrt_major}.x weak typing)"
        what = {"fp32": "FP32 graph", "fp16": "FP16 graph (ModelOpt AutoCast)", "int8": "Q/DQ INT8 graph"}
        return f"{what[self.precision]}, strongly typed network (TensorRT {self.tensorrt_major}.x)"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise MoptError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def build_route(trt_version: str | Sequence[int], precision: str, route: str = "graph") -> Route:
    """Choose how ``precision`` is built on TensorRT ``trt_version``; never a flag that version lacks.

    Args:
        trt_version: ``"11.4.0"`` or ``(11, 4, 0)``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        route: ``"graph"`` (default, every version) or ``"builder-flag"`` (FP16 on TensorRT 10.x only).

    Raises:
        MoptError: a TensorRT older than 10, or a route the version or precision does not have.
    """
    from optimize.tensorrt_api import parse_version

    _check_precision(precision)
    if route not in ROUTES:
        raise MoptError(f"route {route!r} is not one of {', '.join(ROUTES)}")
    if isinstance(trt_version, str):
        major = parse_version(trt_version)[0]
        shown = trt_version
    else:
        major = int(trt_version[0])
        shown = ".".join(str(v) for v in trt_version)
    if major < MIN_TENSORRT_MAJOR:
        raise MoptError(f"TensorRT {shown} is not supported: mopt needs {MIN_TENSORRT_MAJOR}.0 or newer")
    cleared = ("TF32",) if precision == "fp32" else ()
    if route == "builder-flag" and precision != "fp32":
        if major >= 11:
            raise MoptError(
                f"TensorRT {shown} has no FP16/INT8 builder flags (removed in 11.0, networks are strongly typed): "
                f"use --route graph, which converts the ONNX to {precision} first"
            )
        if precision == "int8":
            raise MoptError(
                "INT8 is built from explicit Q/DQ nodes only (mopt has no TensorRT calibrator): use --route graph"
            )
        return Route("builder-flag", precision, major, precision_in_graph=False, builder_flags=("FP16",))
    # 11.x: every network is strongly typed and the flag is ignored, so none is passed; 10.x must ask for it.
    network_flags = ("STRONGLY_TYPED",) if major < 11 else ()
    return Route(
        "strongly-typed", precision, major, precision_in_graph=True, network_flags=network_flags, cleared_flags=cleared
    )


# --- requests, cache keys and sidecars ----------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRequest:
    """What the user asked for; every field but the paths changes the engine and so the cache key.

    Attributes:
        onnx: the ONNX model given (FP32, or already FP16/INT8).
        onnx_sha256: its content hash (the path does not matter, the bytes do).
        source_precision: the precision recorded in its metadata.
        precision: the engine's precision.
        profiles: optimization profiles.
        route: ``"graph"`` or ``"builder-flag"`` as requested.
        workspace_gib: workspace pool limit in GiB, ``None`` for TensorRT's default.
        opt_level: builder optimization level 0-5.
        timing_cache: timing cache file (speeds up builds, does not change what is built).
        recipe_sha256: hash of the FP16/INT8 recipe (nodes kept in FP32) used for the conversion.
        calibration: what INT8 calibration ran on (folder fingerprint or synthetic count).
    """

    onnx: Path
    onnx_sha256: str
    source_precision: str
    precision: str
    profiles: tuple[ShapeProfile, ...]
    route: str = "graph"
    workspace_gib: float | None = None
    opt_level: int = DEFAULT_OPT_LEVEL
    timing_cache: Path | None = None
    recipe_sha256: str | None = None
    calibration: dict[str, Any] | None = None

    def key_fields(self) -> dict[str, Any]:
        return {
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "profiles": [p.to_dict() for p in self.profiles],
            "route": self.route,
            "workspace_gib": self.workspace_gib,
            "opt_level": self.opt_level,
            "recipe_sha256": self.recipe_sha256,
            "calibration": self.calibration,
        }


def cache_key(request: EngineRequest, tensorrt_version: str, compute_capability: str | None) -> str:
    """Hash of the request with the TensorRT version and GPU architecture an engine is tied to."""
    payload = {
        "schema": SIDECAR_SCHEMA,
        "request": request.key_fields(),
        "tensorrt": tensorrt_version,
        "compute_capability": compute_capability,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def sidecar_path(engine: str | Path) -> Path:
    """``engines/cvunet.sim.fp16.plan`` -> ``engines/cvunet.sim.fp16.json``."""
    return Path(engine).with_suffix(".json")


def read_sidecar(engine: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``engine``, ``None`` if it has none.

    Raises:
        MoptError: the sidecar is not valid JSON.
    """
    path = sidecar_path(engine)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MoptError(
            f"engine sidecar {path} is not valid JSON ({exc}); rebuild with `mopt build-engine --force`"
        ) from exc
    if not isinstance(data, dict):
        raise MoptError(f"engine sidecar {path} is not a JSON object; rebuild with `mopt build-engine --force`")
    return data


def sidecar_from_build(
    request: EngineRequest,
    route: Route,
    machine: MachineInfo,
    key: str,
    engine_path: Path,
    engine_sha256: str,
    built_onnx_sha256: str,
    build_seconds: float,
    timing_cache_loaded: bool,
    description: dict[str, Any] | None = None,
    weights_bytes: int | None = None,
) -> dict[str, Any]:
    """The sidecar JSON (schema 2) written beside an engine.

    Args:
        description: what the built engine itself reports (:func:`optimize.tensorrt_api.describe_serialized_engine`):
            its I/O tensors and activation memory.
        weights_bytes: size of the weights of the graph TensorRT parsed.
    """
    from optimize.onnx_model import card_of_onnx, read_metadata
    from optimize.triton_releases import CONTAINER, releases_for_tensorrt

    description = description or {}
    return {
        "schema": SIDECAR_SCHEMA,
        "cache_key": key,
        "engine": engine_path.name,
        "engine_sha256": engine_sha256,
        "tensorrt_version": machine.tensorrt,
        "gpu": machine.gpu_name,
        "compute_capability": machine.compute_capability,
        "driver": machine.driver,
        "cuda": machine.cuda,
        "onnx": str(request.onnx),
        "onnx_sha256": request.onnx_sha256,
        "onnx_precision": request.source_precision,
        # Serving and matting need the input contract even after the ONNX file is gone.
        "normalization": json.loads(read_metadata(request.onnx).get("mopt.normalization", "null")),
        "card": card_of_onnx(request.onnx).to_dict(),
        "built_onnx_sha256": built_onnx_sha256,
        "precision": request.precision,
        "route": route.name,
        "profiles": [p.to_dict() for p in request.profiles],
        # The engine's own I/O: names and dtypes as built, the input's shapes per optimization profile.
        "io": description.get("io"),
        "device_memory_bytes": description.get("device_memory_bytes"),
        "weights_bytes": weights_bytes,
        # Only a Triton with this very TensorRT loads the engine (empty: none known, see optimize.triton_releases).
        "triton": {"container": CONTAINER, "releases": releases_for_tensorrt(machine.tensorrt)},
        "builder": {
            "network_flags": list(route.network_flags),
            "builder_flags": list(route.builder_flags),
            "cleared_flags": list(route.cleared_flags),
            "workspace_gib": request.workspace_gib,
            "opt_level": request.opt_level,
            "recipe_sha256": request.recipe_sha256,
            "calibration": request.calibration,
            "timing_cache": str(request.timing_cache) if request.timing_cache else None,
            "timing_cache_loaded": timing_cache_loaded,
        },
        "build_seconds": round(build_seconds, 3),
        "mopt_version": __version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def sidecar_mismatch(sidecar: dict[str, Any], machine: MachineInfo) -> str | None:
    """Why an engine with this sidecar cannot run on ``machine`` (one line with the fix), ``None`` if it can.

    A serialized engine holds kernels for one GPU architecture and is readable only by the TensorRT version
    that wrote it; the driver may differ (newer drivers run older builds).
    """
    built_cc, built_trt = sidecar.get("compute_capability"), sidecar.get("tensorrt_version")
    built = f"built for {sm_name(built_cc)} with TensorRT {built_trt}"
    precision = sidecar.get("precision", "fp32")
    rebuild = f"rebuild it here with `mopt build-engine {sidecar.get('onnx', 'MODEL.onnx')} --{precision} --force`"
    if not machine.gpu:
        return f"engine {built}; this machine has no NVIDIA GPU: run it on one"
    if machine.tensorrt is None:
        return f"engine {built}; TensorRT is not installed here: {install_hint('tensorrt')}"
    problems = []
    if built_cc != machine.compute_capability:
        problems.append(f"this GPU is {sm_name(machine.compute_capability)} ({machine.gpu_name})")
    if built_trt != machine.tensorrt:
        problems.append(f"this machine has TensorRT {machine.tensorrt}")
    if not problems:
        return None
    return f"engine {built}; {' and '.join(problems)}: {rebuild}"


@dataclass(frozen=True)
class EngineIO:
    """An engine's input and output tensors, as its sidecar records them.

    Attributes:
        input_name / output_name: tensor names in the engine.
        input_dtype / output_dtype: ``"float32"``, ``"float16"``, ...
        profiles: the input's shapes per optimization profile.
        output_shape: the output's dims with ``-1`` where dynamic, ``None`` when not recorded.
        recorded: ``False`` for an older sidecar without ``io``: the names and dtypes are mopt's defaults
            (``input`` / ``alpha``, FP32), which is what mopt's exports always had.
    """

    input_name: str
    output_name: str
    input_dtype: str
    output_dtype: str
    profiles: tuple[ShapeProfile, ...]
    output_shape: tuple[int, ...] | None = None
    recorded: bool = True


def engine_io_from_sidecar(sidecar: dict[str, Any], where: str = "engine sidecar") -> EngineIO:
    """The I/O of the engine a sidecar describes; older sidecars without ``io`` get mopt's default names.

    Raises:
        MoptError: ``io`` is there but not one input and one output with names, or no profiles are recorded.
    """
    fix = "rebuild the engine with `mopt build-engine --force`"
    io = sidecar.get("io")
    if io is None:
        profiles = sidecar.get("profiles")
        if not isinstance(profiles, list) or not profiles:
            raise MoptError(f"{where} records no 'profiles'; {fix}")
        return EngineIO(
            LEGACY_INPUT_NAME,
            LEGACY_OUTPUT_NAME,
            LEGACY_DTYPE,
            LEGACY_DTYPE,
            tuple(ShapeProfile.from_dict(p) for p in profiles),
            recorded=False,
        )
    try:
        (inp,), (out,) = io["inputs"], io["outputs"]
        profiles = tuple(ShapeProfile.from_dict(p) for p in inp["profiles"])
        shape = out.get("shape")
        result = EngineIO(
            str(inp["name"]),
            str(out["name"]),
            str(inp["dtype"]),
            str(out["dtype"]),
            profiles,
            tuple(int(d) for d in shape) if shape is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MoptError(f"{where} has an 'io' entry that is not one input and one output with names; {fix}") from exc
    if not profiles:
        raise MoptError(f"{where} records no profiles for input {result.input_name!r}; {fix}")
    return result


def onnx_weight_bytes(onnx_path: Path) -> int:
    """Bytes of the weights (initializers) of an ONNX graph, in the types the graph stores them in."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= int(dim)
        total += count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


# --- building -----------------------------------------------------------------------------------------------


@dataclass
class EngineBuildResult:
    """What :func:`engine_from_onnx` produced.

    Attributes:
        path: the engine file.
        sidecar_path: its JSON sidecar.
        sidecar: the sidecar's content.
        reused: ``True`` when an identical earlier build was reused (nothing was built).
        route: how the precision reached TensorRT.
        warnings: notes from the build (e.g. a timing cache that did not match).
        messages: TensorRT's warnings and errors logged during this build.
    """

    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    reused: bool
    route: Route
    warnings: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def default_engine_path(onnx: Path, precision: str) -> Path:
    """``engines/cvunet.sim.onnx`` + fp16 -> ``engines/cvunet.sim.fp16.plan``; an ``x.fp16.onnx`` -> ``x.fp16.plan``."""
    stem = onnx.name[: -len(onnx.suffix)] if onnx.suffix else onnx.name
    if stem.endswith(f".{precision}"):
        return onnx.with_suffix(".plan")
    return derived_path(onnx, precision, ".plan")


def default_build_onnx(precision: str | None, folder: Path = ENGINES_DIR, converting: bool = False) -> Path:
    """The model ``mopt build-engine`` builds when no ONNX is given.

    The FP32 model ``mopt export`` / ``mopt simplify`` left in ``folder``; for ``--fp16``/``--int8`` its FP16/INT8
    graph from ``mopt convert-precision`` / ``mopt quantize`` instead, when one exists and is newer than the FP32
    model (it carries the user's recipe and calibration). ``converting`` (a recipe or calibration data given)
    means the FP32 model is wanted, to be converted with them.
    """
    fp32 = latest_fp32_onnx(folder)
    if precision in ("fp16", "int8") and not converting:
        derived = derived_path(fp32, precision)
        if derived.is_file() and derived.stat().st_mtime >= fp32.stat().st_mtime:
            return derived
    return fp32


def default_timing_cache(engine: Path, machine: MachineInfo) -> Path:
    """One timing cache per TensorRT version and GPU architecture, beside the engines (it is valid only there)."""
    return engine.parent / f"timing-trt{machine.tensorrt}-{sm_name(machine.compute_capability)}.cache"


def _calibration_fingerprint(calib_dir: Path | None, synthetic: int | None) -> dict[str, Any] | None:
    """What INT8 calibration runs on, so that other images mean another engine (names, sizes, times)."""
    if calib_dir is None and synthetic is None:
        return None
    result: dict[str, Any] = {"synthetic": synthetic}
    if calib_dir is not None:
        from optimize.images import list_images

        digest = hashlib.sha256()
        for path in list_images(calib_dir):
            stat = path.stat()
            digest.update(f"{path.relative_to(calib_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        result.update(images=str(calib_dir), images_fingerprint=digest.hexdigest())
    return result


def _validate_inputs(
    onnx: Path,
    output: Path,
    precision: str,
    source_precision: str,
    route: str,
    workspace_gib: float | None,
    opt_level: int,
    recipe: Path | None,
    calib_dir: Path | None,
    calib_synthetic: int | None,
) -> None:
    """Every user mistake that can be found without TensorRT, each as one MoptError line."""
    if source_precision not in PRECISIONS:
        raise MoptError(
            f"{onnx} records precision {source_precision!r} (mopt.precision); expected one of {', '.join(PRECISIONS)}"
        )
    if source_precision != "fp32" and precision != source_precision:
        raise MoptError(
            f"{onnx} is already {source_precision} (mopt.precision), so it can only be built as {source_precision}: "
            f"pass --{source_precision}, or give the FP32 model to build {precision}"
        )
    if route not in ROUTES:
        raise MoptError(f"route {route!r} is not one of {', '.join(ROUTES)}")
    if output.suffix not in ENGINE_SUFFIXES:
        raise MoptError(f"engine output {output} must end in {' or '.join(ENGINE_SUFFIXES)}")
    if output.exists() and output.is_dir():
        raise MoptError(f"engine output {output} is a folder; give a file name ending in .plan")
    if workspace_gib is not None and not workspace_gib > 0:
        raise MoptError(f"--workspace {workspace_gib} must be a positive number of GiB (e.g. 4)")
    if not 0 <= opt_level <= 5:
        raise MoptError(f"--opt-level {opt_level} must be 0..5 (TensorRT's default is {DEFAULT_OPT_LEVEL})")
    if route == "builder-flag" and precision == "int8":
        raise MoptError(
            "INT8 is built from explicit Q/DQ nodes only (mopt has no TensorRT calibrator): use --route graph"
        )
    converts = source_precision == "fp32" and precision != "fp32" and route == "graph"
    if converts and precision == "int8" and calib_dir is None and calib_synthetic is None:
        raise MoptError(
            "INT8 from an FP32 model needs calibration data: pass --calib DIR or --synthetic N, "
            "or give an INT8 ONNX made by `mopt quantize`"
        )
    if recipe is not None:
        if not converts:
            raise MoptError(
                "--recipe applies only when build-engine converts an FP32 ONNX to fp16/int8 (route graph); "
                "drop it, or give the FP32 model"
            )
        if not recipe.is_file():
            raise MoptError(f"recipe {recipe} does not exist")
    if calib_dir is not None or calib_synthetic is not None:
        if not (converts and precision == "int8"):
            raise MoptError("calibration options apply only when building INT8 from an FP32 ONNX; drop them")
        if calib_dir is not None and calib_synthetic is not None:
            raise MoptError("give either calibration images or a synthetic count, not both")
        if calib_synthetic is not None and calib_synthetic < 1:
            raise MoptError(f"calibration synthetic count {calib_synthetic} must be positive (e.g. 64)")


def _converted_onnx(
    onnx: Path,
    precision: str,
    workdir: Path,
    request: EngineRequest,
    recipe: Path | None,
    calib_dir: Path | None,
    calib_synthetic: int | None,
) -> Path:
    """The FP16 or INT8 graph of an FP32 ONNX, written in ``workdir`` (the user's files are left alone)."""
    from optimize.onnx_model import read_metadata

    target = workdir / f"{onnx.stem}.{precision}.onnx"
    if precision == "fp16":
        from optimize.precision import fp16_onnx_from_onnx

        result = fp16_onnx_from_onnx(onnx, output=target, recipe=recipe)
    else:
        from optimize.quantize import int8_onnx_from_onnx

        result = int8_onnx_from_onnx(onnx, output=target, calib_dir=calib_dir, synthetic=calib_synthetic, recipe=recipe)
    path = Path(getattr(result, "path", result))
    recorded = read_metadata(path).get("mopt.precision")
    if recorded != precision:
        raise MoptError(f"the {precision} conversion of {onnx} produced a model recorded as {recorded!r}")
    # The conversion must keep the dynamic dims the profiles rely on.
    validate_profiles(request.profiles, onnx_input_dims(path)[1], model=f"the {precision} graph of {onnx}")
    return path


def _reusable(engine: Path, key: str) -> dict[str, Any] | None:
    """The sidecar of an earlier identical build whose engine file is intact, else ``None``."""
    if not engine.is_file():
        return None
    try:
        sidecar = read_sidecar(engine)
    except MoptError:
        return None  # an unreadable sidecar means: build again (and overwrite it)
    if not sidecar or sidecar.get("cache_key") != key:
        return None
    if sidecar.get("engine_sha256") != file_sha256(engine):
        return None
    return sidecar


def engine_from_onnx(
    onnx: str | Path,
    output: str | Path | None = None,
    precision: str | None = None,
    profiles: Sequence[ShapeProfile] | None = None,
    route: str = "graph",
    workspace_gib: float | None = None,
    opt_level: int = DEFAULT_OPT_LEVEL,
    timing_cache: str | Path | None = None,
    recipe: str | Path | None = None,
    calib_dir: str | Path | None = None,
    calib_synthetic: int | None = None,
    force: bool = False,
) -> EngineBuildResult:
    """Build (or reuse) a TensorRT engine for an ONNX model, with a sidecar describing it.

    Args:
        onnx: the model; FP32, or an FP16/INT8 graph made by ``mopt convert-precision`` / ``mopt quantize``.
        output: engine file; defaults to ``<onnx stem>.<precision>.plan`` beside the ONNX.
        precision: ``fp32``, ``fp16`` or ``int8``; defaults to the ONNX's own precision.
        profiles: optimization profiles; defaults to :data:`~optimize.profiles.DEFAULT_PROFILE`.
        route: ``"graph"`` (strongly typed, every version) or ``"builder-flag"`` (FP16 flag, TensorRT 10.x only).
        workspace_gib: workspace memory pool limit in GiB.
        opt_level: builder optimization level 0-5.
        timing_cache: tactic timing cache, loaded and saved; defaults to one per TensorRT version and GPU
            beside the engine.
        recipe: JSON recipe of nodes kept in FP32, for the FP16/INT8 conversion.
        calib_dir: INT8 calibration images (when converting an FP32 model to INT8).
        calib_synthetic: number of generated calibration images instead of ``calib_dir``.
        force: rebuild even if an identical engine exists.

    Raises:
        MoptError: bad input, no GPU or TensorRT here, or a failed conversion or build. Nothing is written then.
    """
    from optimize.onnx_model import read_metadata

    onnx = Path(onnx)
    if not onnx.is_file():
        raise MoptError(f"ONNX model {onnx} does not exist; run `mopt export CHECKPOINT` first or pass its path")
    if onnx.suffix != ".onnx":
        raise MoptError(f"{onnx} is not an .onnx file")
    source_precision = read_metadata(onnx).get("mopt.precision", "fp32")
    precision = precision or source_precision
    _check_precision(precision)
    output = Path(output) if output else default_engine_path(onnx, precision)
    recipe_path = Path(recipe) if recipe is not None else None
    calib_path = Path(calib_dir) if calib_dir is not None else None
    _validate_inputs(
        onnx,
        output,
        precision,
        source_precision,
        route,
        workspace_gib,
        opt_level,
        recipe_path,
        calib_path,
        calib_synthetic,
    )
    from optimize.onnx_model import card_of_onnx

    dims = onnx_input_dims(onnx)[1]
    # A model of one size (or a fixed batch) gets the default profile pinned to it; given profiles are checked.
    profiles = tuple(profiles) if profiles else (profile_for_fixed_dims(DEFAULT_PROFILE, dims),)
    validate_profiles(profiles, dims, model=str(onnx), multiple=card_of_onnx(onnx).size.multiple)

    # Only now the machine: every mistake in the request is reported first, even where TensorRT cannot run.
    machine = gpu_environment()
    reason = tensorrt_unavailable_reason(machine)
    if reason:
        raise MoptError(f"cannot build a TensorRT engine: {reason}")
    from optimize import tensorrt_api

    trt = tensorrt_api.load_tensorrt()
    chosen = build_route(trt.__version__, precision, route)
    cache = Path(timing_cache) if timing_cache is not None else default_timing_cache(output, machine)
    request = EngineRequest(
        onnx=onnx,
        onnx_sha256=file_sha256(onnx),
        source_precision=source_precision,
        precision=precision,
        profiles=profiles,
        route=chosen.name,
        workspace_gib=workspace_gib,
        opt_level=opt_level,
        timing_cache=cache,
        recipe_sha256=file_sha256(recipe_path) if recipe_path else None,
        calibration=_calibration_fingerprint(calib_path, calib_synthetic),
    )
    key = cache_key(request, machine.tensorrt or "", machine.compute_capability)
    if not force:
        previous = _reusable(output, key)
        if previous is not None:
            return EngineBuildResult(output, sidecar_path(output), previous, reused=True, route=chosen)
    return _build(trt, request, chosen, machine, key, output, recipe_path, calib_path, calib_synthetic)


def _build(
    trt: ModuleType,
    request: EngineRequest,
    route: Route,
    machine: MachineInfo,
    key: str,
    output: Path,
    recipe: Path | None,
    calib_dir: Path | None,
    calib_synthetic: int | None,
) -> EngineBuildResult:
    from optimize import tensorrt_api

    with tempfile.TemporaryDirectory(prefix="mopt-engine-") as workdir:
        graph = request.onnx
        if route.precision_in_graph and request.source_precision != request.precision:
            graph = _converted_onnx(
                request.onnx, request.precision, Path(workdir), request, recipe, calib_dir, calib_synthetic
            )
        spec = tensorrt_api.BuildSpec(
            onnx_path=graph,
            profiles=request.profiles,
            network_flags=route.network_flags,
            builder_flags=route.builder_flags,
            cleared_flags=route.cleared_flags,
            workspace_bytes=int(request.workspace_gib * tensorrt_api.GIB) if request.workspace_gib else None,
            opt_level=request.opt_level,
            timing_cache=request.timing_cache,
        )
        built = tensorrt_api.serialized_engine_from_onnx(trt, spec)
        built_onnx_sha256 = file_sha256(graph)
        weights_bytes = onnx_weight_bytes(graph)
    # What the engine itself says about its I/O (names and dtypes as built, shapes per profile): deploy, serve,
    # matte and the TensorRT backend read them from the sidecar instead of assuming mopt's export names.
    description = tensorrt_api.describe_serialized_engine(trt, built.engine)
    with atomic_output(output) as tmp:
        tmp.write_bytes(built.engine)
    sidecar = sidecar_from_build(
        request,
        route,
        machine,
        key,
        output,
        hashlib.sha256(built.engine).hexdigest(),
        built_onnx_sha256,
        built.seconds,
        built.timing_cache_loaded,
        description,
        weights_bytes,
    )
    # Engine first, then the sidecar: a crash in between leaves a sidecar whose engine hash no longer matches,
    # which the next request treats as "build again".
    write_json(sidecar_path(output), sidecar)
    return EngineBuildResult(
        output, sidecar_path(output), sidecar, reused=False, route=route, warnings=built.warnings,
        messages=built.messages,
    )


# --- loading ------------------------------------------------------------------------------------------------


@dataclass
class LoadedEngine:
    """A deserialized engine with its sidecar and the TensorRT module it belongs to.

    Attributes:
        path: the engine file.
        sidecar: its sidecar, ``None`` for an engine built elsewhere without one.
        trt: the imported ``tensorrt`` module.
        engine: the ``ICudaEngine``.
        runtime: the ``IRuntime`` that created it (kept alive as long as the engine).
    """

    path: Path
    sidecar: dict[str, Any] | None
    trt: ModuleType
    engine: Any
    runtime: Any

    @property
    def precision(self) -> str:
        return (self.sidecar or {}).get("precision", "fp32")


def load_engine_checked(path: str | Path, machine: MachineInfo | None = None) -> LoadedEngine:
    """Load an engine after checking its sidecar against this machine.

    Args:
        path: the engine file.
        machine: this machine's facts; detected when not given.

    Raises:
        MoptError: no such file, built for another GPU or TensorRT version (the message says which and how to
            rebuild), the engine changed since its sidecar was written, or TensorRT cannot run here.
    """
    path = Path(path)
    if not path.is_file():
        raise MoptError(f"engine {path} does not exist; build it with `mopt build-engine`")
    sidecar = read_sidecar(path)
    machine = machine or gpu_environment()
    if sidecar is not None:
        problem = sidecar_mismatch(sidecar, machine)
        if problem:
            raise MoptError(problem)
        if sidecar.get("engine_sha256") and sidecar["engine_sha256"] != file_sha256(path):
            raise MoptError(
                f"engine {path} changed after its sidecar {sidecar_path(path)} was written; "
                f"rebuild with `mopt build-engine --force`"
            )
    else:
        reason = tensorrt_unavailable_reason(machine)
        if reason:
            raise MoptError(f"cannot load {path}: {reason}")
    from optimize import tensorrt_api

    trt = tensorrt_api.load_tensorrt()
    loaded = tensorrt_api.engine_from_bytes(trt, path.read_bytes())
    return LoadedEngine(path, sidecar, trt, loaded.engine, loaded.runtime)
