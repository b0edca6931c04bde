"""A measured choice between CPU runtimes: time each on the model at the job's size, keep the fastest.

Which of OpenVINO and ONNX Runtime is faster depends on the CPU (AVX2, AVX-512, VNNI, AMX), the model and the
input size, so ``matte`` and ``serve`` measure instead of guessing: a few timed runs of each at the job's typical
inference size, once. The answer is cached per CPU model, model file (sha256), size, thread count and runtime
versions in ``$XDG_CACHE_HOME/mopt/backend-probe.json`` (``~/.cache`` by default), so later runs start at once.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from optimize.backends.base import InferenceBackend
from optimize.fileio import file_sha256, write_json

# The registry names the probe chooses between, and how a user reads them.
PROBED_BACKENDS = ("openvino", "onnxruntime")
RUNTIME_LABELS = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
PROBE_WARMUP = 1
PROBE_ITERATIONS = 3
CACHE_VERSION = 1


def cache_path() -> Path:
    """Where probe results are kept: ``$XDG_CACHE_HOME/mopt/backend-probe.json``, else ``~/.cache/mopt/...``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "mopt" / "backend-probe.json"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def runtime_versions() -> dict[str, str]:
    """Versions of the probed runtimes that are installed: an upgrade can change which one is faster."""
    from importlib import metadata

    versions = {}
    for dist in ("onnxruntime-gpu", "onnxruntime", "openvino"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def probe_key(model_sha256: str, size: tuple[int, int], threads: int | None, cpu: str | None = None) -> str:
    """The cache key of one probe: CPU, model, size, threads and runtime versions."""
    versions = ",".join(f"{k}={v}" for k, v in sorted(runtime_versions().items()))
    return f"{cpu or cpu_model()}|{model_sha256}|{size[0]}x{size[1]}|threads={threads or 'all'}|{versions}"


class ProbeCache:
    """Probe results in a small JSON file, written atomically; an unreadable file is treated as empty."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_path()

    def _entries(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):  # missing or corrupt (a crash cannot leave half a file, a user edit can)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> dict | None:
        """The cached result for ``key``, ``None`` on a miss."""
        entry = self._entries().get(key)
        return entry if isinstance(entry, dict) and "chosen" in entry and "latencies_ms" in entry else None

    def put(self, key: str, entry: dict) -> None:
        """Store ``entry`` under ``key``, keeping the others (last writer wins between concurrent runs)."""
        entries = self._entries()
        entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, {"version": CACHE_VERSION, "entries": entries})


@dataclass
class ProbeResult:
    """What the probe chose and why.

    Attributes:
        chosen: the registry name of the faster backend.
        size: ``(height, width)`` it was measured at.
        latencies_ms: registry name -> median milliseconds per batch-1 inference.
        cached: the numbers come from the cache, not from this run.
    """

    chosen: str
    size: tuple[int, int]
    latencies_ms: dict[str, float]
    cached: bool = False

    def describe(self) -> str:
        """``chosen by probe at 1024x1024: OpenVINO 113 ms, ONNX Runtime 130 ms``."""
        ranked = sorted(self.latencies_ms.items(), key=lambda item: item[1])
        numbers = ", ".join(f"{RUNTIME_LABELS.get(name, name)} {ms:.0f} ms" for name, ms in ranked)
        when = " (cached)" if self.cached else ""
        return f"chosen by probe at {self.size[0]}x{self.size[1]}: {numbers}{when}"


def probe_input(size: tuple[int, int]) -> np.ndarray:
    """A batch-1 input at ``size``: its values do not change the time of a convolutional network."""
    return np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)


def measure(backend: InferenceBackend, size: tuple[int, int]) -> float:
    """Median milliseconds of a few batch-1 inferences of ``backend`` at ``size`` after a warm-up run."""
    return float(np.median(backend.time_inference(probe_input(size), PROBE_WARMUP, PROBE_ITERATIONS)))


def choose_fastest(
    candidates: Sequence[tuple[str, Callable[[], InferenceBackend]]],
    size: tuple[int, int],
    model_path: Path,
    threads: int | None,
    cache: ProbeCache | None = None,
    timer: Callable[[InferenceBackend, tuple[int, int]], float] = measure,
) -> tuple[InferenceBackend, ProbeResult]:
    """Load the candidate backends, time them at ``size`` (or read the cache), keep the fastest loaded.

    Args:
        candidates: ``(registry name, loader)`` pairs; a loader builds its backend.
        size: the job's typical inference size, ``(height, width)``.
        model_path: the model file all candidates run (its sha256 is part of the cache key).
        threads: the thread count the backends run with (part of the key).
        cache: where results are kept; the default file when ``None``.
        timer: measures one backend (tests pass a deterministic one).

    Returns:
        The chosen backend (loaded; the caller closes it) and the probe's numbers. On a cache hit only the
        chosen backend is loaded.
    """
    cache = cache or ProbeCache()
    key = probe_key(file_sha256(model_path), size, threads)
    hit = cache.get(key)
    loaders = dict(candidates)
    if hit is not None and hit["chosen"] in loaders:
        result = ProbeResult(hit["chosen"], size, {k: float(v) for k, v in hit["latencies_ms"].items()}, cached=True)
        return loaders[hit["chosen"]](), result
    latencies: dict[str, float] = {}
    best: tuple[str, InferenceBackend] | None = None
    for name, load in candidates:
        backend = load()  # one model at a time beside the best so far: memory stays at two models
        latencies[name] = timer(backend, size)
        if best is None or latencies[name] < latencies[best[0]]:
            if best is not None:
                best[1].close()
            best = (name, backend)
        else:
            backend.close()
    if best is None:
        raise ValueError("choose_fastest needs at least one candidate")
    result = ProbeResult(best[0], size, latencies)
    cache.put(
        key,
        {
            "chosen": result.chosen,
            "latencies_ms": latencies,
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return best[1], result
