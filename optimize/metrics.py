"""Matte metrics: how far an optimized model's alpha is from the reference, in the units matting papers use.

Alpha mattes are float arrays in ``[0, 1]``: one image ``H x W``, or a batch ``N x H x W`` / ``N x 1 x H x W``
(what every backend returns). Batch metrics are the mean of the per-image values, as the matting benchmarks
(Rhemann et al. 2009, alphamatting.com, Adobe Composition-1k) average over test images.

With a trimap, only its unknown region counts (``trimap == 128`` for integer trimaps, ``~0.5`` for float ones),
exactly like the benchmark evaluation code: Grad and Conn are still computed on the whole image (their filters
and components need the context) and only their per-pixel error maps are masked.

Definitions, with ``p`` the prediction, ``g`` the reference ("ground truth") and ``U`` the evaluated pixels:

* ``MAD  = mean_U |p - g|`` (papers usually print it x1e3: :attr:`MatteMetrics.mad_e3`)
* ``MSE  = mean_U (p - g)^2``
* ``SAD  = sum_U |p - g| / 1000``
* ``Grad = sum_U (|grad G_1.4 * p| - |grad G_1.4 * g|)^2 / 1000``  (see :func:`gradient_error`)
* ``Conn = sum_U |phi(p) - phi(g)| / 1000``                       (see :func:`connectivity_error`)
* ``IoU``  of the binary masks ``p >= t`` and ``g >= t`` (default ``t = 0.5``)

Everything is vectorised over the batch and accumulated in float64, so float16 outputs lose nothing here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from optimize.errors import MoptError

# One 8-bit alpha step (~3.9e-3). Mattes are stored and composited as 8-bit images, so an optimized model whose
# alpha stays within one step of the reference produces a visually identical (usually bit-identical) cut-out.
ALPHA_STEP: float = 1.0 / 255.0

TRIMAP_UNKNOWN = 128
GRAD_SIGMA = 1.4
CONN_STEP = 0.1
CONN_MIN_DISTANCE = 0.15

# Values this far outside [0, 1] are rounding noise (a sigmoid in fp16, a resize); anything beyond is a bug.
_RANGE_SLACK = 1e-6
# 4-connectivity inside each image and none across the batch axis, so one label() call serves the whole batch.
_FOUR_CONNECTED_2D = np.zeros((3, 3, 3), dtype=bool)
_FOUR_CONNECTED_2D[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


@dataclass(frozen=True)
class MatteMetrics:
    """Matte error metrics of one image, or their mean over a batch.

    Attributes:
        mad: mean absolute difference over the evaluated pixels (fraction of full alpha, not x1e3).
        mse: mean squared difference.
        sad: sum of absolute differences / 1000.
        grad: gradient error / 1000 (Gaussian derivative filters, sigma 1.4).
        conn: connectivity error / 1000 (Rhemann et al. 2009).
        max_abs: largest absolute difference of any evaluated pixel (the max over the batch).
        mean_abs: mean absolute difference pooled over all evaluated pixels of the batch; equals ``mad`` for
            one image or when every image has the same number of evaluated pixels.
        iou: intersection over union of the thresholded mattes (1.0 when both are empty).
    """

    mad: float
    mse: float
    sad: float
    grad: float
    conn: float
    max_abs: float
    mean_abs: float
    iou: float

    @property
    def mad_e3(self) -> float:
        """MAD x 1e3, the unit matting papers print."""
        return self.mad * 1e3

    @property
    def within_alpha_step(self) -> bool:
        """Whether no evaluated pixel differs by more than one 8-bit alpha step (visually identical)."""
        return self.max_abs <= ALPHA_STEP

    def to_dict(self) -> dict[str, float]:
        """Plain floats for JSON, plus ``mad_x1e3``."""
        data = {key: float(value) for key, value in asdict(self).items()}
        data["mad_x1e3"] = self.mad_e3
        return data


def _alpha_batch(array: object, name: str) -> np.ndarray:
    """Validate one alpha input and return it as float64 ``N x H x W``, clipped to [0, 1]."""
    alpha = np.asarray(array)
    if alpha.dtype == np.bool_ or not np.issubdtype(alpha.dtype, np.number):
        raise MoptError(f"{name} has dtype {alpha.dtype}; alpha mattes must be float arrays in [0, 1]")
    shape = alpha.shape
    if alpha.ndim == 4 and shape[1] == 1:
        alpha = alpha[:, 0]
    elif alpha.ndim == 2:
        alpha = alpha[None]
    elif alpha.ndim != 3:
        raise MoptError(f"{name} has shape {shape}; expected H x W, N x H x W or N x 1 x H x W")
    if alpha.size == 0:
        raise MoptError(f"{name} has shape {shape} with no pixels")
    alpha = alpha.astype(np.float64)
    finite = np.isfinite(alpha)
    if not finite.all():
        bad = alpha[~finite]
        n_nan = int(np.isnan(bad).sum())
        raise MoptError(
            f"{name} has {bad.size} non-finite values ({n_nan} NaN, {bad.size - n_nan} Inf) out of {alpha.size}: "
            "the model output is broken (reduced precision overflows show up like this); metrics refuse to "
            "average them away - check the precision/engine that produced it"
        )
    low, high = float(alpha.min()), float(alpha.max())
    if low < -_RANGE_SLACK or high > 1.0 + _RANGE_SLACK:
        raise MoptError(
            f"{name} has values in [{low:.6g}, {high:.6g}], outside [0, 1]: pass alpha mattes "
            "(after the sigmoid, divided by 255 if they are 8-bit images)"
        )
    return np.clip(alpha, 0.0, 1.0)


def unknown_mask(trimap: object, shape: tuple[int, int, int]) -> np.ndarray:
    """The pixels a trimap asks to evaluate, as a boolean ``N x H x W`` array.

    Args:
        trimap: ``H x W`` (shared by every image) or one per image (``N x H x W`` / ``N x 1 x H x W``).
            Integer trimaps mark unknown pixels with 128 (0 = background, 255 = foreground); float trimaps
            with 0.5 (128/255 is accepted too, so a trimap read as 8-bit and divided by 255 works).
        shape: the ``N x H x W`` shape of the alpha batch.

    Raises:
        MoptError: wrong shape, non-finite values, or an image without unknown pixels (its MAD would be 0/0).
    """
    tri = np.asarray(trimap)
    n, h, w = shape
    if tri.ndim == 4 and tri.shape[1] == 1:
        tri = tri[:, 0]
    if tri.ndim == 2:
        tri = tri[None]
    if tri.ndim != 3 or tri.shape[1:] != (h, w) or tri.shape[0] not in (1, n):
        raise MoptError(
            f"trimap has shape {np.asarray(trimap).shape}; expected {h} x {w} or one per image ({n} x {h} x {w})"
        )
    if np.issubdtype(tri.dtype, np.integer):
        mask = tri == TRIMAP_UNKNOWN
    elif np.issubdtype(tri.dtype, np.floating):
        if not np.isfinite(tri).all():
            raise MoptError("trimap has NaN/Inf values; expected 0, 0.5 and 1 (or 0, 128, 255 as integers)")
        mask = np.abs(tri - 0.5) < ALPHA_STEP
    else:
        raise MoptError(f"trimap has dtype {tri.dtype}; expected integers (0/128/255) or floats (0/0.5/1)")
    mask = np.broadcast_to(mask, shape)
    empty = np.flatnonzero(~mask.reshape(n, -1).any(axis=1))
    if empty.size:
        raise MoptError(
            f"trimap has no unknown pixels (128 or 0.5) for image(s) {empty.tolist()}: nothing to evaluate; "
            "pass no trimap to evaluate whole images"
        )
    return mask


def _prepare(pred: object, true: object, trimap: object | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred_shape, true_shape = np.shape(pred), np.shape(true)
    if pred_shape != true_shape:
        raise MoptError(f"pred shape {pred_shape} != true shape {true_shape}; compare mattes of the same images")
    p = _alpha_batch(pred, "pred")
    g = _alpha_batch(true, "true")
    mask = np.ones(p.shape, dtype=bool) if trimap is None else unknown_mask(trimap, p.shape)
    return p, g, mask


def _per_image_sum(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, values, 0.0).reshape(values.shape[0], -1).sum(axis=1)


def _gradient_magnitude(alpha: np.ndarray) -> np.ndarray:
    # Sigma 0 on the batch axis makes scipy skip it, so the 2-D filter runs on every image in one call.
    # 'nearest' repeats the border pixel like the MATLAB code's imfilter(..., 'replicate').
    sigma = (0.0, GRAD_SIGMA, GRAD_SIGMA)
    gy = ndimage.gaussian_filter(alpha, sigma=sigma, order=(0, 1, 0), mode="nearest")
    gx = ndimage.gaussian_filter(alpha, sigma=sigma, order=(0, 0, 1), mode="nearest")
    return np.hypot(gx, gy)


def _largest_common_component(common: np.ndarray) -> np.ndarray:
    """Per image, the largest 4-connected component of ``common`` (N x H x W bool); empty if there is none."""
    # Label the transposed images so labels follow MATLAB's column-major scan: on a size tie the reference
    # code's max() keeps the first component in that order, and the lowest label is exactly that one.
    common_t = np.ascontiguousarray(common.transpose(0, 2, 1))
    labels, count = ndimage.label(common_t, structure=_FOUR_CONNECTED_2D)
    largest = np.zeros(common.shape[0], dtype=labels.dtype)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        image_of = np.zeros(count + 1, dtype=np.intp)
        image_index = np.broadcast_to(np.arange(common.shape[0])[:, None, None], labels.shape)
        image_of[labels[common_t]] = image_index[common_t]
        ids = np.arange(1, count + 1)
        # Sort by image, then size, then descending label: the last entry per image is its largest,
        # lowest-labelled component.
        order = ids[np.lexsort((-ids, sizes[1:], image_of[1:]))]
        last_of_image = np.r_[image_of[order][1:] != image_of[order][:-1], True]
        largest[image_of[order][last_of_image]] = order[last_of_image]
    omega_t = (labels == largest[:, None, None]) & (labels > 0)
    return omega_t.transpose(0, 2, 1)


def _connectivity_phi_pair(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # i / 10 rather than a running sum of 0.1, so a pixel at exactly 0.3 meets the 0.3 threshold.
    steps = round(1.0 / CONN_STEP)
    thresholds = np.arange(steps + 1) / steps
    level = np.full(p.shape, -1.0)
    for i in range(1, steps + 1):
        omega = _largest_common_component((p >= thresholds[i]) & (g >= thresholds[i]))
        dropped = (level == -1.0) & ~omega
        level[dropped] = thresholds[i - 1]
    level[level == -1.0] = 1.0
    d_pred, d_true = p - level, g - level
    phi_pred = 1.0 - d_pred * (d_pred >= CONN_MIN_DISTANCE)
    phi_true = 1.0 - d_true * (d_true >= CONN_MIN_DISTANCE)
    return phi_pred, phi_true


def _mad(p: np.ndarray, g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _per_image_sum(np.abs(p - g), mask) / mask.reshape(p.shape[0], -1).sum(axis=1)


def _mse(p: np.ndarray, g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _per_image_sum((p - g) ** 2, mask) / mask.reshape(p.shape[0], -1).sum(axis=1)


def _sad(p: np.ndarray, g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _per_image_sum(np.abs(p - g), mask) / 1000.0


def _grad(p: np.ndarray, g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return _per_image_sum((_gradient_magnitude(p) - _gradient_magnitude(g)) ** 2, mask) / 1000.0


def _conn(p: np.ndarray, g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    phi_pred, phi_true = _connectivity_phi_pair(p, g)
    return _per_image_sum(np.abs(phi_pred - phi_true), mask) / 1000.0


def _iou(p: np.ndarray, g: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    pb, gb = p >= threshold, g >= threshold
    inter = _per_image_sum(pb & gb, mask)
    union = _per_image_sum(pb | gb, mask)
    # Two empty masks agree perfectly; 0/0 would otherwise turn an all-background image into NaN.
    return np.divide(inter, union, out=np.ones_like(union), where=union > 0)


def mad(pred: object, true: object, trimap: object | None = None) -> np.ndarray:
    """Per-image mean absolute difference (a fraction of full alpha; multiply by 1e3 for the papers' unit).

    Args:
        pred: predicted alpha, ``H x W``, ``N x H x W`` or ``N x 1 x H x W`` in [0, 1].
        true: reference alpha, same shape.
        trimap: optional trimap; only its unknown pixels are evaluated (see :func:`unknown_mask`).

    Returns:
        float64 array with one value per image.
    """
    return _mad(*_prepare(pred, true, trimap))


def mse(pred: object, true: object, trimap: object | None = None) -> np.ndarray:
    """Per-image mean squared difference; arguments as in :func:`mad`."""
    return _mse(*_prepare(pred, true, trimap))


def sad(pred: object, true: object, trimap: object | None = None) -> np.ndarray:
    """Per-image sum of absolute differences / 1000; arguments as in :func:`mad`."""
    return _sad(*_prepare(pred, true, trimap))


def gradient_error(pred: object, true: object, trimap: object | None = None) -> np.ndarray:
    """Per-image gradient error: ``sum_U (|grad G_s * p| - |grad G_s * g|)^2 / 1000`` with ``s = 1.4``.

    ``grad G_s *`` is the derivative-of-Gaussian filter (``scipy.ndimage.gaussian_filter`` with ``order=1``
    along one axis and smoothing along the other, truncated at 4 sigma, borders replicated); the magnitude is
    ``hypot(d/dx, d/dy)``. This is the Python form the matting repositories use for the benchmark's
    ``compute_gradient_loss.m``; the MATLAB original additionally rescales each matte to its own min..max
    (``mat2gray``) and uses its own kernel truncation, so absolute values differ slightly from MATLAB's, while
    zero still means identical edges. Filtering uses the whole image; a trimap only masks the error map.

    Arguments as in :func:`mad`.
    """
    return _grad(*_prepare(pred, true, trimap))


def connectivity_error(pred: object, true: object, trimap: object | None = None) -> np.ndarray:
    """Per-image connectivity error (Rhemann et al. 2009), following ``compute_connectivity_error.m`` exactly.

    For thresholds ``t_i = i / 10`` (``i = 1..10``), ``omega_i`` is the largest 4-connected component of
    ``(p >= t_i) & (g >= t_i)`` (on a size tie, the first in column-major order, as MATLAB's ``max`` over
    ``bwconncomp`` picks; an empty intersection gives an empty ``omega_i``). Each pixel's level ``l`` is
    ``t_(i-1)`` for the first ``i`` at which it is not in ``omega_i`` - i.e. the last threshold up to which it
    stayed continuously connected; pixels never dropped get ``l = 1``. Then, for ``a`` in ``{p, g}``:
    ``d = a - l`` and ``phi(a) = 1 - d * [d >= 0.15]``, and ``Conn = sum_U |phi(p) - phi(g)| / 1000``.
    Components use the whole image; a trimap only masks the final sum.

    Arguments as in :func:`mad`.
    """
    return _conn(*_prepare(pred, true, trimap))


def iou(pred: object, true: object, trimap: object | None = None, threshold: float = 0.5) -> np.ndarray:
    """Per-image IoU of ``pred >= threshold`` and ``true >= threshold``; 1.0 where both masks are empty.

    Arguments as in :func:`mad`; ``threshold`` splits foreground from background.
    """
    if not 0.0 < threshold <= 1.0:
        raise MoptError(f"IoU threshold {threshold} must be in (0, 1]")
    return _iou(*_prepare(pred, true, trimap), threshold)


def _columns(pred: object, true: object, trimap: object | None, iou_threshold: float) -> dict[str, np.ndarray]:
    """Every metric per image, plus ``count``: how many pixels each image evaluated."""
    if not 0.0 < iou_threshold <= 1.0:
        raise MoptError(f"IoU threshold {iou_threshold} must be in (0, 1]")
    p, g, mask = _prepare(pred, true, trimap)
    n = p.shape[0]
    mad_values = _mad(p, g, mask)
    return {
        "mad": mad_values,
        "mse": _mse(p, g, mask),
        "sad": _sad(p, g, mask),
        "grad": _grad(p, g, mask),
        "conn": _conn(p, g, mask),
        "max_abs": np.where(mask, np.abs(p - g), 0.0).reshape(n, -1).max(axis=1),
        "mean_abs": mad_values,
        "iou": _iou(p, g, mask, iou_threshold),
        "count": mask.reshape(n, -1).sum(axis=1).astype(np.float64),
    }


def per_image_metrics(
    pred: object, true: object, trimap: object | None = None, *, iou_threshold: float = 0.5
) -> list[MatteMetrics]:
    """All metrics for each image of a batch (one entry for an ``H x W`` input).

    Args:
        pred: predicted alpha, ``H x W``, ``N x H x W`` or ``N x 1 x H x W`` in [0, 1].
        true: reference alpha, same shape.
        trimap: optional trimap; only its unknown pixels are evaluated (see :func:`unknown_mask`).
        iou_threshold: foreground threshold for :attr:`MatteMetrics.iou`.

    Raises:
        MoptError: shapes differ, NaN/Inf present (the message counts them), values outside [0, 1],
            or a bad trimap.
    """
    columns = _columns(pred, true, trimap, iou_threshold)
    names = [name for name in columns if name != "count"]
    return [MatteMetrics(**{name: float(columns[name][i]) for name in names}) for i in range(len(columns["count"]))]


def matte_metrics(
    pred: object, true: object, trimap: object | None = None, *, iou_threshold: float = 0.5
) -> MatteMetrics:
    """Metrics of a batch: each per-image value averaged over the images, as the matting benchmarks report.

    ``max_abs`` is the largest difference in the whole batch and ``mean_abs`` the mean over all evaluated
    pixels (the two tensor-level numbers Polygraphy prints), so a single bad image cannot hide in an average.
    Arguments and errors as in :func:`per_image_metrics`.
    """
    columns = _columns(pred, true, trimap, iou_threshold)
    count = columns["count"]
    return MatteMetrics(
        mad=float(columns["mad"].mean()),
        mse=float(columns["mse"].mean()),
        sad=float(columns["sad"].mean()),
        grad=float(columns["grad"].mean()),
        conn=float(columns["conn"].mean()),
        max_abs=float(columns["max_abs"].max()),
        # Pixel-pooled: weight each image's mean by how many pixels it evaluated.
        mean_abs=float(np.dot(columns["mad"], count) / count.sum()),
        iou=float(columns["iou"].mean()),
    )
