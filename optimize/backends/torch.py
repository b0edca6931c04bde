"""PyTorch backends: eager FP32 on the CPU (the reference), and on the GPU FP32 and FP16 with CUDA graphs.

Peak memory: the process's resident peak on the CPU; PyTorch's allocator peak on the GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from optimize.backends.base import BackendSpec, CpuBackend, InferenceBackend, ModelSources
from optimize.backends.cuda import (
    MIB,
    capture_cuda_graph,
    cuda_unavailable_reason,
    device_label,
    ieee_convolutions,
    log,
    time_on_stream,
)


class TorchBackend(CpuBackend):
    """PyTorch eager FP32 on the CPU: the reference every optimized model is compared against."""

    backend = "torch"

    def __init__(self, model, threads: int | None = None, name: str = "torch-cpu-fp32") -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval().to("cpu")
        self.name = name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


class TorchChannelsLastBackend(TorchBackend):
    """PyTorch eager FP32 on the CPU with channels-last (NHWC) tensors: what a PyTorch user tries first.

    oneDNN's convolutions run NHWC natively; in the default NCHW layout every convolution reorders its input.
    A baseline for ``mopt bench``, not a reference: the numbers are what PyTorch gives without mopt.
    """

    backend = "torch-channels-last"

    def __init__(self, model, threads: int | None = None, name: str = "torch-cpu-fp32-channels-last") -> None:
        import torch

        super().__init__(model, threads=threads, name=name)
        self.model = self.model.to(memory_format=torch.channels_last)

    def _call(self, x: Any) -> Any:
        return self.model(x)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._call(x).contiguous().numpy()  # N x 1 x H x W, back to NCHW


class TorchCompileBackend(TorchChannelsLastBackend):
    """``torch.compile`` (Inductor) of the model on the CPU, channels-last: PyTorch's own graph compiler.

    Inductor compiles once per input shape (``dynamic=False``: the fastest code for the shape timed), which
    takes minutes for a real model on a small machine. The first call at a shape is that compilation; it is
    timed on its own into :attr:`compile_s` and kept out of the latencies.
    """

    backend = "torch-compile"

    def __init__(self, model, threads: int | None = None, name: str = "torch-cpu-fp32-compile") -> None:
        import torch

        super().__init__(model, threads=threads, name=name)
        self.compiled = torch.compile(self.model, backend="inductor", dynamic=False)
        self.compile_s: dict[tuple[int, ...], float] = {}  # input shape -> seconds its first call took

    def _call(self, x: Any) -> Any:
        return self.compiled(x)

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        import time

        shape = tuple(batch.shape)
        if shape not in self.compile_s:
            start = time.perf_counter()
            self.infer(batch)
            self.compile_s[shape] = time.perf_counter() - start
        return super().time_inference(batch, warmup, iterations)

    def close(self) -> None:
        self.compiled = None
        self.model = None


def torch_compile_reason(sources: ModelSources) -> str | None:
    """Why ``torch.compile`` cannot run here: Inductor's CPU code generation needs a C++ compiler."""
    import shutil

    if not sources.checkpoint:
        return "no checkpoint given"
    compilers = [name for name in ("g++", "c++", "clang++") if shutil.which(name)]
    if not compilers and not os.environ.get("CXX"):
        return "torch.compile (Inductor) needs a C++ compiler on the CPU and none is on PATH (install g++)"
    return None


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
        return ieee_convolutions()

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


# --- registration ---------------------------------------------------------------------------------------------


def _load_model(sources: ModelSources) -> Any:
    from optimize.checkpoint import load_checkpoint

    return load_checkpoint(sources.checkpoint, arch=sources.arch).model


def _torch_models(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchBackend(_load_model(sources), threads=sources.threads)


def _torch_channels_last(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchChannelsLastBackend(_load_model(sources), threads=sources.threads)


def _torch_compile(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchCompileBackend(_load_model(sources), threads=sources.threads)


def _torch_cuda(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchCudaBackend(_load_model(sources))


def _torch_cuda_fp16(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TorchCudaBackend(_load_model(sources), half=True, cuda_graphs=True)


def _torch_cuda_reason(sources: ModelSources) -> str | None:
    if not sources.checkpoint:
        return "no checkpoint given"
    return cuda_unavailable_reason()


TORCH = BackendSpec(
    "torch",
    "PyTorch eager FP32 on the CPU (the reference)",
    _torch_models,
    lambda s: None if s.checkpoint else "no checkpoint given",
)
TORCH_CHANNELS_LAST = BackendSpec(
    "torch-channels-last",
    "PyTorch eager FP32 on the CPU, channels-last (a baseline: what PyTorch gives without mopt)",
    _torch_channels_last,
    lambda s: None if s.checkpoint else "no checkpoint given",
    default=False,
)
TORCH_COMPILE = BackendSpec(
    "torch-compile",
    "torch.compile (Inductor) on the CPU, channels-last, one compilation per shape, timed apart (a baseline; slow)",
    _torch_compile,
    torch_compile_reason,
    default=False,
)
TORCH_CUDA = BackendSpec(
    "torch-cuda",
    "PyTorch eager FP32 on the GPU (the GPU baseline)",
    _torch_cuda,
    _torch_cuda_reason,
)
TORCH_CUDA_FP16 = BackendSpec(
    "torch-cuda-fp16",
    "PyTorch FP16 on the GPU, channels-last, one CUDA graph per input shape",
    _torch_cuda_fp16,
    _torch_cuda_reason,
)
