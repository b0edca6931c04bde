"""The one module that calls TensorRT: build a serialized engine from ONNX, deserialize it, describe it, execute it.

Everything that decides *what* to build (profiles, precision route, cache keys) lives in plain Python in
:mod:`optimize.engine`; this module only translates a :class:`BuildSpec` into TensorRT calls, so the calls each
TensorRT version gets can be checked on a CPU machine by passing a stand-in ``trt`` module object.

Written against the TensorRT 10.x and 11.x Python APIs (checked name by name in CI against the 10.x type stubs
and a list of what 11.0 removed: ``tests/test_tensorrt_conformance.py``):

* Networks are always explicit-batch since 10.0; ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is ignored in
  10.x and gone in 11.x, so it is never passed.
* ``STRONGLY_TYPED`` is requested by name on 10.x; 11.x networks are always strongly typed (the flag is kept only
  for compatibility and ignored), so no flag is passed there.
* ``BuilderFlag.FP16`` exists only on 10.x and is set only when the spec asks for it, after checking it exists.
* Execution uses the name-based tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
  on torch CUDA tensors and torch streams, so no CUDA Python binding is needed.

Binding conventions that differ from the C++ API (read from the bindings' source, not guessed): ``trt.Builder``
and ``trt.Runtime`` raise ``TypeError`` ("factory function returned nullptr") when TensorRT cannot create them,
they never return ``None``; ``IExecutionContext.set_optimization_profile_async`` raises ``RuntimeError`` on
failure; ``deserialize_cuda_engine``, ``build_serialized_network`` and ``create_execution_context`` return
``None``; ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3`` and ``set_timing_cache`` return a bool.

Parameters typed ``tensorrt.X`` name the TensorRT class they hold (the import is for type checkers only): the
conformance test follows these annotations to check every member used on such an object.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from optimize.deps import require
from optimize.errors import MoptError
from optimize.fileio import atomic_output
from optimize.profiles import ShapeProfile, format_shape

if TYPE_CHECKING:  # the real module for type checkers (tensorrt-stubs); never imported at run time here
    import tensorrt

log = logging.getLogger("mopt.tensorrt")

GIB = 1 << 30

# Every enum member mopt looks up by a name that comes from data (a Route's flags, a dtype table). The lookups
# refuse names outside these sets, so nothing reaches TensorRT that the conformance test has not checked.
BUILDER_FLAG_NAMES = ("FP16", "TF32")  # FP16: the TensorRT 10.x builder-flag route only (removed in 11.0)
NETWORK_FLAG_NAMES = ("STRONGLY_TYPED",)

# TensorRT DataType member -> the dtype name mopt records (numpy / torch spelling).
DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def load_tensorrt() -> ModuleType:
    """Import ``tensorrt`` or raise a MoptError that says how to install it."""
    return require("tensorrt")


def parse_version(text: str) -> tuple[int, int, int]:
    """``"10.13.0.35"`` -> ``(10, 13, 0)``; missing parts are 0."""
    parts = []
    for piece in str(text).split(".")[:3]:
        match = re.match(r"\d+", piece)  # "0rc2" -> 0: a pre-release tag is not a patch number
        if match is None:
            break
        parts.append(int(match.group()))
    if not parts:
        raise MoptError(f"cannot read a TensorRT version from {text!r}")
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


@dataclass(frozen=True)
class BuildSpec:
    """Everything :func:`serialized_engine_from_onnx` needs, decided beforehand by :mod:`optimize.engine`.

    Attributes:
        onnx_path: the graph to parse (already in the target precision on the strongly typed route).
        profiles: optimization profiles for the image input.
        network_flags: ``NetworkDefinitionCreationFlag`` names to set, e.g. ``("STRONGLY_TYPED",)`` on 10.x.
        builder_flags: ``BuilderFlag`` names to set, e.g. ``("FP16",)`` for the 10.x builder-flag route.
        cleared_flags: ``BuilderFlag`` names to clear, e.g. ``("TF32",)`` so an FP32 engine computes in FP32.
        workspace_bytes: workspace memory pool limit; ``None`` leaves TensorRT's default (the device's memory).
        opt_level: ``builder_optimization_level`` (0-5); ``None`` leaves TensorRT's default (3).
        timing_cache: file to load tactic timings from and save them to; ``None`` for none.
    """

    onnx_path: Path
    profiles: tuple[ShapeProfile, ...]
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    cleared_flags: tuple[str, ...] = ()
    workspace_bytes: int | None = None
    opt_level: int | None = None
    timing_cache: Path | None = None


@dataclass
class BuildOutput:
    """A serialized engine, what happened to the timing cache on the way, and what TensorRT said during it.

    Attributes:
        engine: the serialized engine.
        seconds: time ``build_serialized_network`` took.
        timing_cache_loaded: a saved timing cache was accepted and used.
        timing_cache_saved: the grown timing cache was written back.
        warnings: mopt's notes about the build (a rejected timing cache, ...).
        messages: TensorRT's own warnings and errors logged during this build (and only this build).
    """

    engine: bytes
    seconds: float
    timing_cache_loaded: bool = False
    timing_cache_saved: bool = False
    warnings: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


# --- the logger -----------------------------------------------------------------------------------------------


class LogBook:
    """TensorRT's warnings and errors, numbered, so that each operation reads only what it caused.

    TensorRT's logger is one process-wide object, and messages stay in it after the operation that logged them:
    a build that fails without an error of its own must not show an earlier build's timing-cache warning as its
    reason. Each operation takes a :meth:`mark` before it starts and reads :meth:`since` that mark.
    """

    def __init__(self, keep: int = 2000) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=keep)
        self._count = 0

    def add(self, level: str, message: str) -> None:
        with self._lock:
            self._count += 1
            self._entries.append((self._count, level, message))

    def mark(self) -> int:
        """A position: :meth:`since` it returns only messages logged after this call."""
        with self._lock:
            return self._count

    def since(self, mark: int, levels: Sequence[str] = ("error", "warning")) -> list[str]:
        """Messages of ``levels`` logged after ``mark``, oldest first."""
        with self._lock:
            return [msg for number, level, msg in self._entries if number > mark and level in levels]

    def reason_since(self, mark: int, fallback: str = "see the TensorRT log above") -> str:
        """The first line of the first error logged after ``mark``, else of its last warning, else ``fallback``."""
        for levels, pick in ((("error",), 0), (("warning",), -1)):
            found = self.since(mark, levels)
            if found:
                return found[pick].strip().splitlines()[0] if found[pick].strip() else fallback
        return fallback


_LOGGERS: dict[int, tuple[ModuleType, Any]] = {}
_LOGGERS_LOCK = threading.Lock()


def trt_logger(trt: ModuleType) -> Any:
    """One logger per TensorRT module; its :attr:`book` (a :class:`LogBook`) keeps warnings and errors.

    TensorRT treats the logger as a process-wide singleton that must outlive every builder, runtime and engine
    created with it, so it is created once and kept.
    """
    key = id(trt)
    with _LOGGERS_LOCK:
        # Keyed by id, checked by identity: an id can be reused once a module object is gone (stand-ins in tests).
        if key not in _LOGGERS or _LOGGERS[key][0] is not trt:

            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.book = LogBook()

                def log(self, severity: Any, msg: str) -> None:
                    if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                        self.book.add("error", msg)
                        log.error("TensorRT: %s", msg)
                    elif severity == trt.ILogger.WARNING:
                        self.book.add("warning", msg)
                        log.warning("TensorRT: %s", msg)
                    else:
                        log.debug("TensorRT: %s", msg)

            _LOGGERS[key] = (trt, _Logger())
        return _LOGGERS[key][1]


# --- building -------------------------------------------------------------------------------------------------


def _checked_name(name: str, allowed: Sequence[str], enum_name: str) -> str:
    if name not in allowed:
        # A programming error, not a user one: mopt only passes names it has checked against the API.
        raise ValueError(f"{enum_name}.{name} is not in mopt's checked list {allowed}")
    return name


def _network_flag_bits(trt: ModuleType, names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        flag = getattr(
            trt.NetworkDefinitionCreationFlag,
            _checked_name(name, NETWORK_FLAG_NAMES, "NetworkDefinitionCreationFlag"),
            None,
        )
        if flag is None:
            raise MoptError(f"TensorRT {trt.__version__} has no NetworkDefinitionCreationFlag.{name}")
        bits |= 1 << int(flag)
    return bits


def _builder_flag(trt: ModuleType, name: str) -> tensorrt.BuilderFlag:
    flag = getattr(trt.BuilderFlag, _checked_name(name, BUILDER_FLAG_NAMES, "BuilderFlag"), None)
    if flag is None:
        raise MoptError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{name} (the FP16/INT8 flags were removed in 11.0): "
            f"build with the strongly typed route (--route graph)"
        )
    return flag


def create_builder(trt: ModuleType, logger: Any) -> tensorrt.Builder:
    """``trt.Builder(logger)``, whose failure (no GPU, no driver, CUDA init error) is a TypeError, as a MoptError."""
    mark = logger.book.mark()
    try:
        return trt.Builder(logger)
    except TypeError as exc:  # pybind11: "factory function returned nullptr"
        reason = logger.book.reason_since(mark, fallback=str(exc))
        raise MoptError(f"TensorRT could not create a builder (no usable GPU or CUDA driver?): {reason}") from exc


def create_runtime(trt: ModuleType, logger: Any) -> tensorrt.Runtime:
    """``trt.Runtime(logger)``, whose failure is a TypeError like the builder's, as a MoptError."""
    mark = logger.book.mark()
    try:
        return trt.Runtime(logger)
    except TypeError as exc:
        reason = logger.book.reason_since(mark, fallback=str(exc))
        raise MoptError(f"TensorRT could not create a runtime (no usable GPU or CUDA driver?): {reason}") from exc


def _parse_onnx(
    trt: ModuleType, network: tensorrt.INetworkDefinition, logger: Any, onnx_path: Path
) -> tensorrt.OnnxParser:
    mark = logger.book.mark()
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) lets the parser find weights stored as external data beside the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else logger.book.reason_since(mark)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MoptError(f"TensorRT cannot parse {onnx_path}: {first}{more}")
    return parser


def _load_timing_cache(config: tensorrt.IBuilderConfig, path: Path | None, out: BuildOutput) -> None:
    """Attach a timing cache to ``config``: the saved one when it matches this TensorRT and GPU, else empty."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    # set_timing_cache returns False for a cache from another TensorRT version or GPU (ignore_mismatch=False).
    if cache is not None and config.set_timing_cache(cache, False):
        out.timing_cache_loaded = bool(data)
        return
    out.warnings.append(f"timing cache {path} does not match this TensorRT/GPU; starting an empty one")
    empty = config.create_timing_cache(b"")
    if empty is None or not config.set_timing_cache(empty, False):
        raise MoptError("TensorRT could not create an empty timing cache")


def _save_timing_cache(config: tensorrt.IBuilderConfig, path: Path, out: BuildOutput) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        out.warnings.append("TensorRT returned no timing cache to save")
        return
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(cache.serialize())
    out.timing_cache_saved = True


def serialized_engine_from_onnx(trt: ModuleType, spec: BuildSpec) -> BuildOutput:
    """Parse ``spec.onnx_path``, configure the builder as ``spec`` says and build a serialized engine.

    Args:
        trt: the imported ``tensorrt`` module (or a stand-in with the same attributes).
        spec: what to build.

    Raises:
        MoptError: no builder can be created here, the ONNX does not parse, a requested flag does not exist in
            this version, or the build fails (with the first error TensorRT logged during this build).
    """
    logger = trt_logger(trt)
    start_mark = logger.book.mark()
    builder = create_builder(trt, logger)
    network = builder.create_network(_network_flag_bits(trt, spec.network_flags))
    parser = _parse_onnx(trt, network, logger, spec.onnx_path)
    if network.num_inputs != 1:
        raise MoptError(f"{spec.onnx_path} has {network.num_inputs} inputs after parsing; a matting model has one")
    input_name = network.get_input(0).name

    config = builder.create_builder_config()
    for name in spec.builder_flags:
        config.set_flag(_builder_flag(trt, name))
    for name in spec.cleared_flags:
        config.clear_flag(_builder_flag(trt, name))
    if spec.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_bytes))
    if spec.opt_level is not None:
        config.builder_optimization_level = int(spec.opt_level)
    for profile in spec.profiles:
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
        mark = logger.book.mark()
        if config.add_optimization_profile(trt_profile) < 0:
            raise MoptError(f"TensorRT rejected the optimization profile {profile}: {logger.book.reason_since(mark)}")

    out = BuildOutput(engine=b"", seconds=0.0)
    _load_timing_cache(config, spec.timing_cache, out)
    # The reason of a failed build is what TensorRT logged while building, not a rejected cache just before it.
    build_mark = logger.book.mark()
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    out.seconds = time.perf_counter() - start
    out.messages = logger.book.since(start_mark)
    if serialized is None:
        raise MoptError(
            f"TensorRT failed to build an engine from {spec.onnx_path}: {logger.book.reason_since(build_mark)}"
        )
    out.engine = bytes(serialized)
    if spec.timing_cache is not None:
        _save_timing_cache(config, spec.timing_cache, out)
    del parser  # the parser owns weights the network refers to: keep it alive until the build is done
    return out


# --- loading and describing -----------------------------------------------------------------------------------


@dataclass
class DeserializedEngine:
    """An ``ICudaEngine`` with the runtime that created it: TensorRT requires the runtime to outlive the engine."""

    engine: tensorrt.ICudaEngine
    runtime: tensorrt.Runtime


def engine_from_bytes(trt: ModuleType, data: bytes) -> DeserializedEngine:
    """Deserialize an engine on the current GPU.

    Raises:
        MoptError: no runtime can be created here, or TensorRT cannot read the engine (another TensorRT version
            or GPU, or a damaged file), with TensorRT's own reason.
    """
    logger = trt_logger(trt)
    runtime = create_runtime(trt, logger)
    mark = logger.book.mark()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise MoptError(f"TensorRT could not deserialize the engine: {logger.book.reason_since(mark)}")
    return DeserializedEngine(engine, runtime)


def dtype_name(trt: ModuleType, trt_dtype: Any) -> str:
    """The numpy/torch spelling (``"float32"``) of a TensorRT ``DataType``."""
    for trt_name, name in DTYPE_NAMES.items():
        if getattr(trt.DataType, trt_name, None) == trt_dtype:
            return name
    raise MoptError(f"TensorRT data type {trt_dtype} has no torch equivalent")


def torch_dtype(trt: ModuleType, trt_dtype: Any) -> Any:
    """The torch dtype for a TensorRT ``DataType``."""
    import torch

    return getattr(torch, dtype_name(trt, trt_dtype))


def engine_io(trt: ModuleType, engine: tensorrt.ICudaEngine) -> dict[str, Any]:
    """The engine's I/O tensors as the sidecar records them.

    Returns:
        ``{"inputs": [{"name", "dtype", "shape", "profiles": [{"min", "opt", "max"}, ...]}], "outputs": [{"name",
        "dtype", "shape"}]}``; ``shape`` has ``-1`` for dynamic dims, ``profiles`` one entry per optimization
        profile (inputs only: TensorRT has profile shapes for inputs).
    """
    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        entry: dict[str, Any] = {
            "name": name,
            "dtype": dtype_name(trt, engine.get_tensor_dtype(name)),
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
        }
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            entry["profiles"] = [
                ShapeProfile(*(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, i)))
                .to_dict()
                for i in range(engine.num_optimization_profiles)
            ]
            inputs.append(entry)
        else:
            outputs.append(entry)
    return {"inputs": inputs, "outputs": outputs}


def describe_serialized_engine(trt: ModuleType, data: bytes) -> dict[str, Any]:
    """I/O tensors and activation memory of a serialized engine (deserialized once, then released)."""
    loaded = engine_from_bytes(trt, data)
    try:
        return {"io": engine_io(trt, loaded.engine), "device_memory_bytes": int(loaded.engine.device_memory_size_v2)}
    finally:
        loaded.engine = None  # engine before the runtime that created it
        loaded.runtime = None


# --- executing ------------------------------------------------------------------------------------------------


class ExecutionSession:
    """An engine's execution context bound to torch CUDA tensors on its own CUDA stream.

    Args:
        trt: the imported ``tensorrt`` module.
        engine: a deserialized ``ICudaEngine`` with one input and one output.
        device: the torch CUDA device the engine lives on.
        stream: the torch stream to launch on; a new one on ``device`` when not given.
    """

    def __init__(self, trt: ModuleType, engine: tensorrt.ICudaEngine, device: Any, stream: Any = None) -> None:
        import torch

        self.trt, self.engine, self.device = trt, engine, device
        self.logger = trt_logger(trt)
        mark = self.logger.book.mark()
        self.context = engine.create_execution_context()
        if self.context is None:
            raise MoptError(f"TensorRT could not create an execution context: {self.logger.book.reason_since(mark)}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise MoptError(f"engine has inputs {inputs} and outputs {outputs}; a matting engine has one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtype = torch_dtype(trt, engine.get_tensor_dtype(self.output_name))
        self.profiles = [
            ShapeProfile(*(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(self.input_name, i)))
            for i in range(engine.num_optimization_profiles)
        ]
        self.stream = stream if stream is not None else torch.cuda.Stream(device=device)
        self.profile_index = 0  # a new context starts on profile 0

    @property
    def device_memory_bytes(self) -> int:
        """Activation (scratch) memory the context holds: ``ICudaEngine.device_memory_size_v2``, weights apart."""
        return int(self.engine.device_memory_size_v2)

    def profile_for(self, shape: Sequence[int]) -> int:
        """Index of the first profile that accepts ``shape``.

        Raises:
            MoptError: no profile does; the message lists them and how to widen them.
        """
        for index, profile in enumerate(self.profiles):
            if profile.contains(shape):
                return index
        ranges = ", ".join(str(p) for p in self.profiles)
        raise MoptError(
            f"input {format_shape(shape)} is outside the engine's profiles ({ranges}): rebuild with "
            f"`mopt build-engine --profile MIN:OPT:MAX` covering it"
        )

    def bind(self, x: Any) -> Any:
        """Point the engine at ``x`` (a contiguous CUDA tensor of the engine's input dtype); return the output buffer.

        The caller keeps ``x`` and the returned tensor alive until the enqueued work has finished.
        """
        import torch

        shape = tuple(x.shape)
        index = self.profile_for(shape)
        mark = self.logger.book.mark()
        if index != self.profile_index:
            try:
                self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
            except RuntimeError as exc:  # the binding raises instead of returning False
                reason = self.logger.book.reason_since(mark, fallback=str(exc))
                raise MoptError(f"TensorRT could not switch to optimization profile {index}: {reason}") from exc
            self.profile_index = index
        if not self.context.set_input_shape(self.input_name, shape):
            reason = self.logger.book.reason_since(mark)
            raise MoptError(f"TensorRT rejected input shape {format_shape(shape)}: {reason}")
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device=self.device
        )
        for name, tensor in ((self.input_name, x), (self.output_name, out)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                reason = self.logger.book.reason_since(mark)
                raise MoptError(f"TensorRT rejected the device address of {name!r}: {reason}")
        return out

    def enqueue(self) -> None:
        """Launch the engine on :attr:`stream` with the tensors last bound."""
        mark = self.logger.book.mark()
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise MoptError(f"TensorRT execution failed: {self.logger.book.reason_since(mark)}")

    def run(self, x: Any) -> Any:
        """Copy ``x`` to the device in the engine's dtype, run, wait, and return the output (on the device)."""
        import torch

        x = x.to(self.device, dtype=self.input_dtype).contiguous()
        # The copy ran on torch's current stream; the engine's stream must not start before it is done.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        out = self.bind(x)
        self.enqueue()
        self.stream.synchronize()
        return out

    def close(self) -> None:
        self.context = None
