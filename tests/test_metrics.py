"""Matte metrics against hand-computed values on tiny mattes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from optimize.errors import MoptError
from optimize.metrics import (
    ALPHA_STEP,
    MatteMetrics,
    connectivity_error,
    gradient_error,
    iou,
    mad,
    matte_metrics,
    mse,
    per_image_metrics,
    sad,
    unknown_mask,
)


def _edge(width: int = 32, height: int = 16, at: int = 16) -> np.ndarray:
    """A vertical step edge: 0 left of column ``at``, 1 from it on."""
    alpha = np.zeros((height, width))
    alpha[:, at:] = 1.0
    return alpha


def test_alpha_step_is_one_8bit_level() -> None:
    assert ALPHA_STEP == pytest.approx(1 / 255)
    assert 3.9e-3 < ALPHA_STEP < 3.93e-3


def test_identical_mattes_score_zero() -> None:
    rng = np.random.default_rng(0)
    alpha = ndimage.gaussian_filter(rng.random((24, 24)), 2.0)
    m = matte_metrics(alpha, alpha.copy())
    assert (m.mad, m.mse, m.sad, m.grad, m.conn, m.max_abs, m.mean_abs) == (0, 0, 0, 0, 0, 0, 0)
    assert m.iou == 1.0
    assert m.within_alpha_step


def test_constant_offset_gives_known_mad_mse_sad() -> None:
    true = np.full((4, 4), 0.5)
    pred = np.full((4, 4), 0.6)
    m = matte_metrics(pred, true)
    assert m.mad == pytest.approx(0.1)
    assert m.mad_e3 == pytest.approx(100.0)
    assert m.mse == pytest.approx(0.01)
    assert m.sad == pytest.approx(16 * 0.1 / 1000)
    assert m.max_abs == pytest.approx(0.1)
    assert m.mean_abs == pytest.approx(0.1)
    assert m.grad == 0.0  # flat mattes have no gradient at all
    assert not m.within_alpha_step
    # Symmetric in the sign of the error.
    assert matte_metrics(true, pred).mad == pytest.approx(0.1)


def test_single_pixel_error() -> None:
    true = np.zeros((10, 10))
    pred = true.copy()
    pred[3, 4] = 0.5
    assert mad(pred, true)[0] == pytest.approx(0.5 / 100)
    assert mse(pred, true)[0] == pytest.approx(0.25 / 100)
    assert sad(pred, true)[0] == pytest.approx(0.5 / 1000)


@pytest.mark.parametrize(
    "row",
    [_edge()[0], np.linspace(0.0, 1.0, 24)],
    ids=["step-edge", "ramp-touching-borders"],
)
def test_gradient_error_matches_a_hand_built_kernel(row: np.ndarray) -> None:
    # Rows are identical, so d/dy is 0 and, against an all-zero prediction,
    # Grad = rows * sum_x (d/dx of the Gaussian-smoothed row)^2 / 1000. The derivative-of-Gaussian kernel is
    # built here from its formula (sigma 1.4, truncated at 4 sigma), independently of scipy.ndimage.
    true = np.tile(row, (16, 1))
    pred = np.zeros_like(true)
    sigma = 1.4
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    dg = -x / sigma**2 * g
    # Borders repeat the edge pixel (MATLAB's 'replicate'); the ramp, which reaches both borders, tells this
    # apart from mirroring.
    response = np.convolve(np.pad(row, radius, mode="edge"), dg, mode="valid")
    expected = true.shape[0] * np.sum(response**2) / 1000
    assert gradient_error(pred, true)[0] == pytest.approx(expected, rel=1e-9)
    assert expected > 0.0
    assert gradient_error(true, pred)[0] == pytest.approx(expected, rel=1e-9)


def test_grad_and_conn_positive_for_a_shifted_edge() -> None:
    true = _edge(width=16, at=8)
    pred = _edge(width=16, at=6)  # two columns too far left
    assert gradient_error(pred, true)[0] > 0.0
    # The common component is columns 8.. at every threshold; columns 0..7 drop at t = 0.1 (l = 0).
    # Columns 6, 7: phi(pred) = 1 - (1 - 0) = 0, phi(true) = 1 - 0 = 1 -> 2 columns x 16 rows / 1000.
    assert connectivity_error(pred, true)[0] == pytest.approx(2 * 16 / 1000)


def test_connectivity_hand_case_with_a_broken_component() -> None:
    # true is one connected run; pred has a hole that splits it. At t = 0.1 the common set {0, 2} has two
    # components of one pixel; pixels 1 and 2 drop (l = 0), pixel 0 stays to t = 1 (l = 1).
    # phi(pred) = [1, 1, 0], phi(true) = [1, 0, 0] -> Conn = 1 / 1000.
    pred = np.array([[1.0, 0.0, 1.0]])
    true = np.array([[1.0, 1.0, 1.0]])
    assert connectivity_error(pred, true)[0] == pytest.approx(1e-3)


def test_connectivity_level_and_distance_threshold() -> None:
    # Both mattes are flat, so the common component is the whole image up to t = 0.5 and empty above it:
    # l = 0.5 everywhere. pred d = 0.3 >= 0.15 -> phi = 0.7; true d = 0 -> phi = 1.
    true = np.full((4, 4), 0.5)
    assert connectivity_error(np.full((4, 4), 0.8), true)[0] == pytest.approx(16 * 0.3 / 1000)
    # d = 0.1 < 0.15 is forgiven: phi = 1 for both.
    assert connectivity_error(np.full((4, 4), 0.6), true)[0] == 0.0


def test_connectivity_uses_four_connectivity() -> None:
    # Pixel A = (0, 0) touches the 2-pixel run only diagonally. 4-connected: A is its own smaller component,
    # drops at t = 0.1 (l = 0): phi(pred) = 1 - 0.9, phi(true) = 1 - 1 -> Conn = 0.1 / 1000.
    # 8-connected it would stay until t = 1.0 (l = 0.9): d(pred) = 0, d(true) = 0.1 < 0.15 -> Conn = 0.
    pred = np.array([[0.9, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    true = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert connectivity_error(pred, true)[0] == pytest.approx(0.1 / 1000)


def test_connectivity_breaks_size_ties_in_column_major_order_like_matlab() -> None:
    # X = (0, 2) and Y = (2, 0) are equal one-pixel components for t = 0.1..0.9. MATLAB's bwconncomp scans
    # columns first, so max() keeps Y: X drops at t = 0.1 (l = 0), phi(pred) = 1 - 0.9, phi(true) = 0
    # -> Conn = 0.1 / 1000. Keeping X instead (row-major order) would give 0.
    pred = np.array([[0.0, 0.0, 0.9], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    true = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert connectivity_error(pred, true)[0] == pytest.approx(0.1 / 1000)


def _reference_conn(pred: np.ndarray, true: np.ndarray) -> float:
    """Line-by-line port of compute_connectivity_error.m for one image (no trimap), for cross-checking."""
    thresholds = np.arange(0, 11) / 10
    l_map = -np.ones_like(pred)
    for ii in range(1, len(thresholds)):
        common = (pred >= thresholds[ii]) & (true >= thresholds[ii])
        labels, n = ndimage.label(common.T)  # column-major order, like bwconncomp
        labels = labels.T
        omega = np.zeros(pred.shape, dtype=bool)
        if n:
            sizes = [np.sum(labels == k) for k in range(1, n + 1)]
            omega = labels == int(np.argmax(sizes)) + 1
        flag = (l_map == -1) & ~omega
        l_map[flag] = thresholds[ii - 1]
    l_map[l_map == -1] = 1
    pred_d, true_d = pred - l_map, true - l_map
    pred_phi = 1 - pred_d * (pred_d >= 0.15)
    true_phi = 1 - true_d * (true_d >= 0.15)
    return float(np.sum(np.abs(pred_phi - true_phi)) / 1000)


def test_connectivity_matches_a_direct_port_of_the_reference_code_on_a_batch() -> None:
    rng = np.random.default_rng(1)
    true = np.clip(ndimage.gaussian_filter(rng.random((3, 20, 24)), (0, 2, 2)) * 3 - 1, 0, 1)
    pred = np.clip(true + rng.normal(0, 0.15, true.shape), 0, 1)
    got = connectivity_error(pred, true)
    expected = [_reference_conn(pred[i], true[i]) for i in range(3)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert min(expected) > 0.0


def test_iou_hand_case() -> None:
    pred = np.array([[0.9, 0.6, 0.1, 0.0]])
    true = np.array([[0.9, 0.2, 0.7, 0.0]])
    # foreground pred {0, 1}, true {0, 2}: intersection 1, union 3.
    assert iou(pred, true)[0] == pytest.approx(1 / 3)
    assert iou(pred, true, threshold=0.95)[0] == 1.0  # both empty: they agree
    assert matte_metrics(pred, true).iou == pytest.approx(1 / 3)


def test_trimap_restricts_evaluation_to_unknown_pixels() -> None:
    true = np.zeros((4, 4))
    pred = np.full((4, 4), 0.5)  # large error in the known regions...
    pred[1] = 0.2  # ...a small one in the unknown row
    trimap = np.zeros((4, 4), dtype=np.uint8)
    trimap[1] = 128
    trimap[3] = 255
    m = matte_metrics(pred, true, trimap)
    assert m.mad == pytest.approx(0.2)
    assert m.mse == pytest.approx(0.04)
    assert m.sad == pytest.approx(4 * 0.2 / 1000)
    assert m.max_abs == pytest.approx(0.2)
    # The same trimap as floats (0.5 or 128/255) selects the same pixels.
    for unknown in (0.5, 128 / 255):
        float_trimap = np.where(trimap == 128, unknown, trimap / 255.0)
        assert matte_metrics(pred, true, float_trimap).mad == pytest.approx(0.2)
    assert matte_metrics(pred, true).mad > 0.4  # without a trimap the known-region error counts


def test_trimap_masks_grad_and_conn_sums() -> None:
    true = _edge(width=16, at=8)
    pred = _edge(width=16, at=6)
    trimap = np.full(true.shape, 255, dtype=np.uint8)
    trimap[:, 12:] = 128  # far from the edge error: nothing wrong there
    assert connectivity_error(pred, true, trimap)[0] == 0.0
    trimap[:, 6:8] = 128  # now include the two wrong columns
    assert connectivity_error(pred, true, trimap)[0] == pytest.approx(2 * 16 / 1000)
    assert gradient_error(pred, true, trimap)[0] > 0.0


def test_trimap_without_unknown_pixels_is_rejected() -> None:
    with pytest.raises(MoptError, match="no unknown pixels"):
        matte_metrics(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4), dtype=np.uint8))


def test_unknown_mask_broadcasts_one_trimap_over_a_batch() -> None:
    trimap = np.array([[0, 128], [255, 128]], dtype=np.uint8)
    mask = unknown_mask(trimap, (3, 2, 2))
    assert mask.shape == (3, 2, 2)
    assert mask.sum() == 6
    with pytest.raises(MoptError, match="trimap has shape"):
        unknown_mask(np.zeros((3, 3), dtype=np.uint8), (1, 2, 2))


def test_batch_metrics_average_per_image_values() -> None:
    true = np.zeros((2, 1, 4, 4))
    pred = np.stack([np.full((1, 4, 4), 0.1), np.full((1, 4, 4), 0.3)])
    images = per_image_metrics(pred, true)
    assert [m.mad for m in images] == pytest.approx([0.1, 0.3])
    m = matte_metrics(pred, true)
    assert m.mad == pytest.approx(0.2)
    assert m.mse == pytest.approx((0.01 + 0.09) / 2)
    assert m.sad == pytest.approx((1.6 + 4.8) / 2 / 1000)
    assert m.max_abs == pytest.approx(0.3)  # the worst image, not an average
    # N x 1 x H x W and N x H x W are the same batch.
    assert matte_metrics(pred[:, 0], true[:, 0]) == m


def test_mean_abs_pools_pixels_when_trimaps_differ() -> None:
    true = np.zeros((2, 2, 2))
    pred = np.stack([np.full((2, 2), 0.4), np.full((2, 2), 0.1)])
    trimap = np.full((2, 2, 2), 128, dtype=np.uint8)
    trimap[0] = [[128, 0], [0, 0]]  # image 0 evaluates 1 pixel, image 1 evaluates 4
    m = matte_metrics(pred, true, trimap)
    assert m.mad == pytest.approx((0.4 + 0.1) / 2)
    assert m.mean_abs == pytest.approx((0.4 + 4 * 0.1) / 5)


def test_float16_inputs_accumulate_in_float64() -> None:
    pred = np.full((64, 64), 0.5, dtype=np.float16)
    true = np.full((64, 64), 0.25, dtype=np.float16)
    assert matte_metrics(pred, true).sad == pytest.approx(64 * 64 * 0.25 / 1000)


def test_non_finite_values_are_counted_and_rejected() -> None:
    pred = np.zeros((4, 4), dtype=np.float32)
    pred[0, 0] = np.nan
    pred[1, 1] = np.nan
    pred[2, 2] = np.inf
    with pytest.raises(MoptError, match=r"pred has 3 non-finite values \(2 NaN, 1 Inf\)"):
        matte_metrics(pred, np.zeros((4, 4)))
    with pytest.raises(MoptError, match="true has 3 non-finite"):
        matte_metrics(np.zeros((4, 4)), pred)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(MoptError, match="shape"):
        matte_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(MoptError, match="shape"):
        matte_metrics(np.zeros((1, 1, 4, 4)), np.zeros((4, 4)))
    with pytest.raises(MoptError, match="expected H x W"):
        matte_metrics(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))


def test_values_outside_unit_range_are_rejected_beyond_rounding_slack() -> None:
    with pytest.raises(MoptError, match=r"outside \[0, 1\]"):
        matte_metrics(np.full((2, 2), 1.01), np.ones((2, 2)))
    with pytest.raises(MoptError, match=r"outside \[0, 1\]"):
        matte_metrics(np.ones((2, 2)), np.full((2, 2), -0.5))
    # A sigmoid rounded in low precision may overshoot by an ulp: tolerated and clipped.
    m = matte_metrics(np.full((2, 2), 1 + 5e-7), np.ones((2, 2)))
    assert m.max_abs == 0.0


def test_to_dict_is_plain_floats_with_mad_x1e3() -> None:
    m = matte_metrics(np.full((4, 4), 0.6), np.full((4, 4), 0.5))
    d = m.to_dict()
    assert set(d) == {"mad", "mse", "sad", "grad", "conn", "max_abs", "mean_abs", "iou", "mad_x1e3"}
    assert all(type(v) is float for v in d.values())
    assert d["mad_x1e3"] == pytest.approx(100.0)
    assert MatteMetrics(**{k: v for k, v in d.items() if k != "mad_x1e3"}) == m
    with pytest.raises(AttributeError):
        m.mad = 0.0  # type: ignore[misc]
    assert not math.isnan(d["iou"])


def test_every_single_metric_function_evaluates_only_the_trimaps_unknown_region() -> None:
    """Each function, given a trimap, returns what matte_metrics reports for it, and differs from the whole
    image: the error sits outside the unknown band as well as inside it."""
    rng = np.random.default_rng(3)
    true = _edge()
    pred = np.clip(true + rng.uniform(-0.2, 0.2, true.shape), 0, 1)
    pred[:4, :4] = 1.0  # a blob far from the edge: the whole-image IoU sees it, the band does not
    trimap = np.zeros(true.shape, np.uint8)
    trimap[:, 12:20] = 128  # the unknown band around the edge
    banded = matte_metrics(pred, true, trimap=trimap)
    whole = matte_metrics(pred, true)
    for function, key in ((mad, "mad"), (mse, "mse"), (sad, "sad"), (gradient_error, "grad"), (iou, "iou")):
        value = float(np.asarray(function(pred, true, trimap)).reshape(-1)[0])
        assert value == pytest.approx(getattr(banded, key)), key
        assert value != pytest.approx(getattr(whole, key)), key
    (only,) = per_image_metrics(pred[None], true[None], trimap=trimap[None])
    assert only.mad == pytest.approx(banded.mad) and only.mad != pytest.approx(whole.mad)
