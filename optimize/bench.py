"""Latency, throughput, memory and cost of every backend x batch x size, measured in one run.

Numbers from one run are comparable with each other (same machine, same load); ratios between them are
what the docs report. Nothing here asserts a speed: tests check the bookkeeping, not the clock.
"""

from __future__ import annotations

import datetime
import itertools
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from optimize import __version__
from optimize.backends import InferenceBackend, ModelSources, backend_spec, started_backends
from optimize.errors import MoptError

# The 99th percentile of n < 100 runs is interpolated between the slowest two (20 runs: 81 % of the way to the
# slowest): the slowest run under another name. It is shown (and trusted) only from this many timed runs on.
P99_MIN_RUNS = 100
# A measurement's runs all do the same work on the same input, so on a quiet machine they stay within a few per
# cent of each other (ONNX Runtime, cvunet 512x512, 2 threads, idle machine: 143-155 ms over runs, 1.08x). A slowest run
# 1.5x the fastest means something else held the CPU/GPU for a third of a run at least; a p90 25 % over the median
# means that happened in a tenth of the runs or more, enough to move p50 and every ratio taken from it.
SPREAD_MAX_OVER_MIN = 1.5
SPREAD_P90_OVER_P50 = 1.25

# Called before each measurement with its label, the measurements done and the number planned.
StepCallback = Callable[[str, int, int], None]


@dataclass
class BenchResult:
    backend: str
    name: str
    device: str
    precision: str
    batch: int
    height: int
    width: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float  # from every run; tables show it only from P99_MIN_RUNS runs on (see p99_is_valid)
    max_ms: float
    mean_ms: float
    images_per_s: float
    peak_mem_mb: float | None
    cost_per_1k_images_usd: float | None
    iterations: int
    cuda_graph: bool | None = None  # GPU backends that capture CUDA graphs: whether the timing replayed one
    note: str | None = None  # why not (a capture that failed and fell back to plain launches)
    compile_s: float | None = None  # backends that compile per shape (torch.compile): the first call, not timed

    @property
    def label(self) -> str:
        """``onnxruntime-cpu-fp32 batch 8 512x512``: the measurement in progress lines and warnings."""
        return measurement_label(self.name, self.batch, self.height, self.width)


@dataclass
class BenchReport:
    machine: dict
    results: list[BenchResult] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # [{"backend": str, "reason": str, ...}]
    settings: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)  # the files measured: ModelIdentity.to_dict() each
    warnings: list[str] = field(default_factory=list)  # from bench_warnings: too few runs, too wide a spread

    def to_dict(self) -> dict:
        return {
            "machine": self.machine,
            "models": self.models,
            "settings": self.settings,
            "results": [asdict(r) for r in self.results],
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def measurement_label(name: str, batch: int, height: int, width: int) -> str:
    """How progress lines and warnings name one measurement."""
    return f"{name} batch {batch} {height}x{width}"


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
    """Spread (min, max) and percentiles of per-call latency, throughput at the median, cost per 1000 images."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise MoptError("benchmark produced no valid timings")
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    images_per_s = batch / (p50 / 1e3)
    cost = None if price_per_hour is None else price_per_hour / 3600.0 / images_per_s * 1000.0
    return {
        "min_ms": float(t.min()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "max_ms": float(t.max()),
        "mean_ms": float(t.mean()),
        "images_per_s": images_per_s,
        "cost_per_1k_images_usd": cost,
    }


def p99_is_valid(iterations: int) -> bool:
    """Whether a p99 from ``iterations`` timed runs is a 99th percentile rather than the slowest run."""
    return iterations >= P99_MIN_RUNS


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def spread_warning(result: BenchResult) -> str | None:
    """Why one measurement's runs spread too widely to be trusted (see SPREAD_* above), or None."""
    if result.max_ms / result.min_ms <= SPREAD_MAX_OVER_MIN and result.p90_ms / result.p50_ms <= SPREAD_P90_OVER_P50:
        return None
    return (
        f"{result.label}: runs spread from {_ms(result.min_ms)} to {_ms(result.max_ms)} ms (p50 {_ms(result.p50_ms)}); "
        "the machine was busy or throttling: rerun, or raise --iterations"
    )


def bench_warnings(results: Sequence[BenchResult]) -> list[str]:
    """What makes a run's numbers less than they look: a p99 from too few runs (once), and each wide spread."""
    warnings = []
    few = sorted({r.iterations for r in results if not p99_is_valid(r.iterations)})
    if few:
        runs = " or ".join(str(n) for n in few)
        warnings.append(
            f"p99 needs >= {P99_MIN_RUNS} timed runs (--iterations); with {runs} per measurement it would be the "
            "slowest run, so it is not shown"
        )
    warnings += [w for w in map(spread_warning, results) if w]
    return warnings


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
    on_step: StepCallback | None = None,
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
        on_step: called before each measurement with its label, the measurements done so far and the number
            planned (every backend that can run here x batches x sizes; a backend that then fails to start
            takes its measurements out of the plan).
    """
    if warmup < 0 or iterations < 1:
        raise MoptError(f"--warmup must be >= 0 and --iterations >= 1 (got {warmup}, {iterations})")
    report = BenchReport(
        machine=machine_info(sources.threads),
        settings={"warmup": warmup, "iterations": iterations, "price_per_hour": price_per_hour},
    )
    runnable = []
    for spec in [backend_spec(name) for name in backends]:  # unknown names fail before any work
        if reason := spec.unavailable_reason(sources):
            report.skipped.append({"backend": spec.name, "reason": reason})
        else:
            runnable.append(spec)
    per_backend = len(batches) * len(sizes)
    planned = [spec.planned(sources) for spec in runnable]
    total, done = sum(planned) * per_backend, 0
    for spec, expected in zip(runnable, planned, strict=True):
        started = 0
        for backend in started_backends(spec, sources, report.skipped):
            started += 1
            if started > expected:  # a spec whose count undercounts: the plan grows rather than overflow
                total += per_backend
            with backend:
                for batch, (height, width) in itertools.product(batches, sizes):
                    if on_step:
                        on_step(measurement_label(backend.name, batch, height, width), done, total)
                    try:
                        result = measure_backend(backend, batch, height, width, warmup, iterations, price_per_hour)
                    except MoptError as exc:  # e.g. a shape outside a TensorRT engine's profile
                        shape = {"batch": batch, "height": height, "width": width}
                        report.skipped.append({"backend": backend.name, **shape, "reason": str(exc)})
                    else:
                        report.results.append(result)
                    done += 1
        # A backend that failed to start (skipped, with its reason) has nothing left to measure.
        total -= max(0, expected - started) * per_backend
    report.warnings = bench_warnings(report.results)
    return report
