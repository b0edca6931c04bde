"""A stand-in ``tensorrt`` module for CPU tests, with the real Python binding's conventions.

What it copies from the bindings (TensorRT 10.x / 11.x ``python/src/infer/pyCore.cpp``), not from mopt's hopes:

* ``Builder(logger)`` / ``Runtime(logger)`` raise ``TypeError`` ("factory function returned nullptr") when no GPU can
  be used; they never return ``None``.
* ``IExecutionContext.set_optimization_profile_async`` raises ``RuntimeError("Error in set optimization profile
  async.")`` when TensorRT refuses the switch (an index out of range); it returns ``True`` otherwise.
* ``build_serialized_network``, ``deserialize_cuda_engine``, ``create_execution_context`` and
  ``create_timing_cache`` return ``None`` on failure and log an error; ``set_input_shape`` (a shape outside the
  active profile), ``set_tensor_address``, ``execute_async_v3`` and ``set_timing_cache`` (a cache from another
  TensorRT version, with ``ignore_mismatch=False``) return ``False`` and log an error.
* 11.x has no ``BuilderFlag.FP16`` / ``INT8`` and no ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``.

The parser reads the real ONNX file (names, dtypes, dims of its I/O), the builder serializes what it was given
(I/O and profiles) and the runtime reads it back, so a sidecar written through it records the model's own names.
``execute_async_v3`` computes ``sigmoid(input)`` into the bound output (host tensors on the CPU), so the data path
of a session is checked end to end. Every call is appended to ``calls``.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from pathlib import Path

import numpy as np

ENGINE_MAGIC = b"standin-engine:"
CACHE_MAGIC = b"standin-timing-cache:"
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "INT8": np.int8}
_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 3: "INT8", 2: "UINT8", 9: "BOOL"}


def make_tensorrt(
    version: str = "11.4.0",
    calls: list | None = None,
    *,
    gpu: bool = True,
    parse_ok: bool = True,
    build_ok: bool = True,
    build_error: str | None = "out of memory while building",
    context_ok: bool = True,
    device_memory: int = 64 << 20,
) -> types.SimpleNamespace:
    """A ``tensorrt``-shaped namespace for TensorRT ``version`` (10.x or 11.x conventions by its major).

    Args:
        version: ``trt.__version__``.
        calls: list every call is appended to.
        gpu: ``False``: Builder and Runtime raise TypeError, as on a machine without a usable GPU.
        parse_ok: ``False``: the parser reports an unsupported node.
        build_ok: ``False``: ``build_serialized_network`` returns None, logging ``build_error`` (None: nothing).
        context_ok: ``False``: ``create_execution_context`` returns None.
        device_memory: what ``device_memory_size_v2`` reports.
    """
    calls = calls if calls is not None else []
    major = int(version.split(".")[0])

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        INTERNAL_ERROR = Severity.INTERNAL_ERROR
        ERROR = Severity.ERROR
        WARNING = Severity.WARNING
        INFO = Severity.INFO
        VERBOSE = Severity.VERBOSE

        def __init__(self) -> None:
            calls.append(("ILogger.__init__",))

        def log(self, severity, msg):  # overridden by mopt's logger
            raise NotImplementedError

    flags = {"TF32": 6, "DEBUG": 2, "REFIT": 3}
    if major < 11:
        flags.update(FP16=0, INT8=1, BF16=17)
    BuilderFlag = enum.IntEnum("BuilderFlag", flags)
    network_flags = {"STRONGLY_TYPED": 1} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)
    DataType = enum.IntEnum(
        "DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "BF16": 7, "INT64": 8}
    )
    TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    def error(logger, message: str) -> None:
        logger.log(ILogger.ERROR, message)

    class ITensor:
        def __init__(self, name: str, dtype, shape: tuple[int, ...]) -> None:
            self.name, self.dtype, self.shape = name, dtype, shape

    class INetworkDefinition:
        def __init__(self, flags_bits: int) -> None:
            self.flags = flags_bits
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, index: int) -> ITensor:
            return self.inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self.outputs[index]

    class ITimingCache:
        def __init__(self, payload: bytes, made_by: str) -> None:
            self.payload, self.made_by = payload, made_by

        def serialize(self) -> bytes:
            return CACHE_MAGIC + self.made_by.encode() + b"\n" + self.payload + b"+timings"

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the binding's argument names
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class IBuilderConfig:
        def __init__(self, logger) -> None:
            self.logger = logger
            self.profiles: list[IOptimizationProfile] = []
            self.cache: ITimingCache | None = None
            self._opt_level = 3

        def set_flag(self, flag) -> None:
            calls.append(("set_flag", flag.name))

        def clear_flag(self, flag) -> None:
            calls.append(("clear_flag", flag.name))

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            calls.append(("set_memory_pool_limit", pool.name, pool_size))

        @property
        def builder_optimization_level(self) -> int:
            return self._opt_level

        @builder_optimization_level.setter
        def builder_optimization_level(self, value: int) -> None:
            calls.append(("builder_optimization_level", value))
            self._opt_level = value

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            calls.append(("add_optimization_profile", profile.shapes))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes):
            data = bytes(serialized_timing_cache)
            calls.append(("create_timing_cache", data))
            if not data:
                return ITimingCache(b"", version)
            if not data.startswith(CACHE_MAGIC):
                error(self.logger, "Timing cache: the serialized timing cache is invalid")
                return None
            made_by, _, payload = data[len(CACHE_MAGIC) :].partition(b"\n")
            return ITimingCache(payload, made_by.decode())

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", ignore_mismatch, cache.made_by))
            if cache.made_by != version and not ignore_mismatch:
                error(self.logger, f"Timing cache was created by TensorRT {cache.made_by}, this is {version}")
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger) -> None:
            if not gpu:
                error(logger, "CUDA initialization failure with error: 100 (no CUDA-capable device is detected)")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            calls.append(("Builder",))
            self.logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            calls.append(("create_network", flags))
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig(self.logger)

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
            calls.append(("build_serialized_network",))
            if not build_ok:
                if build_error is not None:  # None: a failure TensorRT logs nothing of its own for
                    error(self.logger, build_error)
                return None
            if not config.profiles:
                error(self.logger, "Network has dynamic or shape inputs, but no optimization profile has been defined.")
                return None
            if config.cache is not None:
                config.cache = ITimingCache(config.cache.payload, version)
            payload = {
                "version": version,
                "inputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.inputs],
                "outputs": [[t.name, t.dtype.name, list(t.shape)] for t in network.outputs],
                "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.shapes.items()}
                             for p in config.profiles],
                "device_memory": device_memory,
            }
            return ENGINE_MAGIC + json.dumps(payload).encode()

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger) -> None:
            self.network, self.logger = network, logger
            self.errors: list[str] = []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> str:
            return self.errors[index]

        def parse_from_file(self, model: str) -> bool:
            import onnx

            calls.append(("parse_from_file", model))
            if not parse_ok:
                self.errors.append("In node 0 (Sigmoid): UNSUPPORTED_NODE: no importer for this op")
                return False
            try:
                proto = onnx.load(model, load_external_data=False)
            except Exception as exc:  # the real parser reports any unreadable file as a parse error
                self.errors.append(f"Failed to parse ONNX model from file: {model} ({type(exc).__name__})")
                return False
            weights = {init.name for init in proto.graph.initializer}

            def tensor(value) -> ITensor:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                return ITensor(value.name, DataType[_ONNX_TO_TRT[value.type.tensor_type.elem_type]], dims)

            self.network.inputs = [tensor(v) for v in proto.graph.input if v.name not in weights]
            self.network.outputs = [tensor(v) for v in proto.graph.output]
            return True

    class ICudaEngine:
        def __init__(self, payload: dict, logger) -> None:
            self.logger = logger
            self.io = [(n, "INPUT", d, s) for n, d, s in payload["inputs"]]
            self.io += [(n, "OUTPUT", d, s) for n, d, s in payload["outputs"]]
            self.profile_shapes = payload["profiles"]
            self.device_memory = payload["device_memory"]

        def _find(self, name: str):
            return next(t for t in self.io if t[0] == name)

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        @property
        def num_optimization_profiles(self) -> int:
            return len(self.profile_shapes)

        @property
        def device_memory_size_v2(self) -> int:
            return self.device_memory

        def get_tensor_name(self, index: int) -> str:
            return self.io[index][0]

        def get_tensor_mode(self, name: str):
            return TensorIOMode[self._find(name)[1]]

        def get_tensor_dtype(self, name: str):
            return DataType[self._find(name)[2]]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self._find(name)[3])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.profile_shapes[profile_index][name]]

        def create_execution_context(self):
            calls.append(("create_execution_context",))
            if not context_ok:
                error(self.logger, "Requested amount of GPU memory could not be allocated")
                return None
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.active_optimization_profile = 0
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
            calls.append(("set_optimization_profile_async", profile_index, stream_handle))
            if not 0 <= profile_index < self.engine.num_optimization_profiles:
                error(self.engine.logger, f"setOptimizationProfileAsync: profile index {profile_index} out of range")
                raise RuntimeError("Error in set optimization profile async.")
            self.active_optimization_profile = profile_index
            self.shapes.clear()  # switching profiles invalidates the input shapes
            return True

        def set_input_shape(self, name: str, shape) -> bool:
            calls.append(("set_input_shape", name, tuple(shape)))
            lo, _, hi = self.engine.get_tensor_profile_shape(name, self.active_optimization_profile)
            if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                error(self.engine.logger, f"setInputShape: {name} shape {tuple(shape)} is outside profile "
                                          f"{self.active_optimization_profile}")
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
                return self.shapes.get(name, self.engine.get_tensor_shape(name))
            (first_input,) = [t[0] for t in self.engine.io if t[1] == "INPUT"]
            if first_input not in self.shapes:
                return self.engine.get_tensor_shape(name)
            n, _, h, w = self.shapes[first_input]
            return (n, 1, h, w)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            calls.append(("set_tensor_address", name))
            if all(t[0] != name for t in self.engine.io):
                error(self.engine.logger, f"setTensorAddress: {name} is not an I/O tensor")
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            calls.append(("execute_async_v3", stream_handle))
            names = [t[0] for t in self.engine.io]
            inputs = [t for t in self.engine.io if t[1] == "INPUT"]
            if any(n not in self.addresses for n in names) or any(t[0] not in self.shapes for t in inputs):
                error(self.engine.logger, "enqueueV3: not all shapes and addresses are specified")
                return False
            (inp,), out = inputs, next(t for t in self.engine.io if t[1] == "OUTPUT")
            x = _host_array(self.addresses[inp[0]], self.shapes[inp[0]], _NUMPY[inp[2]])
            y = _host_array(self.addresses[out[0]], self.get_tensor_shape(out[0]), _NUMPY[out[2]])
            y[...] = (1.0 / (1.0 + np.exp(-x[:, :1].astype(np.float32)))).astype(y.dtype)
            return True

    class Runtime:
        def __init__(self, logger) -> None:
            if not gpu:
                error(logger, "CUDA initialization failure with error: 100")
                raise TypeError("pybind11::init(): factory function returned nullptr")
            calls.append(("Runtime",))
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine: bytes):
            data = bytes(serialized_engine)
            calls.append(("deserialize_cuda_engine", data))
            if not data.startswith(ENGINE_MAGIC):
                error(self.logger, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            payload = json.loads(data[len(ENGINE_MAGIC) :])
            if payload["version"] != version:
                error(self.logger, f"The engine plan file is not compatible with this version of TensorRT, expecting "
                                   f"library version {version} got {payload['version']}")
                return None
            return ICudaEngine(payload, self.logger)

    return types.SimpleNamespace(
        __version__=version,
        ILogger=ILogger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        Runtime=Runtime,
        BuilderFlag=BuilderFlag,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        DataType=DataType,
        TensorIOMode=TensorIOMode,
        MemoryPoolType=MemoryPoolType,
        INetworkDefinition=INetworkDefinition,
        IBuilderConfig=IBuilderConfig,
        IOptimizationProfile=IOptimizationProfile,
        ITimingCache=ITimingCache,
        ICudaEngine=ICudaEngine,
        IExecutionContext=IExecutionContext,
        ITensor=ITensor,
        calls=calls,
    )


def _host_array(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The host memory at ``address`` as an array (the stand-in's 'device' is the CPU)."""
    count = int(np.prod(shape))
    buffer = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


class FakeStream:
    """What ExecutionSession uses of a torch CUDA stream: a handle, synchronize, wait_stream."""

    def __init__(self, handle: int = 7) -> None:
        self.cuda_stream = handle
        self.waited: list = []

    def synchronize(self) -> None:
        pass  # the stand-in runs synchronously: nothing is pending

    def wait_stream(self, other) -> None:
        self.waited.append(other)


def write_model(path: Path, input_name: str = "input", output_name: str = "alpha", dims=None, elem_type: int = 1,
                metadata: dict | None = None) -> Path:
    """A one-node ONNX (Sigmoid over a 1-channel slice is not needed: the stand-in computes it) with given names."""
    import onnx
    from onnx import helper

    from optimize.onnx_model import set_metadata

    dims = dims or ["batch", 3, "height", "width"]
    out_dims = [dims[0], 1, dims[2], dims[3]]
    graph = helper.make_graph(
        [
            helper.make_node("Slice", [input_name, "starts", "ends", "axes"], ["first"]),
            helper.make_node("Sigmoid", ["first"], [output_name]),
        ],
        "g",
        [helper.make_tensor_value_info(input_name, elem_type, dims)],
        [helper.make_tensor_value_info(output_name, elem_type, out_dims)],
        initializer=[
            helper.make_tensor("starts", onnx.TensorProto.INT64, [1], [0]),
            helper.make_tensor("ends", onnx.TensorProto.INT64, [1], [1]),
            helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, {"mopt.precision": "fp32", "mopt.arch": "cvunet-tiny", **(metadata or {})})
    onnx.save(model, str(path))
    return path
