"""Inference backends: one interface over PyTorch, ONNX Runtime and TensorRT.

Every consumer (``compare`` through a Polygraphy runner, ``bench``, ``matte``, ``serve``) talks to an
:class:`InferenceBackend`: host float32 ``N x 3 x H x W`` in, host float32 ``N x 1 x H x W`` alpha out.
Backends are registered by name with a factory and an availability check, so a command can list what
runs on this machine and say why the rest is skipped.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optimize.errors import MoptError


class InferenceBackend(ABC):
    """A loaded model that turns preprocessed images into alpha mattes.

    Attributes:
        name: unique label in reports, e.g. ``"onnxruntime-cpu-fp32"``.
        backend: the registry name it was created from, e.g. ``"onnxruntime"``.
        device: where it runs, in words (``"cpu"``, ``"cuda:0 NVIDIA H100"``).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
    """

    name: str = "backend"
    backend: str = "backend"
    device: str = "cpu"
    precision: str = "fp32"

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (N x 3 x H x W float32, host) and return alpha (N x 1 x H x W float32, host)."""

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        """Milliseconds per call of ``infer`` after ``warmup`` untimed calls.

        Host-synchronous backends are timed with a monotonic clock around the call; GPU backends override
        this with device events on device-resident buffers.
        """
        for _ in range(warmup):
            self.infer(batch)
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            self.infer(batch)
            times.append((time.perf_counter() - start) * 1e3)
        return times

    def peak_memory_mb(self) -> float | None:
        """Peak memory the backend used since :meth:`reset_peak_memory` (device memory on GPUs), if known."""
        return None

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""

    def __enter__(self) -> InferenceBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RssPeakSampler:
    """Peak resident memory of this process while it runs, sampled from /proc every few milliseconds.

    ``ru_maxrss`` cannot be reset, so it would report the largest model of a whole bench run for every
    backend; sampling gives each measurement window its own peak.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:  # not Linux: fall back to the lifetime peak
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> RssPeakSampler:
        self.peak_bytes = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())


class CpuBackend(InferenceBackend):
    """Base for host backends: peak memory is the process's resident peak during the measured window."""

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        for _ in range(warmup):
            self.infer(batch)
        with RssPeakSampler() as sampler:
            times = super().time_inference(batch, 0, iterations)
        self._peak_mb = sampler.peak_bytes / 2**20
        return times

    def peak_memory_mb(self) -> float | None:
        return getattr(self, "_peak_mb", None)

    def reset_peak_memory(self) -> None:
        self._peak_mb = None


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


def onnx_precision(path: str | Path) -> str:
    """The precision mopt recorded in an ONNX file's metadata (``mopt.precision``), ``fp32`` if none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props.get("mopt.precision", "fp32")


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
    ) -> None:
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


# --- the registry ---------------------------------------------------------------------------------


@dataclass
class ModelSources:
    """The artifacts a backend may be built from; each backend takes the ones it understands."""

    checkpoint: Path | None = None
    onnx: list[Path] = field(default_factory=list)
    engine: Path | None = None
    arch: str | None = None
    threads: int | None = None


@dataclass(frozen=True)
class BackendSpec:
    """How to make a backend by name and how to tell why it cannot run here."""

    name: str
    description: str
    create: Callable[[ModelSources], Iterator[InferenceBackend]]
    unavailable_reason: Callable[[ModelSources], str | None]


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    _BACKENDS[spec.name] = spec
    return spec


def backend_names() -> list[str]:
    _load_optional_backends()
    return list(_BACKENDS)


def backend_spec(name: str) -> BackendSpec:
    _load_optional_backends()
    if name not in _BACKENDS:
        raise MoptError(f"unknown backend {name!r}; choose from: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def available_backends(names: list[str], sources: ModelSources, skipped: list[dict]) -> Iterator[InferenceBackend]:
    """Build, one at a time, every backend the named specs can make from ``sources``.

    A backend that cannot run here — unavailable, or failing to start (a CUDA provider that does not load, an
    engine built for another GPU) — is appended to ``skipped`` as ``{"backend", "reason"}`` instead of
    stopping the caller: a report with the rest is worth more than none.
    """
    for spec in [backend_spec(name) for name in names]:  # unknown names fail before any work
        reason = spec.unavailable_reason(sources)
        if reason:
            skipped.append({"backend": spec.name, "reason": reason})
            continue
        try:
            yield from spec.create(sources)
        except MoptError as exc:
            skipped.append({"backend": spec.name, "reason": str(exc)})


def _load_optional_backends() -> None:
    """Import the modules that register GPU backends; they import CUDA libraries only when used."""
    import importlib

    for module in ("optimize.gpu_backends",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def _torch_models(sources: ModelSources) -> Iterator[InferenceBackend]:
    from optimize.checkpoint import load_checkpoint

    loaded = load_checkpoint(sources.checkpoint, arch=sources.arch)
    yield TorchBackend(loaded.model, threads=sources.threads)


def _onnxruntime_models(sources: ModelSources) -> Iterator[InferenceBackend]:
    for path in sources.onnx:
        yield OnnxRuntimeBackend(path, threads=sources.threads)


register_backend(
    BackendSpec(
        "torch",
        "PyTorch eager FP32 on the CPU (the reference)",
        _torch_models,
        lambda s: None if s.checkpoint else "no checkpoint given",
    )
)
register_backend(
    BackendSpec(
        "onnxruntime",
        "ONNX Runtime CPU provider, one run per ONNX file (FP32, FP16 graph, INT8 Q/DQ)",
        _onnxruntime_models,
        lambda s: None if s.onnx else "no ONNX file given (run `mopt export` first)",
    )
)
