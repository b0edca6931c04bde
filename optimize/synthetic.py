"""Deterministic synthetic matting composites: a foreground object with soft and thin edges over a texture.

Every sample is a pure function of ``(seed, index)`` (a NumPy ``SeedSequence`` over both), so any sample can
be rebuilt alone, in any order, in any process. The scene is laid out in coordinates relative to the image,
so the same ``(seed, index)`` gives the same object at any size.

Foreground and background textures are drawn from the same colour distribution, so no colour threshold
separates them; what a model can learn is the structure of a matte: a compact object (ellipses, polygons,
blobs, rounded rectangles, sometimes with a hole or running off the bottom edge) that is shaded like a lit
surface, with a boundary that is sharp, anti-aliased or defocused, and hair-like strands of partial alpha
that leave it. The composite is ``image = alpha * fg + (1 - alpha) * bg`` plus a little sensor noise.

The built-in validation set uses a seed far from any training seed (:data:`VALIDATION_SEED_OFFSET`), so it
never overlaps the training samples.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from torch.utils.data import Dataset

from optimize.defaults import DEFAULT_VALIDATION_COUNT as DEFAULT_VALIDATION_COUNT
from optimize.errors import MoptError
from optimize.fileio import atomic_output

# Validation samples are synthetic_sample(i, h, w, seed + VALIDATION_SEED_OFFSET): no sane training seed
# reaches it, so the validation set never overlaps training data.
VALIDATION_SEED_OFFSET = 1_000_000_007
# One fixed validation size for every run, whatever the training crop, so IoU/MAD compare across checkpoints.
VALIDATION_SIZE = (192, 192)

# Shapes are rasterised this many times larger and box-filtered down: the mean over a cell is the exact
# partial coverage of edge pixels and of strands thinner than one pixel.
_SUPERSAMPLE = 4
_SHAPE_KINDS = ("ellipse", "polygon", "blob", "rounded_rect")


def _streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two generators for one sample: scene parameters, and per-pixel noise.

    Per-pixel arrays consume a size-dependent number of draws; keeping them on their own stream leaves the
    scene stream (layout, colours, texture kinds) the same at every size.
    """
    if seed < 0 or index < 0:
        raise MoptError(f"synthetic seed and index must be non-negative, got seed={seed}, index={index}")
    scene, pixels = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(scene), np.random.default_rng(pixels)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1] drawn in HSV, so saturated, pastel, dark and grey colours all occur."""
    h, s, v = rng.random(), rng.uniform(0.0, 1.0) ** 0.7, rng.uniform(0.1, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _smooth_noise(noise: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Noise in [0, 1] with features about ``scale`` (fraction of the short side) across."""
    sigma = max(0.5, scale * min(height, width))
    field = ndimage.gaussian_filter(noise.standard_normal((height, width)).astype(np.float32), sigma, mode="wrap")
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-6)


_TEXTURE_KINDS = ("gradient", "stripes", "checker", "noise", "blurred_noise", "cells")
# Foreground and background differ in texture kind and, within one image, in mean colour by at least this
# (RGB distance in [0, 1] units): a real object contrasts with its surroundings somewhere, or nobody could cut
# it out. Across images both are drawn from the same distribution, so colour alone still separates nothing.
_MIN_MEAN_COLOUR_DISTANCE = 0.15


def _texture(
    rng: np.random.Generator,
    noise: np.random.Generator,
    height: int,
    width: int,
    unlike: tuple[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, str, np.ndarray]:
    """A colourful texture in [0, 1]: gradient, stripes, checkerboard, noise, blurred noise or cells.

    Args:
        rng: scene stream (kind, colours, geometry).
        noise: per-pixel stream.
        height: texture height.
        width: texture width.
        unlike: ``(kind, mean colour)`` of another texture this one must differ from.

    Returns:
        ``(H x W x 3 float32 texture, kind, mean colour of its two end colours)``.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short = float(min(height, width))
    kinds = [k for k in _TEXTURE_KINDS if unlike is None or k != unlike[0]]
    kind = kinds[int(rng.random() * len(kinds)) % len(kinds)]
    for _ in range(20):
        c1, c2 = _random_colour(rng), _random_colour(rng)
        if unlike is None or np.linalg.norm((c1 + c2) / 2 - unlike[1]) >= _MIN_MEAN_COLOUR_DISTANCE:
            break
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / short
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.03, 0.25) * short
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        t = 0.5 + 0.5 * np.sin(2 * math.pi * phase) if rng.random() < 0.5 else (phase % 1.0 < 0.5).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(0.04, 0.2) * short
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    elif kind == "noise":
        t = noise.random((height, width)).astype(np.float32) * 0.6 + 0.2 * _smooth_noise(noise, height, width, 0.05)
    elif kind == "blurred_noise":
        t = _smooth_noise(noise, height, width, rng.uniform(0.01, 0.15))
    else:  # "cells": a Voronoi-like patchwork of flat colours
        t = np.floor(_smooth_noise(noise, height, width, rng.uniform(0.03, 0.1)) * rng.integers(3, 7)) / 6.0
    t = np.clip(t, 0.0, 1.0)[..., None]
    texture = c1 * (1 - t) + c2 * t
    if rng.random() < 0.5:
        # A second, low-contrast layer of fine noise so flat areas are not perfectly flat (as in photos).
        amplitude = rng.uniform(0.02, 0.12)
        texture = texture + (noise.random((height, width, 1)).astype(np.float32) - 0.5) * amplitude
    return np.clip(texture, 0.0, 1.0).astype(np.float32), kind, (c1 + c2) / 2


def _shape_points(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of one shape as a polygon, in supersampled pixels (ellipses too, so they can rotate)."""
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "ellipse":
        aspect = rng.uniform(0.45, 1.0)
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        px, py = r * np.cos(t), r * aspect * np.sin(t)
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        if rng.random() < 0.5:
            t = np.sort(rng.uniform(0, 2 * math.pi, n))  # irregular
        else:
            t = np.linspace(0, 2 * math.pi, n, endpoint=False)  # near-regular
        radius = r * rng.uniform(0.6, 1.0, n)
        px, py = radius * np.cos(t), radius * np.sin(t)
    elif kind == "blob":
        t = np.linspace(0, 2 * math.pi, 128, endpoint=False)
        radius = np.ones_like(t)
        for k in range(2, 6):
            radius += rng.uniform(0, 0.35 / k * 2) * np.sin(k * t + rng.uniform(0, 2 * math.pi))
        radius = r * radius / radius.max()
        px, py = radius * np.cos(t), radius * np.sin(t)
    else:  # rounded rectangle: a superellipse is a rotatable rounded rectangle
        aspect, power = rng.uniform(0.4, 1.0), rng.uniform(3.0, 8.0)
        t = np.linspace(0, 2 * math.pi, 128, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        px = r * np.sign(c) * np.abs(c) ** (2 / power)
        py = r * aspect * np.sign(s) * np.abs(s) ** (2 / power)
    rx = px * math.cos(angle) - py * math.sin(angle) + cx
    ry = px * math.sin(angle) + py * math.cos(angle) + cy
    return list(zip(rx.tolist(), ry.tolist(), strict=True))


def _downsample(canvas: Image.Image, height: int, width: int) -> np.ndarray:
    """Supersampled L canvas -> coverage in [0, 1] at the output size (box filter = exact area coverage)."""
    return np.asarray(canvas.resize((width, height), Image.BOX), dtype=np.float32) / 255.0


def _object_alpha(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The solid part of the matte: a union of shapes, maybe with a hole, anti-aliased, maybe defocused."""
    big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    short = min(big_h, big_w)
    canvas = Image.new("L", (big_w, big_h), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = big_w * rng.uniform(0.35, 0.65), big_h * rng.uniform(0.35, 0.65)
    radius = short * rng.uniform(0.18, 0.34)
    for part in range(int(rng.integers(1, 4))):
        kind = _SHAPE_KINDS[int(rng.integers(len(_SHAPE_KINDS)))]
        # Later parts attach near the first one so the object stays one connected thing.
        ox, oy = (0.0, 0.0) if part == 0 else rng.uniform(-0.8, 0.8, 2) * radius
        r = radius * (1.0 if part == 0 else rng.uniform(0.35, 0.8))
        draw.polygon(_shape_points(rng, kind, cx + ox, cy + oy, r), fill=255)
    if rng.random() < 0.3:
        # A "torso" running off the bottom edge, as in portraits: the matte touches the image border.
        half = radius * rng.uniform(0.5, 1.0)
        draw.rounded_rectangle([cx - half, cy, cx + half, big_h + 10], radius=int(half * 0.5), fill=255)
    if rng.random() < 0.2:
        # A hole shows background inside the object (handles of cups, gaps between arms and body).
        hr = radius * rng.uniform(0.15, 0.3)
        hx, hy = cx + rng.uniform(-0.3, 0.3) * radius, cy + rng.uniform(-0.3, 0.3) * radius
        draw.polygon(_shape_points(rng, "ellipse", hx, hy, hr), fill=0)
    alpha = _downsample(canvas, height, width)
    if rng.random() < 0.5:
        # Defocus or motion blur: the edge becomes a soft ramp several pixels wide.
        sigma = rng.uniform(0.6, 2.5) * min(height, width) / 192  # relative, so the scene looks alike at any size
        alpha = ndimage.gaussian_filter(alpha, sigma)
    return alpha


def _strand_alpha(rng: np.random.Generator, solid: np.ndarray) -> np.ndarray:
    """Hair-like strands and thin lines, thinner than a pixel to a few pixels, partly transparent."""
    height, width = solid.shape
    big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    canvas = Image.new("L", (big_w, big_h), 0)
    draw = ImageDraw.Draw(canvas)
    # Strands grow out of the object's rim, in the direction away from its centre.
    inside = solid > 0.5
    rim = np.argwhere(inside & ~ndimage.binary_erosion(inside, iterations=2))
    count = int(rng.integers(0, 40)) if rng.random() < 0.8 else 0
    if len(rim) == 0 or count == 0:
        return np.zeros((height, width), dtype=np.float32)
    cy, cx = np.argwhere(inside).mean(axis=0)
    short = min(big_h, big_w)
    curl = rng.uniform(0.02, 0.25)
    for _ in range(count):
        # One uniform draw whatever len(rim) is, so the scene stream stays size-independent.
        y, x = rim[min(len(rim) - 1, int(rng.random() * len(rim)))]
        heading = math.atan2(y - cy, x - cx) + rng.normal(0, 0.6)
        px, py = (x + 0.5) * _SUPERSAMPLE, (y + 0.5) * _SUPERSAMPLE
        # Start a little inside the object so the strand is attached, not floating.
        px -= math.cos(heading) * 2 * _SUPERSAMPLE
        py -= math.sin(heading) * 2 * _SUPERSAMPLE
        length = short * rng.uniform(0.04, 0.22)
        steps = 12
        points = [(px, py)]
        for _ in range(steps):
            heading += rng.normal(0, curl)
            px += math.cos(heading) * length / steps
            py += math.sin(heading) * length / steps
            points.append((px, py))
        # Width in supersampled pixels: 1 -> a quarter pixel of coverage, i.e. a faint strand.
        draw.line(points, fill=int(255 * rng.uniform(0.5, 1.0)), width=int(rng.integers(1, 7)), joint="curve")
    return _downsample(canvas, height, width)


def _shading(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A soft light falloff across the object (a lit, curved surface), in [0.55, 1.15]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    lx, ly = rng.uniform(0, width), rng.uniform(0, height)
    d = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) / max(height, width)
    return (1.15 - 0.6 * np.clip(d, 0, 1))[..., None].astype(np.float32)


def synthetic_sample(index: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One composite, a pure function of ``(seed, index)`` and the size.

    Args:
        index: sample number (non-negative).
        height: image height in pixels.
        width: image width in pixels.
        seed: data-set seed (non-negative); the validation set adds :data:`VALIDATION_SEED_OFFSET`.

    Returns:
        ``(rgb, alpha)``: H x W x 3 uint8 RGB and H x W float32 alpha in [0, 1].
    """
    if height < 8 or width < 8:
        raise MoptError(f"synthetic samples need at least 8x8 pixels, got {height}x{width}")
    rng, noise = _streams(seed, index)
    background, bg_kind, bg_colour = _texture(rng, noise, height, width)
    foreground = _texture(rng, noise, height, width, unlike=(bg_kind, bg_colour))[0] * _shading(rng, height, width)
    solid = _object_alpha(rng, height, width)
    strands = _strand_alpha(rng, solid)
    alpha = np.clip(np.maximum(solid, strands), 0.0, 1.0)
    if rng.random() < 0.5:
        # A soft contact shadow darkens the background near the object, as under studio light; it is not
        # part of the matte, so a model must not treat "darker" as "foreground".
        unit = min(height, width) / 192
        shadow = ndimage.gaussian_filter(solid, rng.uniform(2, 6) * unit)
        shift = (round(rng.uniform(-4, 4) * unit), round(rng.uniform(0, 5) * unit))
        background = background * (1 - 0.35 * np.roll(shadow, shift, axis=(1, 0))[..., None])
    a = alpha[..., None]
    image = a * np.clip(foreground, 0, 1) + (1 - a) * background
    image = image + noise.normal(0, rng.uniform(0.0, 0.02), image.shape).astype(np.float32)  # sensor noise
    rgb = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb, alpha.astype(np.float32)


def validation_sample(index: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of the built-in validation set (never overlaps training samples of any small seed)."""
    return synthetic_sample(index, height, width, seed=seed + VALIDATION_SEED_OFFSET)


def validation_set(
    count: int = DEFAULT_VALIDATION_COUNT,
    height: int = VALIDATION_SIZE[0],
    width: int = VALIDATION_SIZE[1],
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The built-in synthetic validation set: ``count`` ``(rgb, alpha)`` pairs, by default 256 at 192x192, seed 0."""
    if count <= 0:
        raise MoptError(f"validation set size must be positive, got {count}")
    return [validation_sample(i, height, width, seed) for i in range(count)]


class SyntheticMattingDataset(Dataset):
    """``count`` synthetic composites as a torch Dataset of ``(rgb uint8 HxWx3, alpha float32 HxW)`` arrays.

    Args:
        count: number of samples (indices ``0 .. count-1``).
        height: sample height.
        width: sample width.
        seed: data-set seed.
        cache: keep generated samples in memory; generation costs more than a training step per sample.
    """

    def __init__(self, count: int, height: int, width: int, seed: int = 0, cache: bool = True) -> None:
        if count <= 0:
            raise MoptError(f"the synthetic data set needs a positive sample count, got {count}")
        self.count, self.height, self.width, self.seed = count, height, width, seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.count:
            raise IndexError(f"sample {index} out of range 0..{self.count - 1}")
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = synthetic_sample(index, self.height, self.width, self.seed)
        if self._cache is not None:
            self._cache[index] = sample
        return sample


def write_synthetic_folder(
    out_dir: str | Path,
    count: int,
    size: tuple[int, int] = (192, 192),
    seed: int = 0,
    image_format: str = "png",
) -> list[tuple[Path, Path]]:
    """Write ``count`` composites as ``out_dir/images/NNNN.<png|jpg>`` + ``out_dir/alphas/NNNN.png`` pairs.

    The folder is laid out like a real matting data set, so commands and tests that read folders of
    photos can run on it.

    Args:
        out_dir: destination folder (created).
        count: number of pairs.
        size: ``(height, width)`` of every image.
        seed: data-set seed.
        image_format: ``"png"`` (lossless) or ``"jpg"`` (quality 92, like camera output); alphas are always
            8-bit greyscale PNG.

    Returns:
        The ``(image_path, alpha_path)`` pairs written.
    """
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise MoptError(f"image format {image_format!r} is not supported; choose png or jpg")
    if count <= 0:
        raise MoptError(f"count must be positive, got {count}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "alphas").mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(count - 1)))
    pairs = []
    for i in range(count):
        rgb, alpha = synthetic_sample(i, size[0], size[1], seed)
        image_path = out_dir / "images" / f"{i:0{digits}d}.{'jpg' if fmt != 'png' else 'png'}"
        alpha_path = out_dir / "alphas" / f"{i:0{digits}d}.png"
        with atomic_output(image_path) as tmp:
            if fmt == "png":
                Image.fromarray(rgb).save(tmp, format="PNG")
            else:
                Image.fromarray(rgb).save(tmp, format="JPEG", quality=92)
        with atomic_output(alpha_path) as tmp:
            Image.fromarray(np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(tmp, format="PNG")
        pairs.append((image_path, alpha_path))
    return pairs
