"""CUDA helpers the GPU backends share: whether a GPU is usable, CUDA-event timing, CUDA graph capture.

Timing: every GPU backend overrides ``time_inference`` to keep input and output on the device and time each
call with CUDA events after warm-up, so the numbers are GPU time per call without host copies.

CUDA graphs (``torch-cuda-fp16``, ``tensorrt``) are captured in thread-local mode, as trtexec does: another thread's
CUDA calls during the capture neither break it nor get refused. A capture that fails falls back to plain launches;
``graph_used`` says per input shape whether graph replay ran and ``graph_notes`` why not.

Nothing heavy is imported at import time: registering the GPU backends costs nothing on a CPU machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

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
def ieee_convolutions() -> Iterator[None]:
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
