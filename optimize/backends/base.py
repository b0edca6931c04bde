"""The interface every inference backend implements, and the registry of backends by name.

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


def onnx_precision(path: str | Path) -> str:
    """The precision mopt recorded in an ONNX file's metadata (``mopt.precision``), ``fp32`` if none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props.get("mopt.precision", "fp32")


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
    # False for baselines that only run when named (torch.compile takes minutes per shape): commands that go
    # through every backend by default (`mopt compare`) leave them out.
    default: bool = True
    # How many backends ``create`` makes from the sources (None: one), known without making any: `mopt bench`
    # plans its measurements (and shows done / planned) before the first model is loaded.
    count: Callable[[ModelSources], int] | None = None

    def planned(self, sources: ModelSources) -> int:
        """How many backends :attr:`create` will make from ``sources`` if each starts."""
        return 1 if self.count is None else self.count(sources)


_BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add ``spec`` to the registry under its name (a later spec of the same name replaces it)."""
    _BACKENDS[spec.name] = spec
    return spec


def backend_names() -> list[str]:
    """Every registered backend, in registration order."""
    return list(_BACKENDS)


def backend_spec(name: str) -> BackendSpec:
    """The spec registered as ``name``; unknown names raise a MoptError listing the known ones."""
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
        yield from started_backends(spec, sources, skipped)


def started_backends(spec: BackendSpec, sources: ModelSources, skipped: list[dict]) -> Iterator[InferenceBackend]:
    """Every backend ``spec`` makes from ``sources``, one at a time; one failing to start ends it, in ``skipped``."""
    try:
        yield from spec.create(sources)
    except MoptError as exc:
        skipped.append({"backend": spec.name, "reason": str(exc)})
