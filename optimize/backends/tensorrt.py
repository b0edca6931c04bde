"""The TensorRT backend: an engine built by ``mopt build-engine``, checked against this machine, then run.

Every TensorRT call itself is in :mod:`optimize.tensorrt_api`; this module only drives it. Peak memory is the
engine's own numbers (its activation memory, ``ICudaEngine.device_memory_size_v2``, plus its weights) plus the peak
of its I/O buffers, so other processes on the GPU do not count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from optimize.backends.base import BackendSpec, InferenceBackend, ModelSources
from optimize.backends.cuda import MIB, capture_cuda_graph, cuda_unavailable_reason, device_label, log, time_on_stream
from optimize.errors import MoptError


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


def _tensorrt(sources: ModelSources) -> Iterator[InferenceBackend]:
    yield TensorRTBackend(sources.engine)


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


TENSORRT = BackendSpec(
    "tensorrt",
    "TensorRT engine from `mopt build-engine` (precision as built), CUDA graphs where they capture",
    _tensorrt,
    tensorrt_backend_reason,
)
