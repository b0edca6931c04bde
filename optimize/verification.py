"""Measuring a reduced model against its FP32 source: the inputs to measure on and the accuracy of one run.

Shared by FP16 conversion, INT8 quantization and the precision debugger, so that all three judge a model on
the same inputs (the user's images at the deployment size, else generated composites) with the same metrics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimize.defaults import DEFAULT_VERIFY_COUNT as DEFAULT_VERIFY_COUNT
from optimize.errors import MoptError
from optimize.onnx_model import card_of_onnx

DEFAULT_VERIFY_SIZE = (512, 512)  # the deployment size of mopt's models unless the card fixes one


def verification_inputs(
    onnx_path: str | Path,
    images: str | Path | None = None,
    size: tuple[int, int] | None = None,
    count: int = DEFAULT_VERIFY_COUNT,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Preprocessed inputs to measure a reduced model on, with a description for reports.

    Args:
        onnx_path: the FP32 model; its card's preprocessing and size rule are used.
        images: folder of real images; the built-in synthetic composites when None.
        size: ``(height, width)``; the model's fixed size, else 512 x 512 (fitted to its size rule), when None.
        count: number of images.
        seed: synthetic composite seed.

    Raises:
        MoptError: the folder is missing, empty or unreadable, or ``size`` does not fit the model's size rule.
    """
    from optimize.images import inputs_from_folder, synthetic_inputs

    card = card_of_onnx(onnx_path)
    if size is not None:
        card.size.check(*size, what=f"size for {onnx_path}")
    height, width = size or card.size.nearest(*DEFAULT_VERIFY_SIZE)
    if count <= 0:
        raise MoptError(f"image count must be positive, got {count}")
    if images is not None:
        inputs = inputs_from_folder(images, card, height, width, limit=count)
        source = str(images)
    else:
        inputs = synthetic_inputs(count, height, width, card, seed=seed)
        source = "synthetic composites"
    return inputs, {"images": source, "count": int(inputs.shape[0]), "size": f"{height}x{width}"}


@dataclass
class AccuracyCheck:
    """How far a reduced model's mattes are from the FP32 model's, on one backend.

    Attributes:
        label: what ran, e.g. ``"onnxruntime-cpu"`` or ``"fp16-emulation"``.
        max_abs: largest |alpha difference| of any pixel.
        mad: mean absolute difference (averaged per image).
        mse: mean squared difference.
        nonfinite: NaN/Inf values in the reduced model's output (metrics are then infinite).
    """

    label: str
    max_abs: float
    mad: float
    mse: float
    nonfinite: int = 0

    def metrics(self) -> dict[str, float]:
        return {"mad": self.mad, "max_abs": self.max_abs, "mse": self.mse}


def accuracy_check(reference: np.ndarray, candidate: np.ndarray, label: str) -> AccuracyCheck:
    """Matte metrics of ``candidate`` against ``reference`` (both N x 1 x H x W alpha)."""
    from optimize.metrics import matte_metrics

    if candidate.shape != reference.shape:
        raise MoptError(f"{label} returns alpha of shape {candidate.shape}, the FP32 model {reference.shape}")
    nonfinite = int((~np.isfinite(candidate)).sum())
    if nonfinite:
        return AccuracyCheck(label, math.inf, math.inf, math.inf, nonfinite)
    # Both outputs come out of a sigmoid, but FP16/INT8 rounding can step a hair outside [0, 1].
    m = matte_metrics(np.clip(candidate, 0.0, 1.0), np.clip(reference, 0.0, 1.0))
    return AccuracyCheck(label, m.max_abs, m.mad, m.mse, 0)


def worst_metrics(checks: Sequence[AccuracyCheck]) -> dict[str, float]:
    """Per metric, the worst value over several checks of the same model."""
    return {k: max(c.metrics()[k] for c in checks) for k in ("mad", "max_abs", "mse")}




def verification_record(description: dict, checks: Sequence[AccuracyCheck]) -> dict:
    """What a verdict was reached on (images, count, size) and what it measured, for the model's metadata."""
    return {**description, "checks": {c.label: c.metrics() for c in checks}}


def refuse_changed_overwrite(output: Path, settings: dict[str, str], force: bool) -> None:
    """Refuse to replace an existing model that was made with other settings, unless ``force``.

    Args:
        output: the file about to be written.
        settings: metadata key -> the value this run records (e.g. the nodes kept in FP32, the source's hash).
        force: replace it anyway.

    Raises:
        MoptError: ``output`` exists and one of ``settings`` differs; the message names the first difference.
    """
    from optimize.onnx_model import read_metadata

    if force or not output.is_file():
        return
    try:
        existing = read_metadata(output)
    except MoptError:
        existing = {}
    for key, value in settings.items():
        before = existing.get(key)
        if before != value:
            raise MoptError(
                f"{output} exists and was made with other settings ({key}: {_short(before)}, this run: "
                f"{_short(value)}); pass --force to replace it or choose another -o"
            )


def _short(value: str | None) -> str:
    if value is None:
        return "not recorded"
    try:
        data = json.loads(value)
    except ValueError:
        data = value
    if isinstance(data, list):
        return f"{len(data)} nodes kept in FP32" if len(data) != 1 else "1 node kept in FP32"
    text = str(value)
    return text[:12] if len(text) == 64 else text[:60]  # a sha256: its prefix says enough
