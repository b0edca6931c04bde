"""ONNX Runtime backends: an ONNX file on the CPU provider, or on the CUDA provider with device-resident I/O.

Peak memory: the process's resident peak on the CPU; on the GPU the device memory the session holds after the
run (its arena is not visible to PyTorch, so this one is a drop of free device memory).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from optimize.backends.base import (
    BackendSpec,
    CpuBackend,
    InferenceBackend,
    ModelSources,
    onnx_precision,
)
from optimize.backends.cuda import MIB, cuda_unavailable_reason, device_label, time_on_stream
from optimize.errors import MoptError


class OnnxRuntimeBackend(CpuBackend):
    """An ONNX file in ONNX Runtime, on the CPU provider or a GPU provider when asked and present."""

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        name: str | None = None,
        precision: str | None = None,
        spinning: bool = False,
    ) -> None:
        """Open ``onnx_path`` in ONNX Runtime.

        Args:
            onnx_path: the ONNX file.
            providers: execution providers in order of preference; the CPU provider by default.
            threads: intra-op threads; ``None`` lets ONNX Runtime use every core.
            name: label in reports; defaults to ``onnxruntime-<cpu|cuda>-<precision>``.
            precision: label for the file's precision; read from its metadata by default.
            spinning: let idle intra-op threads busy-wait for the next operator (ONNX Runtime's own default).
                Off by default: on a machine shared with other work the spinning threads take the cores the
                work needs (the MediaPipe selfie model at batch 8 on 2 busy cores: 2x slower with spinning), and
                they keep spinning after a call returns, slowing whatever the process runs next.
        """
        import onnxruntime as ort

        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise MoptError(
                f"ONNX Runtime has no {', '.join(missing)} here (available: {', '.join(ort.get_available_providers())})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types from a C extension
            raise MoptError(f"ONNX Runtime cannot load {onnx_path}: {str(exc).splitlines()[0]}") from exc
        active = self.session.get_providers()
        if providers[0] not in active:
            raise MoptError(
                f"ONNX Runtime could not start {providers[0]} for {onnx_path} (it fell back to {active[0]})"
            )
        self.precision = precision or onnx_precision(onnx_path)
        on_gpu = providers[0] != "CPUExecutionProvider"
        self.device = "cuda" if on_gpu else "cpu"
        self.name = name or f"onnxruntime-{'cuda' if on_gpu else 'cpu'}-{self.precision}"
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def close(self) -> None:
        self.session = None


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


# --- registration ---------------------------------------------------------------------------------------------


def _onnxruntime_models(sources: ModelSources) -> Iterator[InferenceBackend]:
    for path in sources.onnx:
        yield OnnxRuntimeBackend(path, threads=sources.threads)


def _onnxruntime_cuda(sources: ModelSources) -> Iterator[InferenceBackend]:
    for path in sources.onnx:
        yield OnnxRuntimeCudaBackend(path)


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


ONNXRUNTIME = BackendSpec(
    "onnxruntime",
    "ONNX Runtime CPU provider, one run per ONNX file (FP32, FP16 graph, INT8 Q/DQ)",
    _onnxruntime_models,
    lambda s: None if s.onnx else "no ONNX file given (run `mopt export` first)",
    count=lambda s: len(s.onnx),
)
ONNXRUNTIME_CUDA = BackendSpec(
    "onnxruntime-cuda",
    "ONNX Runtime CUDA provider, one run per ONNX file, I/O bound on the device",
    _onnxruntime_cuda,
    _onnxruntime_cuda_reason,
    count=lambda s: len(s.onnx),
)
