"""The one module that calls TensorRT: build a serialized engine from ONNX, deserialize it, execute it.

Everything that decides *what* to build (profiles, precision route, cache keys) lives in plain Python in
:mod:`optimize.engine`; this module only translates a :class:`BuildSpec` into TensorRT calls, so the calls each
TensorRT version gets can be checked on a CPU machine by passing a stand-in ``trt`` module object.

Written against the TensorRT 10.x and 11.x Python APIs:

* Networks are always explicit-batch since 10.0; ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is ignored in
  10.x and gone in 11.x, so it is never passed.
* ``STRONGLY_TYPED`` is requested by name on 10.x; 11.x networks are always strongly typed (the flag is kept only
  for compatibility and ignored), so no flag is passed there.
* ``BuilderFlag.FP16`` exists only on 10.x and is set only when the spec asks for it, after checking it exists.
* Execution uses the name-based tensor API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
  on torch CUDA tensors, so no CUDA Python binding is needed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from optimize.deps import require
from optimize.errors import MoptError
from optimize.fileio import atomic_output
from optimize.profiles import ShapeProfile, format_shape

log = logging.getLogger("mopt.tensorrt")

GIB = 1 << 30


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
    """A serialized engine and what happened to the timing cache on the way."""

    engine: bytes
    seconds: float
    timing_cache_loaded: bool = False
    timing_cache_saved: bool = False
    warnings: list[str] = field(default_factory=list)


_LOGGERS: dict[int, Any] = {}


def trt_logger(trt: ModuleType) -> Any:
    """One logger per TensorRT module that keeps error messages for mopt's own error lines.

    TensorRT treats the logger as a process-wide singleton that must outlive every builder, runtime and engine
    created with it, so it is created once and kept.
    """
    key = id(trt)
    if key not in _LOGGERS:

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.warnings: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    self.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.WARNING:
                    self.warnings.append(msg)
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        _LOGGERS[key] = _Logger()
    return _LOGGERS[key]


def _last_error(logger: Any) -> str:
    return logger.errors[-1].strip().splitlines()[0] if logger.errors else "see the TensorRT log above"


def _network_flag_bits(trt: ModuleType, names: Sequence[str]) -> int:
    bits = 0
    for name in names:
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if flag is None:
            raise MoptError(f"TensorRT {trt.__version__} has no NetworkDefinitionCreationFlag.{name}")
        bits |= 1 << int(flag)
    return bits


def _builder_flag(trt: ModuleType, name: str) -> Any:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise MoptError(
            f"TensorRT {trt.__version__} has no BuilderFlag.{name} (the FP16/INT8 flags were removed in 11.0): "
            f"build with the strongly typed route (--route graph)"
        )
    return flag


def _parse_onnx(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) lets the parser find weights stored as external data beside the model.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else _last_error(logger)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MoptError(f"TensorRT cannot parse {onnx_path}: {first}{more}")
    return parser


def _load_timing_cache(trt: ModuleType, config: Any, path: Path | None, out: BuildOutput) -> None:
    """Attach a timing cache to ``config``: the saved one when it matches this TensorRT and GPU, else empty."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        out.timing_cache_loaded = bool(data)
        return
    # A cache from another TensorRT version or GPU is rejected; start empty rather than fail the build.
    out.warnings.append(f"timing cache {path} does not match this TensorRT/GPU; starting an empty one")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise MoptError("TensorRT could not create an empty timing cache")


def _save_timing_cache(config: Any, path: Path, out: BuildOutput) -> None:
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
        MoptError: the ONNX does not parse, a requested flag does not exist in this version, or the build fails.
    """
    logger = trt_logger(trt)
    logger.errors.clear()
    builder = trt.Builder(logger)
    if builder is None:
        raise MoptError(f"TensorRT could not create a builder (no usable GPU?): {_last_error(logger)}")
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
        if config.add_optimization_profile(trt_profile) < 0:
            raise MoptError(f"TensorRT rejected the optimization profile {profile}: {_last_error(logger)}")

    out = BuildOutput(engine=b"", seconds=0.0)
    _load_timing_cache(trt, config, spec.timing_cache, out)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    out.seconds = time.perf_counter() - start
    if serialized is None:
        raise MoptError(f"TensorRT failed to build an engine from {spec.onnx_path}: {_last_error(logger)}")
    out.engine = bytes(serialized)
    if spec.timing_cache is not None:
        _save_timing_cache(config, spec.timing_cache, out)
    del parser  # the parser owns weights the network refers to: keep it alive until the build is done
    return out


@dataclass
class DeserializedEngine:
    """An ``ICudaEngine`` with the runtime that created it: TensorRT requires the runtime to outlive the engine."""

    engine: Any
    runtime: Any


def engine_from_bytes(trt: ModuleType, data: bytes) -> DeserializedEngine:
    """Deserialize an engine on the current GPU."""
    logger = trt_logger(trt)
    logger.errors.clear()
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise MoptError(f"TensorRT could not deserialize the engine: {_last_error(logger)}")
    return DeserializedEngine(engine, runtime)


_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def torch_dtype(trt: ModuleType, trt_dtype: Any) -> Any:
    """The torch dtype for a TensorRT ``DataType``."""
    import torch

    for trt_name, torch_name in _TORCH_DTYPES.items():
        if getattr(trt.DataType, trt_name, None) == trt_dtype:
            return getattr(torch, torch_name)
    raise MoptError(f"TensorRT data type {trt_dtype} has no torch equivalent")


class ExecutionSession:
    """An engine's execution context bound to torch CUDA tensors on its own CUDA stream.

    Args:
        trt: the imported ``tensorrt`` module.
        engine: a deserialized ``ICudaEngine`` with one input and one output.
        device: the torch CUDA device the engine lives on.
    """

    def __init__(self, trt: ModuleType, engine: Any, device: Any) -> None:
        import torch

        self.trt, self.engine, self.device = trt, engine, device
        self.context = engine.create_execution_context()
        if self.context is None:
            raise MoptError(f"TensorRT could not create an execution context: {_last_error(trt_logger(trt))}")
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
        self.stream = torch.cuda.Stream(device=device)
        self.profile_index = 0  # a new context starts on profile 0

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
        if index != self.profile_index:
            if not self.context.set_optimization_profile_async(index, self.stream.cuda_stream):
                raise MoptError(f"TensorRT could not switch to optimization profile {index}")
            self.profile_index = index
        if not self.context.set_input_shape(self.input_name, shape):
            raise MoptError(f"TensorRT rejected input shape {format_shape(shape)}: {_last_error(trt_logger(self.trt))}")
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device=self.device
        )
        for name, tensor in ((self.input_name, x), (self.output_name, out)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise MoptError(f"TensorRT rejected the device address of {name!r}")
        return out

    def enqueue(self) -> None:
        """Launch the engine on :attr:`stream` with the tensors last bound."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise MoptError(f"TensorRT execution failed: {_last_error(trt_logger(self.trt))}")

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
