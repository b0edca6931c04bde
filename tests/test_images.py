"""Image reading (every mode and format mopt accepts), input expansion, output writing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from optimize.checkpoint import IMAGENET
from optimize.errors import MoptError
from optimize.images import (
    DecodedImage,
    ImageInput,
    alpha_to_uint8,
    encode_png,
    expand_image_inputs,
    is_complete_output,
    load_image,
    load_rgb,
    matte_image,
    oriented_size,
    output_paths,
    output_status,
    parse_color,
    preprocess,
    resize_alpha,
    resize_rgb,
    save_png,
)

# --- writers for the formats Pillow cannot produce itself -------------------------------------------


def png16_bytes(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by channel count) from an H x W x C uint16 array."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def tiff16_rgb_bytes(pixels: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF from an H x W x 3 uint16 array."""
    height, width, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    entries = 10
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + entries * 12 + 4
    data_offset = bits_offset + 6
    tags = [
        (256, 3, 1, width),  # ImageWidth
        (257, 3, 1, height),  # ImageLength
        (258, 3, 3, bits_offset),  # BitsPerSample -> three SHORTs stored at bits_offset
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # PhotometricInterpretation: RGB
        (273, 4, 1, data_offset),  # StripOffsets
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 3, 1, height),  # RowsPerStrip
        (279, 4, 1, len(data)),  # StripByteCounts
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
    ]
    ifd = struct.pack("<H", entries)
    for tag, kind, count, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + struct.pack("<HHH", 16, 16, 16) + data


def _pattern(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colourful H x W x 3 uint8 image (smooth, so JPEG keeps it close)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, 3)
    channels = [128 + 100 * np.sin(xx / (7 + 3 * c) + yy / (11 + 2 * c) + phase[c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def write_mixed_folder(root: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Every input kind ``mopt matte`` accepts, nested, plus broken files.

    Returns:
        ``good``: relative path -> oriented (height, width); ``broken``: relative path -> a word its failure
        reason must contain.
    """
    good: dict[str, tuple[int, int]] = {}
    broken: dict[str, str] = {}
    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()

    def save(rel: str, image: Image.Image, size: tuple[int, int], **options) -> None:
        image.save(root / rel, **options)
        good[rel] = size

    rgb = _pattern(48, 64, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display: the oriented image is 64 x 48
    save("a/b/rotated.jpg", Image.fromarray(rgb), (64, 48), quality=95, exif=exif.tobytes())
    save("a/plain.jpeg", Image.fromarray(_pattern(40, 40, 1)), (40, 40), quality=90)
    rgba = np.dstack([_pattern(50, 70, 2), np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (50, 1))])
    save("a/transparent.png", Image.fromarray(rgba, "RGBA"), (50, 70))
    save("a/b/grey_alpha.png", Image.fromarray(_pattern(33, 45, 3)[..., :2].copy(), "LA"), (33, 45))
    palette = Image.fromarray(_pattern(30, 30, 4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("c/palette.png", palette, (30, 30), transparency=0)
    save("grey.png", Image.fromarray(_pattern(31, 29, 5)[..., 0].copy(), "L"), (31, 29))
    grey16 = (np.arange(36 * 20, dtype=np.uint32).reshape(36, 20) * 90).astype(np.uint16)
    save("c/grey16.png", Image.fromarray(grey16), (36, 20))
    (root / "c" / "rgb16.png").write_bytes(png16_bytes(_pattern(26, 34, 6).astype(np.uint16) * 257))
    good["c/rgb16.png"] = (26, 34)
    (root / "c" / "deep16.tif").write_bytes(tiff16_rgb_bytes(_pattern(22, 18, 7).astype(np.uint16) * 257))
    good["c/deep16.tif"] = (22, 18)
    save("a/lossless.webp", Image.fromarray(_pattern(40, 24, 8)), (40, 24), lossless=True)
    save("a/b/bitmap.bmp", Image.fromarray(_pattern(21, 35, 9)), (21, 35))
    save("c/photo.tiff", Image.fromarray(_pattern(44, 28, 10)), (44, 28))
    save("odd.png", Image.fromarray(_pattern(37, 53, 11)), (37, 53))

    (root / "a" / "empty.jpg").write_bytes(b"")
    broken["a/empty.jpg"] = "empty"
    whole = io.BytesIO()
    Image.fromarray(_pattern(64, 64, 12)).save(whole, format="JPEG", quality=95)
    (root / "a" / "b" / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    broken["a/b/truncated.jpg"] = "truncated"
    (root / "c" / "notes.png").write_text("this is a text file with an image suffix\n")
    broken["c/notes.png"] = "not a JPEG"
    gif = io.BytesIO()
    Image.fromarray(_pattern(16, 16, 13)).convert("P").save(gif, format="GIF")
    (root / "c" / "animation.gif").write_bytes(gif.getvalue())
    broken["c/animation.gif"] = "unsupported"
    (root / "c" / "disguised.jpg").write_bytes(gif.getvalue())  # GIF content, JPEG name
    broken["c/disguised.jpg"] = "not a JPEG"

    # Not images: never listed, never reported.
    (root / "readme.txt").write_text("not an image\n")
    (root / "a" / ".hidden.jpg").write_bytes(whole.getvalue())
    return good, broken


# --- reading ---------------------------------------------------------------------------------------


def test_every_good_kind_loads_at_its_oriented_size(tmp_path):
    good, _ = write_mixed_folder(tmp_path)
    for rel, size in good.items():
        image = load_image(tmp_path / rel)
        assert image.rgb.dtype == np.uint8 and image.rgb.shape == (*size, 3), rel
        assert image.size == size == oriented_size(tmp_path / rel), rel


def test_every_broken_kind_is_a_one_line_error_naming_the_file(tmp_path):
    _, broken = write_mixed_folder(tmp_path)
    for rel, word in broken.items():
        with pytest.raises(MoptError) as info:
            load_image(tmp_path / rel)
        message = str(info.value)
        assert str(tmp_path / rel) in message and word in message and "\n" not in message, message


def test_exif_orientation_rotates_pixels(tmp_path):
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:20, :30] = (255, 0, 0)  # red top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "r.jpg", quality=98, exif=exif.tobytes())
    loaded = load_image(tmp_path / "r.jpg").rgb
    expected = np.rot90(rgb, k=-1)  # orientation 6: the stored image is shown rotated 90 degrees clockwise
    assert loaded.shape == expected.shape == (60, 40, 3)
    assert np.abs(loaded.astype(int) - expected).mean() < 3


def test_transparency_is_kept_apart_from_the_colour(tmp_path):
    good, _ = write_mixed_folder(tmp_path)
    rgba = load_image(tmp_path / "a/transparent.png")
    assert rgba.transparency is not None
    np.testing.assert_array_equal(rgba.transparency[0], np.linspace(0, 255, 70, dtype=np.uint8))
    np.testing.assert_array_equal(rgba.rgb, _pattern(50, 70, 2))  # colour under transparent pixels as stored
    palette = load_image(tmp_path / "c/palette.png")
    assert palette.transparency is not None and set(np.unique(palette.transparency)) <= {0, 255}
    assert load_image(tmp_path / "a/b/grey_alpha.png").transparency is not None
    assert load_image(tmp_path / "a/plain.jpeg").transparency is None


def test_sixteen_bit_images_scale_by_value(tmp_path):
    rgb8 = _pattern(10, 12, 1)
    (tmp_path / "rgb16.png").write_bytes(png16_bytes(rgb8.astype(np.uint16) * 257))
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.png").rgb, rgb8)
    (tmp_path / "rgb16.tif").write_bytes(tiff16_rgb_bytes(rgb8.astype(np.uint16) * 257))
    np.testing.assert_array_equal(load_image(tmp_path / "rgb16.tif").rgb, rgb8)
    # A dark 16-bit grey image stays dark: 16 bits are scaled to 8, never clipped at 255.
    dark = np.full((4, 4), 200, np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert load_image(tmp_path / "dark16.png").rgb.max() == 1
    bright = np.full((4, 4), 65535, np.uint16)
    Image.fromarray(bright).save(tmp_path / "bright16.png")
    assert load_image(tmp_path / "bright16.png").rgb.min() == 255


def test_load_rgb_still_reads_any_pillow_format(tmp_path):
    Image.fromarray(_pattern(8, 8, 0)).convert("P").save(tmp_path / "x.gif")
    assert load_rgb(tmp_path / "x.gif").shape == (8, 8, 3)
    with pytest.raises(MoptError, match="unsupported"):
        load_image(tmp_path / "x.gif")
    with pytest.raises(MoptError, match="does not exist"):
        load_rgb(tmp_path / "missing.png")


def test_preprocess_matches_the_formula():
    rgb = _pattern(5, 6, 0)
    x = preprocess([rgb], IMAGENET)
    expected = (rgb[..., 1] / 255.0 - IMAGENET.mean[1]) / IMAGENET.std[1]
    np.testing.assert_allclose(x[0, 1], expected, atol=1e-6)


def bilinear_upscale(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """An oracle written from the definition, not from mopt's code: separable linear interpolation between
    pixel centres (output pixel ``i`` sits at input coordinate ``(i + 0.5) * in / out - 0.5``), edges clamped."""

    def weights(size_in: int, size_out: int) -> np.ndarray:
        matrix = np.zeros((size_out, size_in))
        for i in range(size_out):
            x = min(max((i + 0.5) * size_in / size_out - 0.5, 0.0), size_in - 1.0)
            left = int(np.floor(x))
            right = min(left + 1, size_in - 1)
            matrix[i, left] += 1.0 - (x - left)
            matrix[i, right] += x - left
        return matrix

    rows, cols = weights(alpha.shape[0], height), weights(alpha.shape[1], width)
    return rows @ alpha.astype(np.float64) @ cols.T


def nearest_upscale(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resizing, what a matte must not be resized back with (blocky edges)."""
    rows = np.minimum(((np.arange(height) + 0.5) * alpha.shape[0] / height).astype(int), alpha.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * alpha.shape[1] / width).astype(int), alpha.shape[1] - 1)
    return alpha[rows][:, cols].astype(np.float64)


def test_resize_alpha_is_bilinear_by_an_independent_oracle():
    # A soft disc edge plus a ramp: values between the samples are what bilinear and nearest disagree on.
    yy, xx = np.mgrid[0:12, 0:16].astype(np.float32)
    small = np.clip(1.2 - np.hypot(yy - 5.5, xx - 7.5) / 5.0, 0, 1) * 0.7 + xx / 15 * 0.3
    for height, width in ((48, 64), (37, 53), (12, 41)):  # x4, odd factors, one axis kept
        resized = resize_alpha(small, height, width)
        expected = bilinear_upscale(small, height, width)
        np.testing.assert_allclose(resized, expected, atol=1e-5)
        # The oracle is sharp enough to tell the filters apart: nearest is several 8-bit steps off.
        assert np.abs(nearest_upscale(small, height, width) - expected).max() > 10 / 255


def test_resize_alpha_takes_any_float_matte_and_returns_float32():
    alpha = np.linspace(0, 1, 12 * 16).reshape(12, 16)  # float64, as a caller's own matte may be
    same = resize_alpha(alpha, 12, 16)
    assert same.dtype == np.float32 and np.array_equal(same, alpha.astype(np.float32))
    bigger = resize_alpha(alpha, 24, 32)
    assert bigger.dtype == np.float32
    np.testing.assert_allclose(bigger, bilinear_upscale(alpha, 24, 32), atol=1e-5)


def test_resize_rgb_is_bilinear_by_the_same_oracle():
    rgb = _pattern(10, 14, 3)
    big = resize_rgb(rgb, 31, 45)
    assert big.shape == (31, 45, 3) and big.dtype == np.uint8
    expected = np.stack([bilinear_upscale(rgb[..., c], 31, 45) for c in range(3)], axis=-1)
    assert np.abs(big - expected).max() <= 1.0  # Pillow's 8-bit fixed-point arithmetic rounds
    assert np.abs(nearest_upscale(rgb[..., 0], 31, 45) - expected[..., 0]).max() > 10
    assert resize_rgb(rgb, 10, 14) is rgb  # already the size: no work, no copy


def test_resize_alpha_stays_float_and_in_range():
    alpha = np.linspace(0, 1, 32 * 16, dtype=np.float32).reshape(32, 16)
    big = resize_alpha(alpha, 97, 41)
    assert big.shape == (97, 41) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    assert len(np.unique(big)) > 256  # not quantized to 8 bits on the way


# --- input expansion -------------------------------------------------------------------------------


def test_folder_expansion_keeps_relative_paths_and_skips_non_images(tmp_path):
    good, broken = write_mixed_folder(tmp_path)
    found = expand_image_inputs([tmp_path])
    relatives = {str(i.relative) for i in found}
    assert relatives == set(good) | set(broken)  # no readme.txt, no hidden file
    assert all(i.path == tmp_path / i.relative for i in found)


def test_globs_files_and_duplicates(tmp_path, monkeypatch):
    write_mixed_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    found = expand_image_inputs(["a/**/*.jpg", "odd.png", "a/b/rotated.jpg"])
    relatives = [str(i.relative) for i in found]
    # The glob's fixed prefix "a" is the root; the repeated file keeps its first listing.
    assert relatives == ["b/rotated.jpg", "b/truncated.jpg", "empty.jpg", "odd.png"]
    with pytest.raises(MoptError, match="matches no image"):
        expand_image_inputs(["a/*.nothing"])
    with pytest.raises(MoptError, match="does not exist"):
        expand_image_inputs(["missing_folder"])
    with pytest.raises(MoptError, match="no input"):
        expand_image_inputs([])


def test_named_files_keep_paths_below_their_common_folder(tmp_path, monkeypatch):
    write_mixed_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    quoted = expand_image_inputs(["a/**/*.jpg"])
    shell_expanded = expand_image_inputs([str(i.path) for i in quoted])  # what bash's globstar would pass
    assert [i.relative for i in shell_expanded] == [i.relative for i in quoted]
    assert [str(i.relative) for i in expand_image_inputs(["a/../a/b/rotated.jpg"])] == ["rotated.jpg"]


def test_output_folder_inside_an_input_folder_is_not_walked(tmp_path):
    write_mixed_folder(tmp_path)
    out = tmp_path / "a" / "mattes"
    out.mkdir()
    Image.fromarray(_pattern(8, 8, 0)).save(out / "earlier_output.png")
    found = expand_image_inputs([tmp_path], exclude=out)
    assert not any("mattes" in str(i.relative) for i in found)
    assert any("mattes" in str(i.relative) for i in expand_image_inputs([tmp_path]))


def test_output_paths_mirror_the_tree_and_resolve_suffix_clashes(tmp_path):
    images = [
        ImageInput(tmp_path / "in/a/b/x.jpg", Path("a/b/x.jpg")),
        ImageInput(tmp_path / "in/a/y.jpg", Path("a/y.jpg")),
        ImageInput(tmp_path / "in/a/y.png", Path("a/y.png")),
    ]
    out = tmp_path / "out"
    assert output_paths(images, out) == [out / "a/b/x.png", out / "a/y.jpg.png", out / "a/y.png.png"]


def test_output_paths_refuse_clashes_and_overwriting_inputs(tmp_path):
    two_roots = [ImageInput(tmp_path / "one/x.jpg", Path("x.jpg")), ImageInput(tmp_path / "two/x.jpg", Path("x.jpg"))]
    with pytest.raises(MoptError, match="would both be written"):
        output_paths(two_roots, tmp_path / "out")
    png = [ImageInput(tmp_path / "in" / "x.png", Path("x.png"))]
    with pytest.raises(MoptError, match="would overwrite the input"):
        output_paths(png, tmp_path / "in")


# --- writing ---------------------------------------------------------------------------------------


def test_parse_color():
    assert parse_color("#FF8000") == (255, 128, 0)
    assert parse_color("ff8000") == (255, 128, 0)
    assert parse_color("#fff") == (255, 255, 255)
    assert parse_color("black") == (0, 0, 0)
    with pytest.raises(MoptError, match="#RRGGBB"):
        parse_color("#12345")
    with pytest.raises(MoptError, match="not a colour"):
        parse_color("transparent-ish")


def test_matte_image_kinds():
    rgb = np.full((2, 3, 3), (200, 100, 50), np.uint8)
    alpha = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]], np.float32)
    image = DecodedImage(rgb)
    rgba = np.asarray(matte_image(image, alpha, "rgba"))
    visible = alpha > 0
    np.testing.assert_array_equal(rgba[visible, :3], rgb[visible])
    np.testing.assert_array_equal(rgba[~visible], 0)  # no trace of the removed background
    np.testing.assert_array_equal(rgba[..., 3], alpha_to_uint8(alpha))
    np.testing.assert_array_equal(np.asarray(matte_image(image, alpha, "alpha")), alpha_to_uint8(alpha))
    composite = np.asarray(matte_image(image, alpha, "composite", background=(0, 0, 255))).astype(int)
    np.testing.assert_array_equal(composite[0, 0], (0, 0, 255))  # alpha 0: background
    np.testing.assert_array_equal(composite[0, 2], (200, 100, 50))  # alpha 1: the image
    np.testing.assert_allclose(composite[0, 1], (100, 50, 153), atol=1)  # alpha 128/255: the blend
    with pytest.raises(MoptError, match="unknown"):
        matte_image(image, alpha, "jpeg")
    with pytest.raises(MoptError, match="matte is"):
        matte_image(image, alpha[:1], "rgba")


def test_input_transparency_multiplies_the_matte():
    image = DecodedImage(np.zeros((1, 3, 3), np.uint8), transparency=np.array([[0, 255, 128]], np.uint8))
    alpha = np.ones((1, 3), np.float32)
    out = np.asarray(matte_image(image, alpha, "alpha"))
    np.testing.assert_array_equal(out, [[0, 255, 128]])


def test_save_png_is_atomic_and_complete(tmp_path, monkeypatch):
    picture = matte_image(DecodedImage(_pattern(20, 30, 0)), np.ones((20, 30), np.float32), "rgba")
    target = tmp_path / "deep" / "x.png"
    save_png(picture, target)
    assert is_complete_output(target, (20, 30), "rgba")
    assert not is_complete_output(target, (30, 20), "rgba")  # wrong size
    assert not is_complete_output(target, (20, 30), "alpha")  # wrong kind
    assert not is_complete_output(tmp_path / "none.png", (20, 30), "rgba")
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # no temporary left

    write_bytes = Path.write_bytes

    def fail_midway(self, data):
        write_bytes(self, data[:100])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", fail_midway)
    with pytest.raises(OSError):
        save_png(picture, tmp_path / "other.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]  # nothing under the final name, no temporary
    with pytest.raises(MoptError, match="compression"):
        save_png(picture, tmp_path / "y.png", compression="max")


@pytest.mark.parametrize("channels", [None, 3, 4])
@pytest.mark.parametrize("compression", ["fast", "default", "small"])
def test_encode_png_is_lossless_and_valid(tmp_path, channels, compression):
    rng = np.random.default_rng(0)
    shape = (23, 17) if channels is None else (23, 17, channels)
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[5:9] = 0  # runs and noise both
    path = save_png(pixels, tmp_path / "x.png", compression)
    with Image.open(path) as picture:
        picture.verify()  # chunk CRCs and structure
    with Image.open(path) as picture:
        assert picture.mode == {None: "L", 3: "RGB", 4: "RGBA"}[channels]
        np.testing.assert_array_equal(np.asarray(picture), pixels)


def test_encode_png_refuses_other_arrays():
    with pytest.raises(MoptError, match="uint8"):
        encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(MoptError, match="uint8"):
        encode_png(np.zeros((4, 4, 2), np.uint8))


def _complete_rgba_png(path: Path, size: int = 64) -> bytes:
    rgba = np.dstack([_pattern(size, size, 0), np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))])
    save_png(rgba, path)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [45, 0.5, -20, -12, -1])
def test_an_output_cut_anywhere_is_truncated_not_complete(tmp_path, keep):
    """Cut after the header (45 bytes: size and mode readable), mid-IDAT, in the deflate checksum (Pillow still
    decodes every pixel), before IEND, or by one byte: never complete, so a re-run writes it again."""
    data = _complete_rgba_png(tmp_path / "whole.png")
    assert output_status(tmp_path / "whole.png", (64, 64), "rgba") == "complete"
    cut = int(len(data) * keep) if isinstance(keep, float) else keep if keep > 0 else len(data) + keep
    (tmp_path / "x.png").write_bytes(data[:cut])
    assert output_status(tmp_path / "x.png", (64, 64), "rgba") == "truncated"
    assert not is_complete_output(tmp_path / "x.png", (64, 64), "rgba")


def test_a_corrupt_output_is_truncated_and_a_wrong_one_different(tmp_path):
    data = bytearray(_complete_rgba_png(tmp_path / "x.png"))
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the pixel data
    (tmp_path / "x.png").write_bytes(bytes(data))
    assert output_status(tmp_path / "x.png", (64, 64), "rgba") == "truncated"
    (tmp_path / "text.png").write_text("not a PNG at all, but long enough to have a tail\n")
    assert output_status(tmp_path / "text.png", (64, 64), "rgba") == "truncated"
    (tmp_path / "tiny.png").write_bytes(b"\x89PNG")  # shorter than the IEND chunk it should end with
    assert output_status(tmp_path / "tiny.png", (64, 64), "rgba") == "truncated"
    _complete_rgba_png(tmp_path / "y.png")
    assert output_status(tmp_path / "y.png", (64, 65), "rgba") == "different"
    assert output_status(tmp_path / "y.png", (64, 64), "alpha") == "different"
    assert output_status(tmp_path / "none.png", (64, 64), "rgba") == "missing"
