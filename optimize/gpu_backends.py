"""The GPU backends, now in :mod:`optimize.backends` (one module per runtime); this name keeps old imports working."""

from __future__ import annotations

from optimize.backends.cuda import MIB, capture_cuda_graph, cuda_unavailable_reason, device_label, time_on_stream
from optimize.backends.onnxruntime import OnnxRuntimeCudaBackend, onnxruntime_cuda_reason
from optimize.backends.tensorrt import TensorRTBackend, tensorrt_backend_reason
from optimize.backends.torch import TorchCudaBackend

__all__ = [
    "MIB",
    "OnnxRuntimeCudaBackend",
    "TensorRTBackend",
    "TorchCudaBackend",
    "capture_cuda_graph",
    "cuda_unavailable_reason",
    "device_label",
    "onnxruntime_cuda_reason",
    "tensorrt_backend_reason",
    "time_on_stream",
]
