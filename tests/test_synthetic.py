"""The synthetic composites: deterministic, valid alphas, soft and thin edges, not separable by colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from optimize.errors import MoptError
from optimize.synthetic import (
    VALIDATION_SEED_OFFSET,
    SyntheticMattingDataset,
    synthetic_sample,
    validation_sample,
    validation_set,
    write_synthetic_folder,
)


def test_sample_types_and_ranges() -> None:
    rgb, alpha = synthetic_sample(0, 48, 64)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert alpha.shape == (48, 64) and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert alpha.max() > 0.99, "every sample has a solid foreground object"
    assert alpha.min() < 0.01, "every sample shows some background"


def test_deterministic_and_independent_of_call_order() -> None:
    forward = [synthetic_sample(i, 40, 40, seed=3) for i in range(4)]
    backward = [synthetic_sample(i, 40, 40, seed=3) for i in reversed(range(4))][::-1]
    for (rgb_a, alpha_a), (rgb_b, alpha_b) in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(rgb_a, rgb_b)
        np.testing.assert_array_equal(alpha_a, alpha_b)


def test_seeds_and_indices_differ() -> None:
    base = synthetic_sample(0, 40, 40, seed=0)[1]
    assert not np.array_equal(base, synthetic_sample(1, 40, 40, seed=0)[1])
    assert not np.array_equal(base, synthetic_sample(0, 40, 40, seed=1)[1])


def test_validation_set_is_disjoint_from_training() -> None:
    expected = synthetic_sample(2, 32, 32, VALIDATION_SEED_OFFSET)[1]
    np.testing.assert_array_equal(validation_sample(2, 32, 32)[1], expected)
    assert not np.array_equal(validation_sample(2, 32, 32)[1], synthetic_sample(2, 32, 32, 0)[1])
    assert len(validation_set(3, 32, 32)) == 3


def test_soft_and_thin_edges_are_present() -> None:
    samples = [synthetic_sample(i, 96, 96) for i in range(12)]
    partial = np.mean([((a > 0.02) & (a < 0.98)).mean() for _, a in samples])
    assert partial > 0.01, f"only {partial:.4f} of pixels have partial alpha"
    # Hair-like strands: partial-alpha pixels well away from the solid body (not just its anti-aliased rim).
    from scipy import ndimage

    far_partial = 0
    for _, alpha in samples:
        body = ndimage.binary_dilation(alpha > 0.9, iterations=3)
        far_partial += int(((alpha > 0.05) & (alpha < 0.9) & ~body).sum())
    assert far_partial > 50


def test_foreground_is_not_separable_by_colour() -> None:
    # A least-squares classifier on RGB and its squares, fitted on the pixels themselves, must do poorly:
    # the model has to use shape and edges, not a colour key.
    rgbs, alphas = zip(*(synthetic_sample(i, 48, 48) for i in range(30)), strict=True)
    x = np.concatenate([r.reshape(-1, 3) for r in rgbs]).astype(np.float64) / 255.0
    y = np.concatenate([a.reshape(-1) for a in alphas]) > 0.5
    features = np.concatenate([x, x**2, np.ones((len(x), 1))], axis=1)
    weights, *_ = np.linalg.lstsq(features, y.astype(np.float64), rcond=None)
    predicted = features @ weights > 0.5
    iou = (predicted & y).sum() / max(1, (predicted | y).sum())
    assert iou < 0.5, f"a global colour classifier reaches IoU {iou:.2f}"


def test_same_scene_at_any_size() -> None:
    small, large = synthetic_sample(5, 48, 48)[1], synthetic_sample(5, 96, 96)[1]
    shrunk = np.asarray(Image.fromarray(large).resize((48, 48), Image.BOX))
    assert np.abs((shrunk > 0.5).astype(float) - (small > 0.5)).mean() < 0.05


def test_dataset_caches_and_matches_samples() -> None:
    dataset = SyntheticMattingDataset(3, 32, 32, seed=2)
    assert len(dataset) == 3
    np.testing.assert_array_equal(dataset[1][1], synthetic_sample(1, 32, 32, seed=2)[1])
    assert dataset[1] is dataset[1]
    with pytest.raises(IndexError):
        dataset[3]


def test_bad_arguments_raise_mopt_error() -> None:
    with pytest.raises(MoptError, match="non-negative"):
        synthetic_sample(-1, 32, 32)
    with pytest.raises(MoptError, match="8x8"):
        synthetic_sample(0, 4, 32)
    with pytest.raises(MoptError, match="positive"):
        SyntheticMattingDataset(0, 32, 32)


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_write_synthetic_folder(tmp_path: Path, image_format: str) -> None:
    pairs = write_synthetic_folder(tmp_path / "data", 3, (40, 56), seed=1, image_format=image_format)
    assert [p.name for p, _ in pairs] == [f"000{i}.{image_format}" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "data" / "alphas").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    image_path, alpha_path = pairs[1]
    with Image.open(image_path) as image, Image.open(alpha_path) as alpha:
        assert image.mode == "RGB" and image.size == (56, 40)
        assert alpha.mode == "L" and alpha.size == (56, 40)
        written = np.asarray(alpha, dtype=np.float32) / 255.0
    np.testing.assert_allclose(written, synthetic_sample(1, 40, 56, seed=1)[1], atol=0.5 / 255 + 1e-6)
    assert not list((tmp_path / "data").rglob("*.tmp*")), "atomic writes leave no temporary files"


def test_write_synthetic_folder_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(MoptError, match="png or jpg"):
        write_synthetic_folder(tmp_path, 1, (32, 32), image_format="gif")
