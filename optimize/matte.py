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
from optimize.checkpoint import Normalization
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
SIZE_STEP = 32  # the encoder's total stride: every stage sees whole pixels, and similar sizes share a bucket
DEFAULT_BATCH = 4
PREFETCH_BATCHES = 2  # batches decoded ahead of the one being inferred
# Backends in order of preference; the first that can run on this machine with the given model files wins.
BACKEND_PREFERENCE = ("tensorrt", "onnxruntime-cuda", "onnxruntime", "torch")
GPU_BACKENDS = ("tensorrt", "onnxruntime-cuda")

ProgressCallback = Callable[[str, int, int], None]


def default_workers() -> int:
    """One decode/encode thread per CPU core.

    Encoding full-size PNGs is the costliest step of a run; with a GPU backend it is the only one on the CPU.
    """
    return max(1, os.cpu_count() or 1)


def inference_size(
    height: int, width: int, max_side: int = DEFAULT_MAX_SIDE, step: int = SIZE_STEP, min_side: int = SIZE_STEP
) -> tuple[int, int]:
    """The ``(height, width)`` an image of this size is inferred at.

    The longest side is scaled down to at most ``max_side`` (never up), the aspect ratio is kept, and both
    sides are rounded to the nearest multiple of ``step``. No side goes below ``min_side`` (rounded up to a
    step; an image whose short side is smaller is scaled up) nor above ``max_side`` (rounded down to a step);
    only an aspect ratio beyond ``max_side / min_side`` is changed to fit.

    Raises:
        MoptError: a non-positive size, or ``max_side`` below ``step`` or below ``min_side``.
    """
    if height <= 0 or width <= 0:
        raise MoptError(f"image size {height}x{width} is not positive")
    if max_side < max(step, min_side):
        raise MoptError(f"--max-side {max_side} is too small; use at least {max(step, min_side)}")
    scale = min(1.0, max_side / max(height, width))
    if min(height, width) * scale < min_side:
        scale = min_side / min(height, width)  # a backend that cannot run small shapes (a TensorRT profile)
    low, high = max(1, -(-min_side // step)), max_side // step

    def snap(side: int) -> int:
        return min(max(low, round(side * scale / step)), high) * step

    return snap(height), snap(width)


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
        normalization: input normalization of the model it runs.
        skipped: registry name -> reason, for every preferred backend that was passed over.
        limits: the shapes the backend accepts, when it does not accept every shape.
        notes: facts the user should see at start-up (an assumed normalization, ...).
    """

    name: str
    backend: InferenceBackend
    normalization: Normalization
    skipped: dict[str, str] = field(default_factory=dict)
    limits: ShapeLimits | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the start of a run: what runs where, and why not something faster."""
        line = f"{self.backend.name} ({self.name}) on {self.backend.device}"
        if self.skipped:
            line += "; not used: " + "; ".join(f"{name}: {why}" for name, why in self.skipped.items())
        return line

    def fit(self, batch: int, max_side: int) -> tuple[int, int, int]:
        """``(batch, max_side, min_side)`` for a run, narrowed to what the backend accepts."""
        if self.limits is None:
            return batch, max_side, SIZE_STEP
        return (
            min(batch, self.limits.max_batch),
            min(max_side, self.limits.max_side),
            max(SIZE_STEP, self.limits.min_side),
        )


def _engine_details(sources: ModelSources) -> tuple[Normalization | None, ShapeLimits | None]:
    """Normalization (from the ONNX the engine was built from) and profile limits, from the engine's sidecar."""
    from optimize.engine import read_sidecar
    from optimize.export import onnx_normalization

    sidecar = read_sidecar(sources.engine) or {}
    normalization = None
    onnx = sidecar.get("onnx")
    if onnx and Path(onnx).is_file():
        normalization = onnx_normalization(onnx)
    limits = None
    profiles = sidecar.get("profiles") or []
    if profiles:
        from optimize.profiles import ShapeProfile

        # The backend runs profile 0; the same side bounds apply to height and width, so take the tighter.
        profile = ShapeProfile.from_dict(profiles[0])
        limits = ShapeLimits(
            min_side=max(profile.min[2], profile.min[3]),
            max_side=min(profile.max[2], profile.max[3]),
            max_batch=profile.max[0],
        )
    return normalization, limits


def _details_for(name: str, sources: ModelSources) -> tuple[Normalization, ShapeLimits | None, list[str]]:
    """Normalization, shape limits and notes for the model that backend ``name`` runs from ``sources``."""
    from optimize.export import onnx_normalization

    if name.startswith("torch") and sources.checkpoint is not None:
        from optimize.checkpoint import load_checkpoint

        return load_checkpoint(sources.checkpoint, arch=sources.arch).normalization, None, []
    if name == "tensorrt" and sources.engine is not None:
        normalization, limits = _engine_details(sources)
        if normalization is None and sources.onnx:
            normalization = onnx_normalization(sources.onnx[0])
        notes = []
        if normalization is None:
            normalization = Normalization()
            notes.append(
                "the engine's sidecar names no ONNX file that still exists: assuming ImageNet normalization "
                "(pass --onnx with the model it was built from to use its normalization)"
            )
        return normalization, limits, notes
    if sources.onnx:
        return onnx_normalization(sources.onnx[0]), None, []
    return Normalization(), None, []


def select_backend(
    sources: ModelSources,
    require_gpu: bool = False,
    preference: Sequence[str] = BACKEND_PREFERENCE,
) -> BackendChoice:
    """Load the fastest backend that can run ``sources`` here.

    Preference: TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU > PyTorch.

    Args:
        sources: the model files given (an engine, ONNX files, a checkpoint); a backend is only considered
            when its kind of file is there.
        require_gpu: refuse to fall back to a backend that runs on the CPU.
        preference: registry names to try, best first.

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
        normalization, limits, notes = _details_for(name, sources)
        return BackendChoice(name, backend, normalization, skipped, limits, notes)
    why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
    if require_gpu:
        raise MoptError(f"--require-gpu: no GPU backend can run here ({why}); drop --require-gpu to run on the CPU")
    raise MoptError(f"no backend can run the model ({why}); pass --onnx, --engine or --checkpoint")


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

    normalization: Normalization
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
    ) -> None:
        self.images, self.outputs, self.outdir = images, outputs, outdir
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
        bucket = inference_size(*size, self.settings.max_side, min_side=self.settings.min_side)
        return _Job(image, output, bucket, truncated=status == "truncated")

    def decode(self, job: _Job) -> _Decoded:
        started = time.perf_counter()
        try:
            picture = load_image(job.image.path)
            bucket = inference_size(*picture.size, self.settings.max_side, min_side=self.settings.min_side)
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
        )


def mattes_from_images(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    *,
    backend: InferenceBackend,
    normalization: Normalization,
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
    run = _MatteRun(images, output_paths(images, outdir), outdir, backend, settings, progress)
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
