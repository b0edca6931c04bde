"""Latency, throughput, memory and cost of every backend x batch x size, measured in one run.

Numbers from one run are comparable with each other (same machine, same load); ratios between them are
what the docs report. Nothing here asserts a speed: tests check the bookkeeping, not the clock.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from optimize import __version__
from optimize.backends import InferenceBackend, ModelSources, available_backends
from optimize.errors import MoptError


@dataclass
class BenchResult:
    backend: str
    name: str
    device: str
    precision: str
    batch: int
    height: int
    width: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    peak_mem_mb: float | None
    cost_per_1k_images_usd: float | None
    iterations: int
    cuda_graph: bool | None = None  # GPU backends that capture CUDA graphs: whether the timing replayed one
    note: str | None = None  # why not (a capture that failed and fell back to plain launches)
    compile_s: float | None = None  # backends that compile per shape (torch.compile): the first call, not timed


@dataclass
class BenchReport:
    machine: dict
    results: list[BenchResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"backend": str, "reason": str, ...}]
    settings: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)  # the files measured: ModelIdentity.to_dict() each

    def to_dict(self) -> dict:
        return {
            "machine": self.machine,
            "models": self.models,
            "settings": self.settings,
            "results": [asdict(r) for r in self.results],
            "skipped": self.skipped,
        }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the best there is
    return platform.processor() or platform.machine()


def _openvino_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int | None = None) -> dict:
    """What the numbers were measured on: CPU, cores, threads used, library versions, GPU if any."""
    import onnxruntime
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": _openvino_version(),
        "mopt": __version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarize(times_ms: Sequence[float], batch: int, price_per_hour: float | None) -> dict:
    """Percentiles of per-call latency, throughput at the median, and cost per 1000 images."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise MoptError("benchmark produced no valid timings")
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    images_per_s = batch / (p50 / 1e3)
    cost = None if price_per_hour is None else price_per_hour / 3600.0 / images_per_s * 1000.0
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(t.mean()),
        "images_per_s": images_per_s,
        "cost_per_1k_images_usd": cost,
    }


def measure_backend(
    backend: InferenceBackend,
    batch: int,
    height: int,
    width: int,
    warmup: int,
    iterations: int,
    price_per_hour: float | None = None,
) -> BenchResult:
    """Time one backend at one input shape (random normal input: zeros can run unrealistically fast)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
    backend.reset_peak_memory()
    times = backend.time_inference(x, warmup, iterations)
    shape = tuple(x.shape)
    return BenchResult(
        backend=backend.backend,
        name=backend.name,
        device=backend.device,
        precision=backend.precision,
        batch=batch,
        height=height,
        width=width,
        peak_mem_mb=backend.peak_memory_mb(),
        iterations=len(times),
        cuda_graph=getattr(backend, "graph_used", {}).get(shape),
        note=getattr(backend, "graph_notes", {}).get(shape),
        compile_s=getattr(backend, "compile_s", {}).get(shape),
        **summarize(times, batch, price_per_hour),
    )


def bench_from_sources(
    sources: ModelSources,
    backends: Sequence[str],
    batches: Sequence[int],
    sizes: Sequence[tuple[int, int]],
    warmup: int = 3,
    iterations: int = 20,
    price_per_hour: float | None = None,
    on_step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure every available backend at every batch x size; unavailable ones are listed with the reason.

    Args:
        sources: checkpoint / ONNX files / engine the backends are built from.
        backends: registry names, e.g. ``["torch", "onnxruntime"]``.
        batches: batch sizes.
        sizes: (height, width) pairs.
        warmup: untimed calls before each measurement.
        iterations: timed calls per measurement.
        price_per_hour: instance price in USD, for the cost per 1000 images.
        on_step: called with a label before each measurement (progress display).
    """
    if warmup < 0 or iterations < 1:
        raise MoptError(f"--warmup must be >= 0 and --iterations >= 1 (got {warmup}, {iterations})")
    report = BenchReport(
        machine=machine_info(sources.threads),
        settings={"warmup": warmup, "iterations": iterations, "price_per_hour": price_per_hour},
    )
    for backend in available_backends(list(backends), sources, report.skipped):
        with backend:
            for batch in batches:
                for height, width in sizes:
                    if on_step:
                        on_step(f"{backend.name} batch {batch} {height}x{width}")
                    try:
                        result = measure_backend(backend, batch, height, width, warmup, iterations, price_per_hour)
                    except MoptError as exc:  # e.g. a shape outside a TensorRT engine's profile
                        report.skipped.append(
                            {
                                "backend": backend.name,
                                "batch": batch,
                                "height": height,
                                "width": width,
                                "reason": str(exc),
                            }
                        )
                        continue
                    report.results.append(result)
    return report
