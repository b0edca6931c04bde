"""Inference backends: one interface over PyTorch, ONNX Runtime, TensorRT and OpenVINO, one module per runtime.

Every consumer (``compare`` through a Polygraphy runner, ``bench``, ``matte``, ``serve``) talks to an
:class:`InferenceBackend`: host float32 ``N x 3 x H x W`` in, host float32 ``N x 1 x H x W`` alpha out.
Backends are registered by name with a factory and an availability check, so a command can list what runs on
this machine and say why the rest is skipped.

Layout (in the manner of Polygraphy's ``backend/<framework>/``):

- :mod:`~optimize.backends.base`: the interface, host-memory sampling, the registry.
- :mod:`~optimize.backends.torch`: PyTorch eager on the CPU (the reference) and on the GPU.
- :mod:`~optimize.backends.onnxruntime`: ONNX Runtime's CPU and CUDA providers.
- :mod:`~optimize.backends.openvino`: OpenVINO on the CPU (FP32, and bf16 where the CPU has it).
- :mod:`~optimize.backends.tensorrt`: TensorRT engines (the TensorRT calls are in :mod:`optimize.tensorrt_api`).
- :mod:`~optimize.backends.cuda`: the CUDA timing and graph helpers the GPU backends share.
- :mod:`~optimize.backends.polygraphy_runner`: any backend as a Polygraphy runner (imported on its own: it
  imports Polygraphy).

No module here imports a runtime at import time; each backend imports its runtime when it is created.
"""

from __future__ import annotations

from optimize.backends import onnxruntime as _onnxruntime
from optimize.backends import openvino as _openvino
from optimize.backends import tensorrt as _tensorrt
from optimize.backends import torch as _torch
from optimize.backends.base import _BACKENDS as _BACKENDS  # the registry itself (tests swap entries)
from optimize.backends.base import (
    BackendSpec,
    CpuBackend,
    InferenceBackend,
    ModelSources,
    RssPeakSampler,
    available_backends,
    backend_names,
    backend_spec,
    onnx_precision,
    register_backend,
    started_backends,
)
from optimize.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeCudaBackend
from optimize.backends.openvino import OpenVinoBackend
from optimize.backends.tensorrt import TensorRTBackend
from optimize.backends.torch import TorchBackend, TorchChannelsLastBackend, TorchCompileBackend, TorchCudaBackend

__all__ = [
    "BackendSpec",
    "CpuBackend",
    "InferenceBackend",
    "ModelSources",
    "OnnxRuntimeBackend",
    "OnnxRuntimeCudaBackend",
    "OpenVinoBackend",
    "RssPeakSampler",
    "TensorRTBackend",
    "TorchBackend",
    "TorchChannelsLastBackend",
    "TorchCompileBackend",
    "TorchCudaBackend",
    "available_backends",
    "backend_names",
    "backend_spec",
    "onnx_precision",
    "register_backend",
    "started_backends",
]

# Registration order is the order commands list and try them in: CPU reference first, then the CPU runtimes,
# then the GPU ones.
for _spec in (
    _torch.TORCH,
    _torch.TORCH_CHANNELS_LAST,
    _torch.TORCH_COMPILE,
    _onnxruntime.ONNXRUNTIME,
    _openvino.OPENVINO,
    _openvino.OPENVINO_BF16,
    _torch.TORCH_CUDA,
    _torch.TORCH_CUDA_FP16,
    _onnxruntime.ONNXRUNTIME_CUDA,
    _tensorrt.TENSORRT,
):
    register_backend(_spec)
