"""Accuracy comparison: PyTorch FP32 is the reference, every optimized model is a candidate.

Polygraphy's ``Comparator`` runs the runners and checks element-wise tolerances; mopt adds the matte
metrics, which say whether a difference is visible to a user, and a MAD budget per precision. A candidate
passes when every element is within ``atol + rtol * |ref|``, its MAD is within budget and it produced no
NaN or Inf.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from polygraphy.comparator import Comparator
from polygraphy.comparator.compare import SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from optimize.backends import InferenceBackend, ModelSources, available_backends, backend_names, backend_spec
from optimize.backends.polygraphy_runner import BackendRunner
from optimize.card import ModelCard, Normalization
from optimize.errors import MoptError
from optimize.export import INPUT_NAME, OUTPUT_NAME
from optimize.fileio import file_sha256
from optimize.images import inputs_from_folder, synthetic_inputs
from optimize.metrics import matte_metrics


@dataclass(frozen=True)
class Tolerance:
    """What a candidate of one precision must meet against the FP32 reference.

    Attributes:
        atol: absolute tolerance per alpha value.
        rtol: relative tolerance per alpha value (of the reference).
        mad: budget for the mean absolute difference over all pixels.
    """

    atol: float
    rtol: float
    mad: float


# FP32: kernels differ only in summation order. FP16: a few 8-bit alpha steps (1/255 = 3.9e-3) at the
# worst boundary pixel, a fraction of a step on average. INT8: boundary pixels can flip, so the element-wise
# bound only rules out garbage and the MAD budget (the quantization acceptance bar) decides.
PRECISION_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, mad=1e-5),
    "fp16": Tolerance(atol=2e-2, rtol=0.0, mad=1e-3),
    # bf16 keeps 8 mantissa bits to FP16's 10 but FP32's range; measured on cvunet at 512x512 (OpenVINO's CPU
    # bf16): max 1.9e-3, mean 2e-4 — inside the FP16 budget.
    "bf16": Tolerance(atol=2e-2, rtol=0.0, mad=1e-3),
    "int8": Tolerance(atol=1.0, rtol=0.0, mad=1e-2),
}


@dataclass
class Candidate:
    """A model to compare: how to build its backend, its label and precision."""

    name: str
    precision: str
    make_backend: Callable[[], InferenceBackend]
    model: Path | None = None  # the file it runs (checkpoint, ONNX or engine), recorded in the report


@dataclass
class CandidateResult:
    name: str
    precision: str
    passed: bool
    atol: float
    rtol: float
    mad_budget: float
    max_abs: float
    mean_abs: float
    mad: float
    mse: float
    sad: float
    grad: float
    conn: float
    iou: float
    nonfinite: int
    inference_ms: float
    failures: list[str] = field(default_factory=list)
    psnr: float = math.nan  # image-to-image models: the matte metrics do not apply, PSNR does
    model: str | None = None  # the file the candidate ran
    sha256: str | None = None  # of that file: two reports can be told apart even when the paths match


@dataclass
class CompareReport:
    passed: bool
    reference: str
    candidates: list[CandidateResult]
    inputs: dict
    reference_model: str | None = None
    reference_sha256: str | None = None

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reference": self.reference,
            "reference_model": self.reference_model,
            "reference_sha256": self.reference_sha256,
            "inputs": self.inputs,
            "tolerances": {k: asdict(v) for k, v in PRECISION_TOLERANCES.items()},
            "candidates": [asdict(c) for c in self.candidates],
        }


def tolerance_for(precision: str, overrides: dict[str, Tolerance] | None = None) -> Tolerance:
    table = {**PRECISION_TOLERANCES, **(overrides or {})}
    if precision not in table:
        raise MoptError(f"no tolerance for precision {precision!r}; known: {', '.join(table)}")
    return table[precision]


MATTE_KEYS = ("mad", "mse", "sad", "grad", "conn", "iou")


def _metrics_over_batches(preds: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float]:
    """Matte metrics averaged over every image of every batch (NaN-free outputs only).

    A 3-channel (image-to-image) model gets MAD, MSE and PSNR instead: trimap-free matte metrics such as
    Grad and Conn describe alpha boundaries and mean nothing for an image.
    """
    if preds and preds[0].shape[1] != 1:
        return _image_metrics(preds, refs)
    per_image = [matte_metrics(p[i, 0], r[i, 0]) for p, r in zip(preds, refs) for i in range(p.shape[0])]
    return {k: float(np.mean([getattr(m, k) for m in per_image])) for k in MATTE_KEYS}


def _image_metrics(preds: list[np.ndarray], refs: list[np.ndarray]) -> dict[str, float]:
    pred = np.concatenate([p.reshape(-1) for p in preds]).astype(np.float64)
    ref = np.concatenate([r.reshape(-1) for r in refs]).astype(np.float64)
    mse = float(np.mean((pred - ref) ** 2))
    # Peak signal: 1 for images in [0, 1], else the reference's own range (a model that outputs 0..255).
    peak = 1.0 if ref.min() >= 0 and ref.max() <= 1 else float(ref.max() - ref.min()) or 1.0
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    metrics = dict.fromkeys(MATTE_KEYS, math.nan)
    metrics.update(mad=float(np.mean(np.abs(pred - ref))), mse=mse, psnr=psnr)
    return metrics


def compare_models(
    reference: Candidate,
    candidates: Sequence[Candidate],
    inputs: Sequence[np.ndarray],
    tolerances: dict[str, Tolerance] | None = None,
    input_description: dict | None = None,
) -> CompareReport:
    """Run every model on the same inputs with Polygraphy and judge each candidate against the reference.

    Args:
        reference: the FP32 PyTorch model (or whatever the caller trusts).
        candidates: optimized models; names must be unique.
        inputs: batches of preprocessed images, each N x 3 x H x W float32.
        tolerances: per-precision overrides of :data:`PRECISION_TOLERANCES`.
        input_description: what the inputs were (folder, size, batch), kept in the report.
    """
    if not candidates:
        raise MoptError("nothing to compare: give an ONNX model (--onnx) or an engine (--engine)")
    names = [reference.name] + [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise MoptError(f"candidate names must be unique, got {names}")
    runners = [BackendRunner(c.make_backend, c.name) for c in [reference, *candidates]]
    feeds = [{INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs]
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # mopt prints its own summary
        run_results = Comparator.run(runners, data_loader=feeds)
    ref_outputs = [it[OUTPUT_NAME] for it in run_results[reference.name]]

    results = []
    for index, cand in enumerate(candidates, start=1):
        tol = tolerance_for(cand.precision, tolerances)
        iterations = run_results[cand.name]
        outputs = [np.asarray(it[OUTPUT_NAME], dtype=np.float32) for it in iterations]
        nonfinite = int(sum((~np.isfinite(o)).sum() for o in outputs))
        failures: list[str] = []
        shapes_ok = all(o.shape == r.shape for o, r in zip(outputs, ref_outputs))
        if not shapes_ok:
            failures.append("output shape differs from the reference")
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            accuracy = Comparator.compare_accuracy(
                run_results,
                comparisons=[(0, index)],
                compare_func=SimpleCompareFunc(atol=tol.atol, rtol=tol.rtol),
            )
        if not bool(accuracy):
            failures.append(f"elements outside atol={tol.atol:g} rtol={tol.rtol:g}")
        if nonfinite:
            failures.append(f"{nonfinite} NaN/Inf values")
            metrics = dict.fromkeys(MATTE_KEYS, math.nan)
            max_abs = mean_abs = math.nan
        elif shapes_ok:
            diffs = [np.abs(o - r) for o, r in zip(outputs, ref_outputs)]
            max_abs = float(max(d.max() for d in diffs))
            mean_abs = float(np.mean([d.mean() for d in diffs]))
            metrics = _metrics_over_batches(outputs, ref_outputs)
            if metrics["mad"] > tol.mad:
                failures.append(f"MAD {metrics['mad']:.2e} over budget {tol.mad:.0e}")
        else:
            max_abs = mean_abs = math.nan
            metrics = dict.fromkeys(MATTE_KEYS, math.nan)
        times = [it.runtime for it in iterations if it.runtime is not None]
        results.append(
            CandidateResult(
                name=cand.name,
                precision=cand.precision,
                passed=not failures,
                atol=tol.atol,
                rtol=tol.rtol,
                mad_budget=tol.mad,
                max_abs=max_abs,
                mean_abs=mean_abs,
                nonfinite=nonfinite,
                inference_ms=float(np.median(times) * 1e3) if times else math.nan,
                failures=failures,
                model=str(cand.model) if cand.model else None,
                sha256=_sha256_or_none(cand.model),
                **metrics,
            )
        )
    return CompareReport(
        passed=all(r.passed for r in results),
        reference=reference.name,
        candidates=results,
        inputs=input_description or {},
        reference_model=str(reference.model) if reference.model else None,
        reference_sha256=_sha256_or_none(reference.model),
    )


def _sha256_or_none(path: Path | None) -> str | None:
    return file_sha256(path) if path is not None and Path(path).is_file() else None


REFERENCE_BACKEND = "torch"


def candidates_from_sources(
    sources: ModelSources, backends: Sequence[str] | None = None
) -> tuple[list[Candidate], list[dict]]:
    """Build a candidate for every model each available backend can run; list the skipped backends.

    Args:
        sources: the artifacts to build backends from.
        backends: registry names; by default every registered backend but the reference and the baselines
            that run only when named (``BackendSpec.default``).
    """
    skipped: list[dict] = []
    names = list(backends or [n for n in backend_names() if n != REFERENCE_BACKEND and backend_spec(n).default])
    candidates = []
    for name in names:
        # Backends of ONNX files get one file at a time, so that each candidate knows the file it runs.
        for model, single in _model_sources(name, sources):
            built = available_backends([name], single, skipped)
            candidates += [Candidate(b.name, b.precision, lambda b=b: b, model) for b in built]
    unique_skipped = list({(s["backend"], s["reason"]): s for s in skipped}.values())
    return _named_by_file(candidates), unique_skipped


def _model_sources(name: str, sources: ModelSources) -> list[tuple[Path | None, ModelSources]]:
    """``(file, sources)`` pairs to build backend ``name`` from: one per ONNX for an ONNX backend."""
    if name == REFERENCE_BACKEND or name.startswith("torch-"):
        return [(sources.checkpoint, sources)]
    if name == "tensorrt":
        return [(sources.engine, sources)]
    if not sources.onnx:
        return [(None, sources)]  # the backend says why it cannot run without one
    return [(path, replace(sources, onnx=[path])) for path in sources.onnx]


def _named_by_file(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates whose names clash are named by their file: ``onnxruntime-cpu-fp32 (cvunet.sim.onnx)``."""
    counts = Counter(c.name for c in candidates)
    named = []
    for c in candidates:
        if counts[c.name] > 1 and c.model is not None:
            same_file_name = sum(1 for o in candidates if o.name == c.name and o.model and o.model.name == c.model.name)
            label = c.model.name if same_file_name == 1 else str(c.model)
            c = replace(c, name=f"{c.name} ({label})")
        named.append(c)
    return named


def reference_from_checkpoint(sources: ModelSources) -> Candidate:
    """PyTorch eager FP32 on the CPU, the model as trained."""
    make = lambda: next(iter(backend_spec(REFERENCE_BACKEND).create(sources)))  # noqa: E731
    return Candidate("torch-cpu-fp32", "fp32", make, sources.checkpoint)


def reference_from_onnx(path: Path, threads: int | None = None) -> Candidate:
    """ONNX Runtime FP32 on the CPU over a reference ONNX: the reference for users who have only ONNX files."""
    from optimize.backends import OnnxRuntimeBackend

    name = f"onnxruntime-cpu-fp32 ({Path(path).name})"
    return Candidate(name, "fp32", lambda: OnnxRuntimeBackend(path, threads=threads, name=name), Path(path))


def batched_inputs(
    normalization: ModelCard | Normalization,
    height: int,
    width: int,
    batch: int,
    count: int,
    images: Path | None = None,
) -> list[np.ndarray]:
    """``count`` images (from a folder, else generated composites) at ``height x width``, in batches.

    ``normalization`` is the model's card (or a legacy normalization): its preprocessing is applied.
    """
    if count < 1 or batch < 1:
        raise MoptError(f"--count and --batch must be positive (got {count}, {batch})")
    if images is not None:
        x = inputs_from_folder(images, normalization, height, width, limit=count)
    else:
        x = synthetic_inputs(count, height, width, normalization)
    return [x[i : i + batch] for i in range(0, len(x), batch)]
