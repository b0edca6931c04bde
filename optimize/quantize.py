"""FP32 ONNX -> explicit INT8 (Q/DQ) ONNX with ONNX Runtime's static quantization, calibrated on real images.

TensorRT 11 has no INT8 calibrator: INT8 must be explicit ``QuantizeLinear``/``DequantizeLinear`` pairs in the
graph, symmetric (zero point 0) and signed. ONNX Runtime's quantizer writes exactly that and runs it on the
CPU, so the same file is measured here and built into an engine on a GPU.

Placement follows TensorRT's guidance (and NVIDIA ModelOpt's defaults): Q/DQ on the *inputs* of the weighted
ops (Conv, ConvTranspose, Gemm, MatMul: activations per tensor, weights per output channel), biases left in
float, and no Q/DQ on their outputs. The last convolution's output is the matte's logit: quantizing it
would band the alpha into 256 levels of logit. Everything else runs in the precision the builder picks.

The work is split in two so that calibration (running the model over the images, the slow part) is done
once: :func:`calibration_ranges_from_onnx` measures each quantized tensor's range with ONNX Runtime's
calibrators (entropy, min/max or percentile), the ranges go to a JSON cache keyed by the model's sha256, the
method and a fingerprint of the preprocessed images, and :func:`qdq_model_from_ranges` places the Q/DQ nodes
from the ranges, which takes about a second. ``mopt debug precision`` relies on that to re-quantize with
different nodes excluded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from optimize import __version__
from optimize.artifacts import derived_path
from optimize.defaults import DEFAULT_CALIBRATION_LIMIT as DEFAULT_CALIBRATION_LIMIT
from optimize.defaults import INT8_MAD as INT8_MAD  # the INT8 acceptance budget
from optimize.deps import quiet_libraries
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256, write_json
from optimize.onnx_model import (
    card_of_onnx,
    image_input,
    io_dims,
    load_onnx,
    require_fp32_source,
    run_onnx,
    set_metadata,
)
from optimize.verification import (
    DEFAULT_VERIFY_COUNT,
    AccuracyCheck,
    accuracy_check,
    refuse_changed_overwrite,
    verification_inputs,
    verification_record,
    worst_metrics,
)

CALIBRATION_METHODS = ("entropy", "minmax", "percentile")
DEFAULT_CALIBRATION_SIZE = (256, 256)
# A photo smaller than this per side carries no structure worth calibrating on once resized up.
MIN_CALIBRATION_SIDE = 32
# Images per calibration pass: histograms hold every activation of a pass in memory, so keep passes small.
CALIBRATION_CHUNK = 4
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CACHE_FORMAT = "mopt-int8-calibration"
CACHE_VERSION = 1
# Calibrator settings that change the ranges; part of the cache key so a changed setting never reuses old ranges.
CALIBRATOR_SETTINGS = {"symmetric": True, "op_types": list(WEIGHTED_OP_TYPES), "percentile": 99.999, "num_bins": 2048}
# ONNX Runtime quantizer options for TensorRT-compatible Q/DQ (see the module docstring).
QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OP_TYPES),
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
    "DedicatedQDQPair": False,
}


@dataclass
class CalibrationSet:
    """Preprocessed calibration images and a fingerprint of them (for the cache key).

    Attributes:
        inputs: N x 3 x H x W float32, preprocessed exactly as at inference.
        fingerprint: sha256 over the shape and bytes of ``inputs``.
        description: where the images came from, how many, at what size.
    """

    inputs: np.ndarray
    fingerprint: str
    description: dict


def data_fingerprint(inputs: np.ndarray) -> str:
    """sha256 of an input batch (shape and float32 bytes): identical images at identical size -> identical key."""
    digest = hashlib.sha256(repr(tuple(inputs.shape)).encode())
    digest.update(np.ascontiguousarray(inputs, dtype=np.float32).tobytes())
    return digest.hexdigest()


def calibration_set_from_folder(
    folder: str | Path,
    onnx_path: str | Path,
    size: tuple[int, int] | None = None,
    limit: int = DEFAULT_CALIBRATION_LIMIT,
) -> CalibrationSet:
    """Read, resize and preprocess a folder of calibration images with the model's recorded normalization.

    Raises:
        MoptError: missing or empty folder, an unreadable image (named), an image too small to calibrate on,
            or a size that contradicts the model's fixed input size.
    """
    from optimize.images import list_images, load_rgb, preprocess, resize_rgb

    height, width = calibration_size(onnx_path, size)
    if limit <= 0:
        raise MoptError(f"calibration image limit must be positive, got {limit}")
    paths = list_images(folder)[:limit]
    images = []
    for path in paths:
        rgb = load_rgb(path)
        if min(rgb.shape[:2]) < MIN_CALIBRATION_SIDE:
            raise MoptError(
                f"calibration image {path} is {rgb.shape[1]}x{rgb.shape[0]} px; calibration needs photos of at "
                f"least {MIN_CALIBRATION_SIDE} px per side (they are resized to {width}x{height}): remove it or use "
                "larger images"
            )
        images.append(resize_rgb(rgb, height, width))
    inputs = preprocess(images, card_of_onnx(onnx_path))
    description = {"source": str(folder), "count": len(images), "size": f"{height}x{width}"}
    return CalibrationSet(inputs, data_fingerprint(inputs), description)


def calibration_set_from_synthetic(
    count: int, onnx_path: str | Path, size: tuple[int, int] | None = None, seed: int = 1
) -> CalibrationSet:
    """``count`` built-in synthetic composites as calibration data (for trying the pipeline without photos)."""
    from optimize.images import synthetic_inputs

    if count <= 0:
        raise MoptError(f"--synthetic needs a positive number of images, got {count}")
    height, width = calibration_size(onnx_path, size)
    inputs = synthetic_inputs(count, height, width, card_of_onnx(onnx_path), seed=seed)
    description = {"source": f"synthetic composites (seed {seed})", "count": count, "size": f"{height}x{width}"}
    return CalibrationSet(inputs, data_fingerprint(inputs), description)


def calibration_size(onnx_path: str | Path, size: tuple[int, int] | None) -> tuple[int, int]:
    """The calibration H x W: ``size`` if the model accepts it, else the model's fixed size or 256 x 256."""
    rule = card_of_onnx(onnx_path).size
    if size is not None:
        rule.check(*size, what=f"calibration size for {onnx_path}")
    return tuple(size or rule.nearest(*DEFAULT_CALIBRATION_SIZE))  # type: ignore[return-value]


# --- calibration and its cache --------------------------------------------------------------------------------


class _ArrayReader:
    """ONNX Runtime ``CalibrationDataReader`` over an array: one image per ``get_next``."""

    def __init__(self, inputs: np.ndarray, input_name: str) -> None:
        self._items = iter([{input_name: inputs[i : i + 1]} for i in range(len(inputs))])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in CALIBRATION_METHODS:
        raise MoptError(f"calibration method {method!r} is unknown; choose from {', '.join(CALIBRATION_METHODS)}")
    return {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }[method]


def calibration_ranges_from_onnx(
    onnx_path: str | Path,
    inputs: np.ndarray,
    method: str = "entropy",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """Run the FP32 model over calibration images and return each quantized tensor's range.

    Args:
        onnx_path: the FP32 model.
        inputs: preprocessed calibration images, N x 3 x H x W.
        method: ``entropy`` (KL-divergence threshold, TensorRT's default), ``minmax`` or ``percentile``
            (99.999th percentile of |x|).
        progress: called with ``(images done, total)`` after each pass.

    Returns:
        tensor name -> ``(lowest, highest)`` as ONNX Runtime's calibrator computed them.
    """
    from onnxruntime.quantization import create_calibrator

    ort_method = _ort_method(method)
    if len(inputs) == 0:
        raise MoptError("no calibration images")
    options = {"symmetric": CALIBRATOR_SETTINGS["symmetric"]}
    if method == "percentile":
        options.update(percentile=CALIBRATOR_SETTINGS["percentile"], num_bins=CALIBRATOR_SETTINGS["num_bins"])
    with tempfile.TemporaryDirectory(prefix="mopt-calib-") as tmp:
        # The calibrator writes shape-inferred and augmented copies beside the model it is given: give it a
        # private copy so nothing appears in the user's folder.
        model_path = Path(tmp) / "model.onnx"
        source = load_onnx(onnx_path)
        input_name = image_input(source, onnx_path).name
        onnx.save(source, str(model_path))
        sink = io.StringIO()  # the histogram calibrators print progress bars of their own
        with quiet_libraries(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            calibrator = create_calibrator(
                model_path,
                list(WEIGHTED_OP_TYPES),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=ort_method,
                extra_options=options,
            )
            for start in range(0, len(inputs), CALIBRATION_CHUNK):
                calibrator.collect_data(_ArrayReader(inputs[start : start + CALIBRATION_CHUNK], input_name))
                if progress:
                    progress(min(start + CALIBRATION_CHUNK, len(inputs)), len(inputs))
            tensors = calibrator.compute_data()
    ranges = {}
    for name, data in tensors.items():
        lo, hi = (np.asarray(v, dtype=np.float64).reshape(-1) for v in data.range_value)
        if lo.size != 1 or hi.size != 1:
            raise MoptError(f"calibration returned a per-channel range for activation {name}; expected one per tensor")
        lo, hi = float(lo[0]), float(hi[0])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise MoptError(
                f"calibration found non-finite values in tensor {name}: the FP32 model overflows on these images"
            )
        ranges[name] = (lo, hi)
    return ranges


def _cache_key(onnx_sha256: str, method: str, fingerprint: str) -> dict:
    return {
        "onnx_sha256": onnx_sha256,
        "method": method,
        "data_fingerprint": fingerprint,
        "settings": CALIBRATOR_SETTINGS,
    }


def read_calibration_cache(path: str | Path, key: dict) -> dict[str, tuple[float, float]] | None:
    """The ranges stored at ``path`` when they were computed for ``key``; None when absent or for another key.

    Raises:
        MoptError: the file exists but is not a mopt calibration cache (it is never overwritten then).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoptError(
            f"calibration cache {path} is not readable JSON ({exc}); delete it or choose another --calib-cache"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise MoptError(
            f"{path} is not a mopt calibration cache; choose another --calib-cache path (it was left untouched)"
        )
    if data.get("version") != CACHE_VERSION or data.get("key") != key:
        return None
    try:
        return {str(k): (float(v[0]), float(v[1])) for k, v in data["ranges"].items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise MoptError(f"calibration cache {path} has malformed ranges; delete it to recalibrate") from exc


def write_calibration_cache(
    path: str | Path, key: dict, ranges: dict[str, tuple[float, float]], description: dict
) -> Path:
    """Store calibration ranges atomically with the key they are valid for."""
    return write_json(
        path,
        {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "key": key,
            "calibration": description,
            "mopt_version": __version__,
            "ranges": {k: [lo, hi] for k, (lo, hi) in sorted(ranges.items())},
        },
    )


# --- Q/DQ placement ------------------------------------------------------------------------------------------


def int8_candidates(model: onnx.ModelProto) -> list[str]:
    """Nodes the INT8 quantizer quantizes (weighted ops), in graph order: what a recipe can keep in FP32."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OP_TYPES]


def qdq_model_from_ranges(
    onnx_path: str | Path,
    ranges: dict[str, tuple[float, float]],
    nodes_to_exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """Place symmetric INT8 Q/DQ nodes with ONNX Runtime's quantizer, using precomputed calibration ranges.

    Args:
        onnx_path: the FP32 model the ranges were measured on.
        ranges: tensor -> ``(lowest, highest)`` from :func:`calibration_ranges_from_onnx` or the cache.
        nodes_to_exclude: node names to leave unquantized (FP32).
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version

    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()},
    )
    with tempfile.TemporaryDirectory(prefix="mopt-qdq-") as tmp, quiet_libraries():
        model_path = Path(tmp) / "model.onnx"
        onnx.save(load_onnx(onnx_path), str(model_path))
        model = update_opset_version(load_model_with_shape_infer(model_path), QuantType.QInt8)
        quantizer = QDQQuantizer(
            model,
            True,  # per-channel weights
            False,  # reduce_range: a 7-bit workaround for old CPUs, not wanted for GPUs
            QuantType.QInt8,
            QuantType.QInt8,
            tensors,
            [],  # nodes_to_quantize: all of the op types below
            list(nodes_to_exclude),
            list(WEIGHTED_OP_TYPES),
            dict(QDQ_OPTIONS),
        )
        quantizer.quantize_model()
        quantized = quantizer.model.model
    # The quantizer records its own shape-inference marker; mopt's metadata is set by the caller.
    return quantized


def count_qdq(model: onnx.ModelProto) -> tuple[int, int]:
    """``(QuantizeLinear, DequantizeLinear)`` node counts."""
    ops = Counter(n.op_type for n in model.graph.node)
    return ops["QuantizeLinear"], ops["DequantizeLinear"]


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Weighted nodes that read at least one dequantized input (i.e. run in INT8 on TensorRT)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name for n in model.graph.node if n.op_type in WEIGHTED_OP_TYPES and any(i in dq_outputs for i in n.input)
    ]


# --- the pipeline step ---------------------------------------------------------------------------------------


@dataclass
class Int8Result:
    """What :func:`int8_quantization_from_onnx` wrote and how it measured.

    Attributes:
        path: the Q/DQ ONNX.
        method: calibration method.
        calibration: where the calibration images came from.
        cache_path: the calibration cache.
        cache_status: ``"reused"`` (ranges read from the cache), ``"written"`` (new cache) or ``"replaced"``
            (the cache held ranges for another model, method or image set).
        quantized: weighted nodes running in INT8.
        kept_fp32: weighted nodes left in FP32 (by the recipe).
        qdq_nodes: ``(QuantizeLinear, DequantizeLinear)`` counts.
        checks: the ONNX Runtime CPU measurement against the FP32 model.
        inputs: what the check ran on.
    """

    path: Path
    method: str
    calibration: dict
    cache_path: Path
    cache_status: str
    quantized: list[str]
    kept_fp32: list[str]
    qdq_nodes: tuple[int, int]
    checks: list[AccuracyCheck] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)

    @property
    def worst(self) -> dict[str, float]:
        return worst_metrics(self.checks)


def calibration_ranges_cached(
    onnx_path: str | Path,
    calibration: CalibrationSet,
    method: str,
    cache_path: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, tuple[float, float]], str]:
    """Calibration ranges from the cache when its key matches, else calibrate and (re)write the cache.

    Returns:
        ``(ranges, status)`` with status ``"reused"``, ``"written"`` or ``"replaced"``.
    """
    _ort_method(method)  # validate before touching any file
    key = _cache_key(file_sha256(onnx_path), method, calibration.fingerprint)
    existed = Path(cache_path).exists()
    cached = read_calibration_cache(cache_path, key)
    if cached is not None:
        return cached, "reused"
    ranges = calibration_ranges_from_onnx(onnx_path, calibration.inputs, method, progress)
    write_calibration_cache(cache_path, key, ranges, calibration.description)
    return ranges, "replaced" if existed else "written"


def int8_quantization_from_onnx(
    onnx_path: str | Path,
    output: str | Path | None = None,
    calib_dir: str | Path | None = None,
    synthetic: int | None = None,
    method: str = "entropy",
    calib_cache: str | Path | None = None,
    recipe: str | Path | None = None,
    calib_size: tuple[int, int] | None = None,
    calib_limit: int = DEFAULT_CALIBRATION_LIMIT,
    images: str | Path | None = None,
    size: tuple[int, int] | None = None,
    count: int = DEFAULT_VERIFY_COUNT,
    mad: float = INT8_MAD,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> Int8Result:
    """Quantize an FP32 ONNX to INT8 Q/DQ, calibrated on images, and prove its mattes stay within the budget.

    Args:
        onnx_path: the FP32 model (exported or simplified).
        output: destination; ``<name>.int8.onnx`` beside the input when None.
        calib_dir: folder of calibration images (read and preprocessed as at inference).
        synthetic: number of built-in synthetic composites to calibrate on instead of a folder.
        method: ``entropy``, ``minmax`` or ``percentile``.
        calib_cache: calibration cache; ``<name>.int8.calib.json`` beside the input when None. Reused when
            the model, method and images are the same, rewritten otherwise.
        recipe: a ``mopt debug precision --int8`` recipe: its nodes stay in FP32.
        calib_size: calibration ``(height, width)``; the model's fixed size or 256 x 256 when None.
        calib_limit: at most this many images of ``calib_dir``.
        images: folder to verify the result on; ``calib_dir`` when None (the user's own images), synthetic
            composites (other than the calibration ones) when that is None too.
        size: verification ``(height, width)``: the deployment size; the model's fixed size or 512 x 512 when None.
        count: verification images.
        mad: largest accepted mean absolute difference from the FP32 model.
        threads: ONNX Runtime CPU threads for the verification.
        progress: called with ``(images calibrated, total)``.
        force: replace an existing ``output`` made with other settings (source, calibration, FP32 nodes).

    Raises:
        MoptError: bad model, bad or missing calibration input, a recipe that does not fit, a dynamic dim that
            became fixed, or mattes over the budget. No model is written then; the calibration cache is kept
            when only the budget was missed, so a retry with a recipe does not calibrate again.
    """
    from optimize.recipe import load_recipe, recipe_exclusions

    onnx_path = Path(onnx_path)
    if (calib_dir is None) == (synthetic is None):
        raise MoptError("give calibration data: either --calib DIR (a folder of images) or --synthetic N, not both")
    _ort_method(method)
    source = load_onnx(onnx_path)
    require_fp32_source(source, onnx_path)
    output = Path(output) if output else derived_path(onnx_path, "int8")
    if output.suffix != ".onnx":
        raise MoptError(f"output {output} must end in .onnx")
    if output.resolve() == onnx_path.resolve():
        raise MoptError(f"output {output} is the input file; choose another -o")
    cache_path = Path(calib_cache) if calib_cache else derived_path(onnx_path, "int8.calib", ".json")
    if cache_path.suffix != ".json":
        raise MoptError(f"calibration cache {cache_path} must end in .json")
    candidates = int8_candidates(source)
    if not candidates:
        raise MoptError(f"{onnx_path} has no {', '.join(WEIGHTED_OP_TYPES)} node to quantize")
    exclude: list[str] = []
    if recipe is not None:
        loaded = load_recipe(recipe, precision="int8")
        exclude = recipe_exclusions(
            loaded, [n.name for n in source.graph.node], {n.name: n.op_type for n in source.graph.node}
        )

    if calib_dir is not None:
        calibration = calibration_set_from_folder(calib_dir, onnx_path, calib_size, calib_limit)
    else:
        calibration = calibration_set_from_synthetic(int(synthetic), onnx_path, calib_size)  # type: ignore[arg-type]
    # Verified on what the user gave: the calibration folder unless other --images are named.
    verify_on = images if images is not None else calib_dir
    inputs, description = verification_inputs(onnx_path, verify_on, size, count)
    ranges, status = calibration_ranges_cached(onnx_path, calibration, method, cache_path, progress)

    quantized_model = qdq_model_from_ranges(onnx_path, ranges, exclude)
    if io_dims(quantized_model) != io_dims(source):
        raise MoptError(
            f"quantization changed the model's I/O {io_dims(source)} -> {io_dims(quantized_model)}; not written"
        )
    running_int8 = quantized_nodes(quantized_model)
    if not running_int8:
        raise MoptError(f"quantization of {onnx_path} left no node in INT8 (the recipe keeps them all); not written")
    settings = {
        "mopt.source_onnx_sha256": file_sha256(onnx_path),
        "mopt.int8_calibration": json.dumps({"method": method, **calibration.description}),
        "mopt.int8_kept_fp32": json.dumps(exclude),
    }
    refuse_changed_overwrite(output, settings, force)
    reference = run_onnx(onnx_path, inputs, threads=threads, label="FP32 model")
    check = accuracy_check(
        reference, run_onnx(quantized_model, inputs, threads=threads, label="INT8 model"), "onnxruntime-cpu"
    )
    if not check.mad <= mad:
        raise MoptError(
            f"INT8 mattes differ from FP32 by MAD {check.mad:.2e} (budget {mad:.0e}, max abs {check.max_abs:.2e}) "
            f"on {description['count']} {description['images']} at {description['size']}; not written: try "
            "--method entropy or percentile, more calibration images, or find the nodes to keep in FP32 with "
            f"`mopt debug precision {onnx_path} --int8 -o recipe.json` and pass --recipe recipe.json"
        )
    meta = {p.key: p.value for p in source.metadata_props}
    set_metadata(
        quantized_model,
        {
            **meta,
            "mopt.precision": "int8",
            "mopt.version": __version__,
            **settings,
            "mopt.verification": json.dumps(verification_record(description, [check])),
        },
    )
    with atomic_output(output) as tmp:
        onnx.save(quantized_model, str(tmp))
    return Int8Result(
        path=output,
        method=method,
        calibration=calibration.description,
        cache_path=cache_path,
        cache_status=status,
        quantized=running_int8,
        kept_fp32=[n for n in candidates if n in set(exclude)],
        qdq_nodes=count_qdq(quantized_model),
        checks=[check],
        inputs=description,
    )


def int8_onnx_from_onnx(
    onnx_path: str | Path,
    output: str | Path | None = None,
    calib_dir: str | Path | None = None,
    synthetic: int | None = None,
    method: str = "entropy",
    calib_cache: str | Path | None = None,
    recipe: str | Path | None = None,
    **kwargs: Any,
) -> Path:
    """Quantize to a verified INT8 Q/DQ ONNX and return its path (see :func:`int8_quantization_from_onnx`)."""
    return int8_quantization_from_onnx(
        onnx_path, output, calib_dir, synthetic, method, calib_cache, recipe, **kwargs
    ).path
