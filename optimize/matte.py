"""Batch background removal over files and folders: images -> mattes (``mopt matte``).

The run has two phases. The *scan* reads every input's header (size, EXIF orientation) in the worker pool,
skips inputs whose output is already complete, and sorts the rest into size buckets: each image is
inferred at :func:`inference_size` (longest side at most ``max_side``, both sides rounded to a multiple of
:data:`SIZE_STEP`), a function of its own size only, so an image's matte never depends on which other
images share its batch. The *matte* phase runs batches of one bucket through the backend on the calling
thread while the pool decodes the next batches and encodes the finished ones; Pillow, NumPy and the
inference libraries release the GIL for their heavy work, so threads overlap on several cores.

Every output is written to a temporary file and renamed (:func:`optimize.fileio.atomic_output`): an
interrupted run (Ctrl-C, SIGTERM) leaves complete outputs or none, and a re-run picks up where it stopped.
A file that cannot be read, inferred or written is recorded with its reason and the run goes on.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from optimize.backends import InferenceBackend, ModelSources, backend_names, backend_spec
from optimize.backends.probe import PROBED_BACKENDS, ProbeCache, ProbeResult, choose_fastest
from optimize.card import IMAGENET, ModelCard, Normalization, SizeRule, input_card
from optimize.defaults import MATTE_DEFAULT_BATCH as DEFAULT_BATCH
from optimize.defaults import SIZE_STEP as SIZE_STEP  # the encoder's total stride
from optimize.errors import MoptError
from optimize.fileio import write_json
from optimize.images import (
    DEFAULT_PNG_COMPRESSION,
    OUTPUT_KINDS,
    DecodedImage,
    ImageInput,
    expand_image_inputs,
    load_image,
    matte_pixels,
    oriented_size,
    output_paths,
    output_status,
    png_level,
    preprocess,
    resize_alpha,
    resize_rgb,
    save_png,
)
from optimize.shapes import format_size

DEFAULT_MAX_SIDE = 1024
PREFETCH_BATCHES = 2  # batches decoded ahead of the one being inferred
# Backends in order of preference; the first that can run on this machine with the given model files wins.
# On a CPU, ONNX Runtime and OpenVINO are timed against each other when the run says at which size
# (optimize.backends.probe: `mopt matte` and `mopt serve` do); without a probe size they are taken in this order.
BACKEND_PREFERENCE = ("tensorrt", "onnxruntime-cuda", "onnxruntime", "openvino", "torch")
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda")

ProgressCallback = Callable[[str, int, int], None]


def default_workers() -> int:
    """One decode/encode thread per CPU core.

    Encoding full-size PNGs is the costliest step of a run; with a GPU backend it is the only one on the CPU.
    """
    return max(1, os.cpu_count() or 1)


def inference_size(
    height: int,
    width: int,
    max_side: int = DEFAULT_MAX_SIDE,
    step: int = SIZE_STEP,
    min_side: int = SIZE_STEP,
    rule: SizeRule | None = None,
) -> tuple[int, int]:
    """The ``(height, width)`` an image of this size is inferred at.

    A model of one fixed size (``rule``) is inferred at that size, whatever the image's (the image is resized
    to it and the matte back, as rembg does). A model that needs multiples of N gets sizes on a step that is a
    multiple of N.

    The longest side is scaled down to at most ``max_side`` (never up), the aspect ratio is kept, and both
    sides are rounded to the nearest multiple of ``step``. No side goes below ``min_side`` (rounded up to a
    step; an image whose short side is smaller is scaled up) nor above ``max_side`` (rounded down to a step);
    only an aspect ratio beyond ``max_side / min_side`` is changed to fit.

    Raises:
        MoptError: a non-positive size, or ``max_side`` below ``step`` or below ``min_side``.
    """
    if height <= 0 or width <= 0:
        raise MoptError(f"image size {height}x{width} is not positive")
    if rule is not None and rule.fixed:
        return tuple(rule.fixed)  # type: ignore[return-value]
    if rule is not None:
        step = math.lcm(step, rule.multiple)
    if max_side < max(step, min_side):
        raise MoptError(f"--max-side {max_side} is too small; use at least {max(step, min_side)}")
    scale = min(1.0, max_side / max(height, width))
    if min(height, width) * scale < min_side:
        scale = min_side / min(height, width)  # a backend that cannot run small shapes (a TensorRT profile)
    low, high = max(1, -(-min_side // step)), max_side // step

    def snap(side: int) -> int:
        return min(max(low, round(side * scale / step)), high) * step

    return snap(height), snap(width)


def default_max_side(card: ModelCard | Normalization, requested: int | None) -> int:
    """``--max-side`` as asked, else the side the model was trained at (its card's ``preferred_side``), else 1024.

    A model trained at 256 px (MediaPipe's selfie segmentation) runs at any size but sees a 1024 px portrait's
    background textures as foreground; at its own scale its mattes are clean.
    """
    return requested or input_card(card).preferred_side or DEFAULT_MAX_SIDE


# --- backend selection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeLimits:
    """Input shapes a backend can run (a TensorRT engine's optimization profile); the others run any shape."""

    min_side: int
    max_side: int
    max_batch: int


@dataclass
class BackendChoice:
    """The backend a matte run uses and why the better ones were not used.

    Attributes:
        name: registry name it was created from (``tensorrt``, ``onnxruntime-cuda``, ``onnxruntime``, ``torch``).
        backend: the loaded backend (the caller closes it).
        normalization: the card of the model it runs (its preprocessing and size rule).
        skipped: registry name -> reason, for every preferred backend that was passed over.
        limits: the shapes the backend accepts, when it does not accept every shape.
        notes: facts the user should see at start-up (an assumed normalization, ...).
    """

    name: str
    backend: InferenceBackend
    normalization: ModelCard
    skipped: dict[str, str] = field(default_factory=dict)
    limits: ShapeLimits | None = None
    notes: list[str] = field(default_factory=list)
    probe: ProbeResult | None = None  # set when the backend was chosen by timing the CPU runtimes

    def describe(self) -> str:
        """One line for the start of a run: what runs where, and why not something faster."""
        line = f"{self.backend.name} ({self.name}) on {self.backend.device}"
        if self.probe is not None:
            line += f", {self.probe.describe()}"
        if self.skipped:
            line += "; not used: " + "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return line

    def fit(self, batch: int, max_side: int) -> tuple[int, int, int]:
        """``(batch, max_side, min_side)`` for a run, narrowed to what the backend accepts."""
        fixed_batch = input_card(self.normalization).batch
        if fixed_batch is not None:
            batch = min(batch, fixed_batch)
        if self.limits is None:
            return batch, max_side, SIZE_STEP
        return (
            min(batch, self.limits.max_batch),
            min(max_side, self.limits.max_side),
            max(SIZE_STEP, self.limits.min_side),
        )


def _engine_details(sources: ModelSources) -> tuple[ModelCard | None, ShapeLimits | None]:
    """The card (from the ONNX the engine was built from) and profile limits, from the engine's sidecar."""
    from optimize.engine import read_sidecar
    from optimize.onnx_model import card_of_onnx

    sidecar = read_sidecar(sources.engine) or {}
    card = None
    onnx = sidecar.get("onnx")
    if sidecar.get("card"):
        card = ModelCard.from_dict(sidecar["card"], f"the card in {sources.engine}'s sidecar")
    elif onnx and Path(onnx).is_file():
        card = card_of_onnx(onnx)
    limits = None
    if sidecar.get("profiles") or sidecar.get("io"):
        from optimize.engine import engine_io_from_sidecar

        # One box of shapes that all run: profile 0's (the backend switches profiles per shape, but matte sends
        # any batch up to max_batch at any side in range); the same side bounds apply to height and width.
        profile = engine_io_from_sidecar(sidecar).profiles[0]
        limits = ShapeLimits(
            min_side=max(profile.min[2], profile.min[3]),
            max_side=min(profile.max[2], profile.max[3]),
            max_batch=profile.max[0],
        )
    return card, limits


def _details_for(name: str, sources: ModelSources) -> tuple[ModelCard, ShapeLimits | None, list[str]]:
    """The card, shape limits and notes for the model that backend ``name`` runs from ``sources``."""
    from optimize.onnx_model import card_of_onnx

    if name.startswith("torch") and sources.checkpoint is not None:
        from optimize.checkpoint import load_checkpoint

        return load_checkpoint(sources.checkpoint, arch=sources.arch).card, None, []
    if name == "tensorrt" and sources.engine is not None:
        card, limits = _engine_details(sources)
        if card is None and sources.onnx:
            card = card_of_onnx(sources.onnx[0])
        notes = []
        if card is None:
            card = input_card(IMAGENET)
            notes.append(
                "the engine's sidecar names no ONNX file that still exists: assuming ImageNet normalization "
                "(pass --onnx with the model it was built from to use its card)"
            )
        return card, limits, notes
    if sources.onnx:
        return card_of_onnx(sources.onnx[0]), None, []
    return input_card(IMAGENET), None, []


def select_backend(
    sources: ModelSources,
    require_gpu: bool = False,
    preference: Sequence[str] = BACKEND_PREFERENCE,
    fix: str = "pass --onnx, --engine or --checkpoint",
    probe_size: tuple[int, int] | None = None,
    probe_cache: ProbeCache | None = None,
) -> BackendChoice:
    """Load the fastest backend that can run ``sources`` here.

    Preference: TensorRT > ONNX Runtime CUDA > the faster of OpenVINO and ONNX Runtime on the CPU > PyTorch.

    Args:
        sources: the model files given (an engine, ONNX files, a checkpoint); a backend is only considered
            when its kind of file is there.
        require_gpu: refuse to fall back to a backend that runs on the CPU.
        preference: registry names to try, best first.
        fix: what the error tells the user to do when nothing can run (the command's own options).
        probe_size: the job's typical inference size: when OpenVINO and ONNX Runtime can both run the model,
            each is timed at it (or the cached answer is used) and the faster one is chosen. ``None``: take
            them in ``preference`` order.
        probe_cache: where probe results are kept (default: ``optimize.backends.probe.cache_path()``).

    Raises:
        MoptError: nothing can run (no usable model file), or ``require_gpu`` and no GPU backend can.
    """
    registered = set(backend_names())
    skipped: dict[str, str] = {}
    for name in preference:
        if name not in registered:
            skipped[name] = "not available in this installation"
            continue
        if require_gpu and name not in GPU_BACKENDS:
            skipped[name] = "runs on the CPU (--require-gpu)"
            continue
        spec = backend_spec(name)
        reason = spec.unavailable_reason(sources)
        if reason:
            skipped[name] = reason
            continue
        if probe_size is not None and name in PROBED_BACKENDS and not require_gpu:
            probed = _probe_cpu_runtimes(name, sources, preference, registered, probe_size, probe_cache, skipped)
            if probed is not None:
                return probed
        models = spec.create(sources)
        try:
            backend = next(models)
        except MoptError as exc:
            skipped[name] = str(exc)
            continue
        except StopIteration:
            skipped[name] = "no model to load"
            continue
        finally:
            close = getattr(models, "close", None)
            if close is not None:
                close()  # the registry yields one backend per file; this run uses the first
        if require_gpu and backend.device == "cpu":
            backend.close()
            skipped[name] = "would run on the CPU (--require-gpu)"
            continue
        card, limits, notes = _details_for(name, sources)
        if not card.is_matte:
            backend.close()
            card.require_matte("matte and serve")
        return BackendChoice(name, backend, card, skipped, limits, notes)
    why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    if require_gpu:
        raise MoptError(f"--require-gpu: no GPU backend can run here ({why}); drop --require-gpu to run on the CPU")
    raise MoptError(f"no backend can run the model ({why}); {fix}")


def probe_size_for(max_side: int | None, card: ModelCard | None = None) -> tuple[int, int]:
    """The size the CPU runtimes are timed at for a run with ``max_side``: the largest bucket, a square.

    Without ``--max-side``, the side the run will use: the card's ``preferred_side`` when the card is known
    before the choice (an ONNX carries it), else the default side.
    """
    side = default_max_side(card, max_side) if card is not None else (max_side or DEFAULT_MAX_SIDE)
    side = max(SIZE_STEP, side // SIZE_STEP * SIZE_STEP)
    return side, side


def _first_backend(name: str, sources: ModelSources) -> InferenceBackend:
    """The backend registry entry ``name`` makes from the first model file in ``sources``."""
    models = backend_spec(name).create(sources)
    try:
        return next(models)
    except StopIteration:
        raise MoptError(f"{name}: no model to load") from None
    finally:
        models.close()


def _probe_cpu_runtimes(
    first: str,
    sources: ModelSources,
    preference: Sequence[str],
    registered: set[str],
    size: tuple[int, int],
    cache: ProbeCache | None,
    skipped: dict[str, str],
) -> BackendChoice | None:
    """Time the CPU runtimes of ``preference`` (from ``first`` on) that can run ``sources``; ``None`` if < 2 can."""
    rest = list(preference)[list(preference).index(first) :]
    group = [
        n
        for n in rest
        if n in PROBED_BACKENDS and n in registered and backend_spec(n).unavailable_reason(sources) is None
    ]
    if len(group) < 2 or not sources.onnx:
        return None
    card, limits, notes = _details_for(first, sources)
    if input_card(card).batch not in (None, 1):
        return None  # a model of one fixed batch is timed by nobody at batch 1: take the preference order
    # The size a job's largest images run at, under the model's own size rule (a fixed-size model: its size).
    size = inference_size(*size, max_side=max(size), rule=input_card(card).size)
    try:
        backend, result = choose_fastest(
            [(n, lambda n=n: _first_backend(n, sources)) for n in group],
            size,
            sources.onnx[0],
            sources.threads,
            cache,
        )
    except MoptError as exc:  # one of them does not load this model: take them one by one instead
        skipped["probe"] = str(exc)
        return None
    for other in group:
        if other != result.chosen:
            ms = result.latencies_ms
            skipped[other] = f"slower at {size[0]}x{size[1]} ({ms[other]:.0f} ms to {ms[result.chosen]:.0f} ms)"
    if not card.is_matte:
        backend.close()
        card.require_matte("matte and serve")
    return BackendChoice(result.chosen, backend, card, skipped, limits, notes, probe=result)


# --- the report ------------------------------------------------------------------------------------


@dataclass
class MatteFailure:
    """An input that produced no output, and why."""

    path: str
    reason: str


@dataclass
class MatteReport:
    """What a matte run did, as written to ``--report``.

    Attributes:
        images_per_s: processed images per second of the whole run (scan included, model loading not).
        p50_ms, p99_ms: per-image latency, from the start of decoding to the output being renamed into place.
        buckets: inference size ``HxW`` -> images processed at it.
        stage_s: seconds spent decoding, inferring and encoding, summed over threads.
        redone: outputs that were there but truncated or unreadable, and were written again.
    """

    backend: str
    device: str
    precision: str
    output: str
    outdir: str
    inputs: int
    processed: int
    skipped: int
    failed: list[MatteFailure]
    images_per_s: float
    p50_ms: float
    p99_ms: float
    scan_s: float
    wall_s: float
    batch: int
    workers: int
    max_side: int
    compression: str
    buckets: dict[str, int]
    stage_s: dict[str, float]
    interrupted: bool = False
    redone: int = 0
    models: list[dict] = field(default_factory=list)  # the model files run: ModelIdentity.to_dict() each

    def to_dict(self) -> dict:
        data = asdict(self)
        # JSON has no NaN: an empty run has no latency.
        for key in ("p50_ms", "p99_ms", "images_per_s"):
            if isinstance(data[key], float) and not math.isfinite(data[key]):
                data[key] = None
        return data


# --- the pipeline ----------------------------------------------------------------------------------


@dataclass
class MatteSettings:
    """How a run turns inputs into outputs (everything but the inputs, the folder and the backend)."""

    normalization: ModelCard | Normalization  # the model's card (a bare normalization means any size)
    output: str = "rgba"
    background: tuple[int, int, int] = (255, 255, 255)
    batch: int = DEFAULT_BATCH
    workers: int = field(default_factory=default_workers)
    max_side: int = DEFAULT_MAX_SIDE
    overwrite: bool = False
    compression: str = DEFAULT_PNG_COMPRESSION
    min_side: int = SIZE_STEP

    def validate(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise MoptError(f"output kind {self.output!r} is unknown; choose from: {', '.join(OUTPUT_KINDS)}")
        if self.batch < 1 or self.workers < 1:
            raise MoptError(f"--batch ({self.batch}) and --workers ({self.workers}) must be at least 1")
        inference_size(self.max_side, self.max_side, self.max_side, min_side=self.min_side)  # validates the sides
        png_level(self.compression)

    @property
    def size_rule(self) -> SizeRule:
        return input_card(self.normalization).size


@dataclass
class _Job:
    """One input on its way through the pipeline."""

    image: ImageInput
    output: Path
    bucket: tuple[int, int]  # inference size from the header's oriented size
    truncated: bool = False  # an earlier output is there but cut short: this run replaces it


@dataclass
class _Decoded:
    job: _Job
    picture: DecodedImage
    model_input: np.ndarray  # 3 x h x w float32, preprocessed at the inference size
    started: float


class _Failed(Exception):
    """A per-file failure inside a worker: the reason is reported, the run continues."""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C while a run is going, so ``kill`` also cleans up; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, window: int) -> Iterator:
    """``pool.map`` in order with at most ``window`` tasks queued (``Executor.map`` queues every item at once)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else math.nan


class _MatteRun:
    """The state of one run: the work per file (scan, decode, encode, run in the pool) and the tallies."""

    def __init__(
        self,
        images: list[ImageInput],
        outputs: list[Path],
        outdir: Path,
        backend: InferenceBackend,
        settings: MatteSettings,
        progress: ProgressCallback | None,
        models: Sequence[dict] = (),
    ) -> None:
        self.images, self.outputs, self.outdir = images, outputs, outdir
        self.models = [dict(m) for m in models]
        self.backend, self.settings = backend, settings
        self.notify = progress or (lambda phase, done, total: None)
        self.failed: list[MatteFailure] = []
        self.latencies: list[float] = []
        self.buckets: dict[str, int] = {}
        self.stage = {"decode": 0.0, "infer": 0.0, "encode": 0.0}
        self.lock = threading.Lock()  # stage totals are added to from worker threads
        self.processed = self.skipped = self.finished = self.redone = 0
        self.encoding: dict[Future, _Decoded] = {}  # encodes submitted and not yet tallied
        self.started = time.perf_counter()
        self.scan_s = 0.0

    # Work done in the pool, one file at a time.

    def scan(self, index: int) -> _Job | MatteFailure | None:
        """Header of input ``index``: a job, a failure, or None when its output is already complete."""
        image, output = self.images[index], self.outputs[index]
        try:
            size = oriented_size(image.path)
        except MoptError as exc:
            return MatteFailure(str(image.path), _reason(exc).removeprefix(f"cannot read image {image.path}: "))
        except Exception as exc:  # a header parser's own error type (corrupt EXIF): report the file, go on
            return MatteFailure(str(image.path), f"cannot read the header: {type(exc).__name__}: {_reason(exc)}")
        status = "missing" if self.settings.overwrite else output_status(output, size, self.settings.output)
        if status == "complete":
            return None
        bucket = inference_size(
            *size, self.settings.max_side, min_side=self.settings.min_side, rule=self.settings.size_rule
        )
        return _Job(image, output, bucket, truncated=status == "truncated")

    def decode(self, job: _Job) -> _Decoded:
        started = time.perf_counter()
        try:
            picture = load_image(job.image.path)
            bucket = inference_size(
                *picture.size, self.settings.max_side, min_side=self.settings.min_side, rule=self.settings.size_rule
            )
            model_input = preprocess(resize_rgb(picture.rgb, *bucket)[None], self.settings.normalization)[0]
        except MoptError as exc:
            raise _Failed(_reason(exc).removeprefix(f"cannot read image {job.image.path}: ")) from exc
        except Exception as exc:  # a decoder's own error type (corrupt EXIF, odd TIFF tags): report the file
            raise _Failed(f"cannot decode: {type(exc).__name__}: {_reason(exc)}") from exc
        with self.lock:
            self.stage["decode"] += time.perf_counter() - started
        return _Decoded(job, picture, model_input, started)

    def encode(self, item: _Decoded, alpha: np.ndarray) -> float:
        """Resize the matte to full size, compose and write the output; returns the image's latency in seconds."""
        began = time.perf_counter()
        settings = self.settings
        try:
            full = resize_alpha(alpha, *item.picture.size)
            pixels = matte_pixels(item.picture, full, settings.output, settings.background)
            save_png(pixels, item.job.output, settings.compression)
        except (OSError, MoptError) as exc:
            raise _Failed(f"cannot write {item.job.output}: {_reason(exc)}") from exc
        done = time.perf_counter()
        with self.lock:
            self.stage["encode"] += done - began
        return done - item.started

    # Work done on the calling thread.

    def plan(self, pool: ThreadPoolExecutor) -> list[list[_Job]]:
        """Scan every input and cut the remaining work into batches of one size bucket each."""
        jobs: list[_Job] = []
        total = len(self.images)
        self.notify("scan", 0, total)
        window = 64 * self.settings.workers
        for scanned, result in enumerate(_bounded_map(pool, self.scan, range(total), window), start=1):
            if isinstance(result, MatteFailure):
                self.failed.append(result)
            elif result is None:
                self.skipped += 1
            else:
                jobs.append(result)
                self.redone += result.truncated
            if scanned % 64 == 0 or scanned == total:
                self.notify("scan", scanned, total)
        self.scan_s = time.perf_counter() - self.started
        # Stable sort: inputs of one bucket stay in their given order.
        jobs.sort(key=lambda job: job.bucket)
        batches: list[list[_Job]] = []
        for job in jobs:
            if batches and batches[-1][0].bucket == job.bucket and len(batches[-1]) < self.settings.batch:
                batches[-1].append(job)
            else:
                batches.append([job])
        return batches

    def infer(self, members: list[_Decoded]) -> np.ndarray | None:
        """Alpha (N x 1 x h x w) for decoded images of one size, or None after recording them as failed."""
        began = time.perf_counter()
        try:
            alphas = self.backend.infer(np.stack([m.model_input for m in members]))
            expected = (len(members), 1, *members[0].model_input.shape[1:])
            if alphas.shape != expected:
                raise MoptError(f"the model returned shape {alphas.shape}, expected {expected}")
        except Exception as exc:  # an inference failure loses this batch, not the run
            reason = f"inference failed: {_reason(exc)}"
            self.failed.extend(MatteFailure(str(m.job.image.path), reason) for m in members)
            return None
        finally:
            self.stage["infer"] += time.perf_counter() - began
        return alphas

    def collect(self, done: Iterable[Future]) -> None:
        """Tally finished encodes (written or failed)."""
        for future in done:
            item = self.encoding.pop(future)
            try:
                self.latencies.append(future.result())
                self.processed += 1
                key = format_size(*item.model_input.shape[1:])
                self.buckets[key] = self.buckets.get(key, 0) + 1
            except _Failed as exc:
                self.failed.append(MatteFailure(str(item.job.image.path), str(exc)))
            self.finished += 1

    def collect_after_interrupt(self) -> None:
        """Tally the encodes that completed before the pool stopped (cancelled ones wrote nothing)."""
        self.collect([f for f in self.encoding if f.done() and not f.cancelled()])

    def process(self, pool: ThreadPoolExecutor, batches: list[list[_Job]]) -> None:
        """Infer batch i on this thread while the pool decodes batches i+1.. and encodes earlier ones."""
        settings = self.settings
        total = sum(len(b) for b in batches)
        self.notify("matte", 0, total)
        decoding: deque[list[tuple[_Job, Future]]] = deque()
        upcoming = iter(batches)

        def submit_next() -> None:
            group = next(upcoming, None)
            if group is not None:
                decoding.append([(job, pool.submit(self.decode, job)) for job in group])

        for _ in range(PREFETCH_BATCHES):
            submit_next()
        while decoding:
            group = decoding.popleft()
            submit_next()
            ready: list[_Decoded] = []
            for job, future in group:
                try:
                    ready.append(future.result())
                except _Failed as exc:
                    self.failed.append(MatteFailure(str(job.image.path), str(exc)))
                    self.finished += 1
            # The header decided the batch; an image whose decoded size disagrees (orientation stored after
            # the pixels) gets its own inference call rather than a wrong resize.
            by_shape: dict[tuple[int, ...], list[_Decoded]] = {}
            for item in ready:
                by_shape.setdefault(item.model_input.shape, []).append(item)
            for members in by_shape.values():
                alphas = self.infer(members)
                if alphas is None:
                    self.finished += len(members)
                    continue
                for member, alpha in zip(members, alphas, strict=True):
                    self.encoding[pool.submit(self.encode, member, alpha[0])] = member
            # Bound the images held in memory: wait for encodes once more than a few batches are queued.
            while len(self.encoding) > settings.batch * PREFETCH_BATCHES + settings.workers:
                self.collect(wait(list(self.encoding), return_when=FIRST_COMPLETED)[0])
            self.collect([f for f in self.encoding if f.done()])
            self.notify("matte", self.finished, total)
        while self.encoding:
            self.collect(wait(list(self.encoding), return_when=FIRST_COMPLETED)[0])
            self.notify("matte", self.finished, total)

    def report(self, interrupted: bool = False) -> MatteReport:
        wall = time.perf_counter() - self.started
        settings = self.settings
        return MatteReport(
            backend=self.backend.name,
            device=self.backend.device,
            precision=self.backend.precision,
            output=settings.output,
            outdir=str(self.outdir),
            inputs=len(self.images),
            processed=self.processed,
            skipped=self.skipped,
            failed=sorted(self.failed, key=lambda f: f.path),
            images_per_s=self.processed / wall if self.processed else math.nan,
            p50_ms=_percentile_ms(self.latencies, 50),
            p99_ms=_percentile_ms(self.latencies, 99),
            scan_s=self.scan_s,
            wall_s=wall,
            batch=settings.batch,
            workers=settings.workers,
            max_side=settings.max_side,
            compression=settings.compression,
            buckets=dict(sorted(self.buckets.items())),
            stage_s={k: round(v, 3) for k, v in self.stage.items()},
            interrupted=interrupted,
            redone=self.redone,
            models=self.models,
        )


def mattes_from_images(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    *,
    backend: InferenceBackend,
    normalization: ModelCard | Normalization,
    output: str = "rgba",
    background: tuple[int, int, int] = (255, 255, 255),
    batch: int = DEFAULT_BATCH,
    workers: int | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    overwrite: bool = False,
    compression: str = DEFAULT_PNG_COMPRESSION,
    min_side: int = SIZE_STEP,
    report_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    models: Sequence[dict] = (),
) -> MatteReport:
    """Matte every image of ``inputs`` into ``outdir``, keeping their relative folder structure.

    Args:
        inputs: image files, folders (walked recursively) and glob patterns.
        outdir: output folder; ``a/b/x.jpg`` under an input folder becomes ``outdir/a/b/x.png``. It must
            not be an input folder; inside one, it is left out of the walk.
        backend: a loaded backend (see :func:`select_backend`); the caller closes it.
        normalization: the model's input normalization.
        output: ``rgba``, ``alpha`` or ``composite`` (see :func:`optimize.images.matte_pixels`).
        background: composite background colour (RGB).
        batch: images per inference call (all of one size bucket).
        workers: threads that decode and encode while the backend infers (default: one per CPU core).
        max_side: longest side images are inferred at; mattes are resized back to the full input size.
        overwrite: redo outputs that are already complete (otherwise they are skipped).
        compression: PNG compression preset, ``fast``, ``default`` or ``small``.
        min_side: shortest side images are inferred at (a TensorRT profile's minimum, see
            :meth:`BackendChoice.fit`); smaller images are scaled up for inference.
        report_path: where to write the report JSON (also written when the run is interrupted).
        progress: called as ``progress(phase, done, total)`` with phase ``"scan"`` then ``"matte"``.
        models: the identities of the model files the backend runs, recorded in the report.

    Returns:
        The report; ``report.failed`` lists every input that produced no output.

    Raises:
        MoptError: bad arguments, no inputs, or outputs that would overwrite inputs (before anything is written).
        KeyboardInterrupt: after an interruption (Ctrl-C, SIGTERM), once the outputs being written are complete.
    """
    settings = MatteSettings(
        normalization,
        output,
        background,
        batch,
        workers or default_workers(),
        max_side,
        overwrite,
        compression,
        min_side,
    )
    settings.validate()
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise MoptError(f"output folder {outdir} is a file; choose a folder for -o")
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == outdir.resolve():
            raise MoptError(
                f"output folder {outdir} is the input folder {item}: outputs would mix with the inputs; "
                "choose another -o"
            )
    images = expand_image_inputs(inputs, exclude=outdir)
    run = _MatteRun(images, output_paths(images, outdir), outdir, backend, settings, progress, models)
    with _sigterm_as_interrupt(), ThreadPoolExecutor(settings.workers, thread_name_prefix="mopt-matte") as pool:
        try:
            run.process(pool, run.plan(pool))
        except KeyboardInterrupt:
            # Queued work is dropped; the encodes already running finish, each renaming a complete file.
            pool.shutdown(wait=True, cancel_futures=True)
            run.collect_after_interrupt()
            if report_path is not None:
                write_json(report_path, run.report(interrupted=True).to_dict())
            raise
    report = run.report()
    if report_path is not None:
        write_json(report_path, report.to_dict())
    return report
