"""GPU backends for ``mopt bench`` and ``mopt compare``: PyTorch CUDA FP32 and FP16, ONNX Runtime CUDA, TensorRT.

Imported lazily by :mod:`optimize.backends` (``_load_optional_backends``); this module imports nothing heavy at
import time, so registering the backends costs nothing on a CPU machine, where each reports why it cannot run.

Timing: every backend here overrides ``time_inference`` to keep input and output on the device and time each
call with CUDA events after warm-up, so the numbers are GPU time per call without host copies. Peak memory is
device memory: PyTorch's allocator peak for the PyTorch backends; for TensorRT the engine's own numbers (its
activation memory, ``ICudaEngine.device_memory_size_v2``, plus its weights) plus the peak of its I/O buffers, so
other processes on the GPU do not count; for ONNX Runtime the device memory its session holds after the run (its
arena is not visible to PyTorch, so this one is a drop of free device memory).

CUDA graphs (``torch-cuda-fp16``, ``tensorrt``) are captured in thread-local mode, as trtexec does: another thread's
CUDA calls during the capture neither break it nor get refused. A capture that fails falls back to plain launches;
``graph_used`` says per input shape whether graph replay ran and ``graph_notes`` why not.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from optimize.backends import BackendSpec, InferenceBackend, ModelSources, OnnxRuntimeBackend, register_backend
from optimize.errors import MoptError

log = logging.getLogger("mopt.gpu")

MIB = float(1 << 20)


def cuda_unavailable_reason() -> str | None:
    """Why PyTorch cannot use a CUDA GPU here, ``None`` when it can."""
    import torch

    if torch.version.cuda is None:
        return (
            f"no CUDA GPU: PyTorch {torch.__version__} is a CPU build; on a machine with an NVIDIA GPU install a "
            f"CUDA build of torch"
        )
    if not torch.cuda.is_available():
        return "no CUDA GPU: PyTorch sees no NVIDIA GPU or driver on this machine"
    return None


def device_label(device: Any) -> str:
    """``cuda:0 NVIDIA H100 80GB HBM3``."""
    import torch

    return f"cuda:{device.index} {torch.cuda.get_device_name(device)}"


def capture_cuda_graph(step: Callable[[], Any], stream: Any, device: Any) -> tuple[Any, Any, str | None]:
    """Capture ``step()`` into a CUDA graph on ``stream`` (``None``: torch's capture stream) in thread-local mode.

    Returns:
        ``(graph, step's output, None)``, or ``(None, None, reason)`` when the capture failed; the caller then
        launches ``step`` directly. Torch's current stream is the one it was before, either way.
    """
    import torch

    previous = torch.cuda.current_stream(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            output = step()
    except (RuntimeError, MoptError) as exc:  # e.g. a launch that is not capturable, or an error inside the step
        # torch.cuda.graph leaves its capture stream current when capture_end raises: put the caller's back, or
        # every later launch of the process would go to the engine's stream.
        torch.cuda.set_stream(previous)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, None, f"CUDA graph capture failed ({first}); timing plain launches"
    return graph, output, None


def time_on_stream(step: Callable[[], Any], stream: Any, warmup: int, iterations: int) -> list[float]:
    """Milliseconds per ``step()`` measured with CUDA events on ``stream`` after ``warmup`` untimed steps.

    Each iteration waits for its end event, so a time is one call's latency, not a pipelined average. A step
    that blocks the host until its own stream is done (ONNX Runtime's run) is measured correctly too: the
    events on the idle ``stream`` are stamped right before and right after it.
    """
    import torch

    times = []
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
        stream.synchronize()
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            step()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times


@contextlib.contextmanager
def _ieee_convolutions() -> Iterator[None]:
    """cuDNN convolutions in full FP32 inside the block, the previous setting restored after it."""
    import torch

    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    # PyTorch >= 2.9 has per-backend fp32_precision; mixing it with the legacy allow_tf32 raises, so use one.
    if conv is not None and hasattr(conv, "fp32_precision"):
        previous = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
    else:
        previous = cudnn.allow_tf32
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = previous


# --- PyTorch --------------------------------------------------------------------------------------------------


class TorchCudaBackend(InferenceBackend):
    """PyTorch eager on the GPU: FP32 (the GPU baseline) or FP16 channels-last with CUDA graphs.

    Args:
        model: the model (moved to the GPU, in place).
        half: run in FP16 with channels-last memory format (what tensor cores want for convolutions).
        cuda_graphs: capture one CUDA graph per input shape and replay it (removes per-kernel launch cost,
            which dominates small batches of a MobileNet-sized model).
        name: label in reports.
    """

    def __init__(self, model: Any, half: bool = False, cuda_graphs: bool = False, name: str | None = None) -> None:
        import torch

        self.torch_device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = torch.float16 if half else torch.float32
        self.memory_format = torch.channels_last if half else torch.contiguous_format
        self.model = model.eval().to(self.torch_device, dtype=self.dtype).to(memory_format=self.memory_format)
        self.precision = "fp16" if half else "fp32"
        self.backend = "torch-cuda-fp16" if half else "torch-cuda"
        self.name = name or f"torch-cuda-{self.precision}"
        self.device = device_label(self.torch_device)
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any] | None] = {}  # shape -> (graph, in, out) or None
        self.graph_used: dict[tuple[int, ...], bool] = {}  # shape -> whether graph replay runs for it
        self.graph_notes: dict[tuple[int, ...], str] = {}  # shape -> why it does not

    def _math_mode(self) -> Any:
        """FP32 means FP32: cuDNN otherwise runs FP32 convolutions in TF32 (10-bit mantissa) on Ampere and later."""
        import torch

        if self.dtype != torch.float32:
            return contextlib.nullcontext()
        return _ieee_convolutions()

    def _to_device(self, batch: np.ndarray) -> Any:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)  # N x 3 x H x W

    def _graph_for(self, x: Any) -> tuple[Any, Any, Any] | None:
        """The captured graph for ``x``'s shape (captured on first use), ``None`` when it cannot be captured."""
        import torch

        shape = tuple(x.shape)
        if shape not in self._graphs:
            static_in = x.clone()
            # Warm up on a side stream before capture: lazy cuDNN/cuBLAS initialization must not be captured.
            side = torch.cuda.Stream(self.torch_device)
            side.wait_stream(torch.cuda.current_stream(self.torch_device))
            with torch.no_grad(), torch.cuda.stream(side):
                for _ in range(3):
                    self.model(static_in)
            torch.cuda.current_stream(self.torch_device).wait_stream(side)
            with torch.no_grad():
                graph, static_out, reason = capture_cuda_graph(lambda: self.model(static_in), None, self.torch_device)
            # static_out (N x 1 x H x W) lives in the graph's memory pool
            self._graphs[shape] = (graph, static_in, static_out) if graph is not None else None
            self.graph_used[shape] = graph is not None
            if reason:
                self.graph_notes[shape] = reason
                log.info("%s: %s", self.name, reason)
        return self._graphs[shape]

    def _forward(self, x: Any) -> Any:
        import torch

        with torch.no_grad(), self._math_mode():
            captured = self._graph_for(x) if self.cuda_graphs else None
            if captured is None:
                return self.model(x)
            graph, static_in, static_out = captured
            static_in.copy_(x)
            graph.replay()
            return static_out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._forward(self._to_device(batch))
        return out.float().contiguous().cpu().numpy()  # .cpu() waits for the GPU

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        import torch

        x = self._to_device(batch)
        if self.cuda_graphs:
            self._graph_for(x)  # capture outside the timed window
        return time_on_stream(
            lambda: self._forward(x), torch.cuda.current_stream(self.torch_device), warmup, iterations
        )

    def peak_memory_mb(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated(self.torch_device) / MIB

    def reset_peak_memory(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.torch_device)

    def close(self) -> None:
        import torch

        self._graphs.clear()
        self.model = None
        torch.cuda.empty_cache()


# --- ONNX Runtime ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def onnxruntime_cuda_reason() -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run here, ``None`` when a session really starts on it.

    onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU or without the CUDA and
    cuDNN libraries it links against; only starting a session tells. A one-node model is enough to find out.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            f"ONNX Runtime's CUDA provider is unavailable: CUDAExecutionProvider is not in "
            f"onnxruntime.get_available_providers() of ONNX Runtime {ort.__version__} (install onnxruntime-gpu)"
        )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    # IR version 8 / opset 17: readable by every ONNX Runtime mopt supports, whatever onnx writes by default.
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the missing-library errors are the expected answer here, not noise to print
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(),
            sess_options=options,
            providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
    except Exception as exc:  # ORT raises its own Fail/RuntimeException types from a C extension
        return f"ONNX Runtime's CUDA provider failed to start: {str(exc).splitlines()[0]}"
    if "CUDAExecutionProvider" not in session.get_providers():
        return (
            f"ONNX Runtime {ort.__version__}'s CUDA provider does not load here: the CUDA and cuDNN libraries it was "
            f"built against are missing (see ONNX Runtime's CUDA provider requirements)"
        )
    return None


class OnnxRuntimeCudaBackend(OnnxRuntimeBackend):
    """An ONNX file in ONNX Runtime's CUDA provider, timed with device-resident input and output (I/O binding)."""

    backend = "onnxruntime-cuda"

    def __init__(self, onnx_path: str | Path, name: str | None = None) -> None:
        import torch

        self.torch_device = torch.device("cuda", torch.cuda.current_device())
        free_before = torch.cuda.mem_get_info(self.torch_device)[0]
        super().__init__(onnx_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], name=name)
        self._free_before = free_before
        self.device = device_label(self.torch_device)
        self.output_name = self.session.get_outputs()[0].name
        self._peak_mb: float | None = None

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        import onnxruntime as ort
        import torch

        x = ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(batch, dtype=np.float32), "cuda", self.torch_device.index
        )
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, x)
        binding.bind_output(self.output_name, "cuda", self.torch_device.index)
        times = time_on_stream(
            lambda: self.session.run_with_iobinding(binding),
            torch.cuda.current_stream(self.torch_device),
            warmup,
            iterations,
        )
        # ORT's arena keeps what it grew to, so the memory still taken after the run is its peak.
        self._peak_mb = max(0, self._free_before - torch.cuda.mem_get_info(self.torch_device)[0]) / MIB
        return times

    def peak_memory_mb(self) -> float | None:
        return self._peak_mb

    def reset_peak_memory(self) -> None:
        self._peak_mb = None


# --- TensorRT -------------------------------------------------------------------------------------------------


class TensorRTBackend(InferenceBackend):
    """A TensorRT engine built by ``mopt build-engine``, checked against this machine before it is loaded.

    Args:
        engine_path: the ``.plan`` file (its ``.json`` sidecar beside it).
        name: label in reports; defaults to ``tensorrt-<precision>``.
        cuda_graphs: time a captured CUDA graph of the engine's launch (falls back to plain launches when the
            engine cannot be captured; :attr:`graph_used` and :attr:`graph_notes` say so per shape).
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, name: str | None = None, cuda_graphs: bool = True) -> None:
        import torch

        from optimize.engine import engine_io_from_sidecar, load_engine_checked, sidecar_path
        from optimize.tensorrt_api import ExecutionSession

        self.torch_device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.init()
        self.loaded = load_engine_checked(engine_path)
        self.session = ExecutionSession(self.loaded.trt, self.loaded.engine, self.torch_device)
        # The names the sidecar records are what deploy, serve and matte use: they must be the engine's own.
        sidecar = self.loaded.sidecar or {}
        self.io = engine_io_from_sidecar(sidecar, str(sidecar_path(engine_path))) if sidecar else None
        names = (self.session.input_name, self.session.output_name)
        if self.io is not None and self.io.recorded and (self.io.input_name, self.io.output_name) != names:
            raise MoptError(
                f"engine {engine_path} has tensors {self.session.input_name!r} -> {self.session.output_name!r} but "
                f"its sidecar records {self.io.input_name!r} -> {self.io.output_name!r}: rebuild with "
                f"`mopt build-engine --force`"
            )
        # TensorRT allocates outside PyTorch; its own numbers, unlike a drop of free device memory, do not count
        # what other processes on the GPU allocate meanwhile.
        self.activation_mb = self.session.device_memory_bytes / MIB
        weights = sidecar.get("weights_bytes")
        # Without the recorded weight size, the plan's size bounds it (weights plus kernels).
        self.weights_mb = (weights if weights is not None else Path(engine_path).stat().st_size) / MIB
        self.engine_mb = self.activation_mb + self.weights_mb
        self.precision = self.loaded.precision
        self.name = name or f"tensorrt-{self.precision}"
        self.device = device_label(self.torch_device)
        self.cuda_graphs = cuda_graphs
        self.graph_used: dict[tuple[int, ...], bool] = {}  # shape -> whether its timing replayed a CUDA graph
        self.graph_notes: dict[tuple[int, ...], str] = {}  # shape -> why it did not

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        out = self.session.run(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return out.float().cpu().numpy()

    def _captured_step(self, shape: tuple[int, ...]) -> Callable[[], None] | None:
        """A CUDA graph of one engine launch with the tensors last bound, or ``None`` if it cannot be captured."""
        import torch

        graph, _, reason = capture_cuda_graph(self.session.enqueue, self.session.stream, self.torch_device)
        if graph is None:
            self.graph_notes[shape] = reason or "CUDA graph capture failed"
            log.info("%s: %s", self.name, self.graph_notes[shape])
            self.session.stream.synchronize()
            return None

        def replay() -> None:
            with torch.cuda.stream(self.session.stream):
                graph.replay()

        replay.graph = graph  # type: ignore[attr-defined]  # keep the graph alive with the step
        return replay

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x.to(self.torch_device, dtype=self.session.input_dtype).contiguous()  # N x 3 x H x W, stays on device
        torch.cuda.synchronize(self.torch_device)
        out = self.session.bind(x)  # N x 1 x H x W, kept referenced until timing is done
        # TensorRT must run once after a shape change before its launch can be captured into a graph.
        self.session.enqueue()
        self.session.stream.synchronize()
        shape = tuple(x.shape)
        step = self._captured_step(shape) if self.cuda_graphs else None
        self.graph_used[shape] = step is not None
        times = time_on_stream(step or self.session.enqueue, self.session.stream, warmup, iterations)
        del out
        return times

    def peak_memory_mb(self) -> float | None:
        import torch

        return self.engine_mb + torch.cuda.max_memory_allocated(self.torch_device) / MIB

    def reset_peak_memory(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.torch_device)

    def close(self) -> None:
        # Context before engine before runtime: TensorRT objects must be released in reverse order of creation.
        if getattr(self, "session", None) is not None:
            self.session.close()
            self.session = None
        if getattr(self, "loaded", None) is not None:
            self.loaded.engine = None
            self.loaded.runtime = None
            self.loaded = None


# --- registration ---------------------------------------------------------------------------------------------


def _load_model(sources: ModelSources) -> Any:
    from optimize.checkpoint import load_checkpoint

    return load_checkpoint(sources.checkpoint, arch=sources.arch).model


def _torch_cuda(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchCudaBackend(_load_model(sources))


def _torch_cuda_fp16(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchCudaBackend(_load_model(sources), half=True, cuda_graphs=True)


def _onnxruntime_cuda(sources: ModelSources) -> Iterator[InferenceBackend]:
    for path in sources.onnx:
        yield OnnxRuntimeCudaBackend(path)


def _tensorrt(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TensorRTBackend(sources.engine)


def _torch_cuda_reason(sources: ModelSources) -> str | None:
    if not sources.checkpoint:
        return "no checkpoint given"
    return cuda_unavailable_reason()


def _onnxruntime_cuda_reason(sources: ModelSources) -> str | None:
    if not sources.onnx:
        return "no ONNX file given (run `mopt export` first)"
    return onnxruntime_cuda_unavailable_reason()


def onnxruntime_cuda_unavailable_reason() -> str | None:
    """Why the ``onnxruntime-cuda`` backend cannot run here, naming ONNX Runtime's CUDA provider first.

    The provider is what a user asked for; PyTorch only supplies the device buffers and CUDA events the backend
    times with, so a CPU build of torch is named last, and only when the provider itself would run.
    """
    from optimize.engine import gpu_environment

    if not gpu_environment().gpu:
        return "ONNX Runtime's CUDA provider is unavailable: no NVIDIA GPU on this machine"
    reason = onnxruntime_cuda_reason()  # each of its answers names the provider and why
    if reason:
        return reason
    torch_reason = cuda_unavailable_reason()
    if torch_reason:
        return f"ONNX Runtime's CUDA provider runs, but the backend times it with PyTorch CUDA events: {torch_reason}"
    return None


def tensorrt_backend_reason(sources: ModelSources) -> str | None:
    """Why the TensorRT backend cannot run ``sources.engine`` here (without importing TensorRT when it cannot)."""
    from optimize.engine import gpu_environment, read_sidecar, sidecar_mismatch, tensorrt_unavailable_reason

    if sources.engine is None:
        return "no engine given (build one with `mopt build-engine`)"
    if not Path(sources.engine).is_file():
        return f"engine {sources.engine} does not exist (build it with `mopt build-engine`)"
    machine = gpu_environment()
    reason = tensorrt_unavailable_reason(machine)
    if reason:
        return reason
    try:
        sidecar = read_sidecar(sources.engine)
    except MoptError as exc:
        return str(exc)
    if sidecar is not None:
        mismatch = sidecar_mismatch(sidecar, machine)
        if mismatch:
            return mismatch
    # Buffers are torch CUDA tensors: a CPU build of torch beside TensorRT cannot feed the engine.
    return cuda_unavailable_reason()


register_backend(
    BackendSpec(
        "torch-cuda",
        "PyTorch eager FP32 on the GPU (the GPU baseline)",
        _torch_cuda,
        _torch_cuda_reason,
    )
)
register_backend(
    BackendSpec(
        "torch-cuda-fp16",
        "PyTorch FP16 on the GPU, channels-last, one CUDA graph per input shape",
        _torch_cuda_fp16,
        _torch_cuda_reason,
    )
)
register_backend(
    BackendSpec(
        "onnxruntime-cuda",
        "ONNX Runtime CUDA provider, one run per ONNX file, I/O bound on the device",
        _onnxruntime_cuda,
        _onnxruntime_cuda_reason,
    )
)
register_backend(
    BackendSpec(
        "tensorrt",
        "TensorRT engine from `mopt build-engine` (precision as built), CUDA graphs where they capture",
        _tensorrt,
        tensorrt_backend_reason,
    )
)
