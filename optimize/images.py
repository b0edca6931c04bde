"""Image reading, writing and the preprocessing every backend shares (one definition, so mattes match across backends).

Reading accepts JPEG, PNG, WebP, BMP and TIFF in any mode Pillow decodes (L, P, RGB, RGBA, LA, CMYK, 16-bit
grey, 16-bit RGB/RGBA, float), applies the EXIF orientation and returns 8-bit RGB plus the input's own
transparency when it has one. Writing produces the three kinds of matte output (``rgba``, ``alpha``,
``composite``) as PNG, atomically. Input expansion turns files, folders and glob patterns into a list of
images, each with the relative path its output keeps under the output folder.
"""

from __future__ import annotations

import glob
import os
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageColor, ImageOps, UnidentifiedImageError

from optimize.card import ModelCard, Normalization, input_card
from optimize.defaults import DEFAULT_PNG_COMPRESSION as DEFAULT_PNG_COMPRESSION
from optimize.errors import MoptError
from optimize.fileio import atomic_output

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Suffixes of image formats mopt does not read. A folder walk lists them (so they are reported as
# unsupported rather than silently left out); any other file in a folder (.txt, .json, ...) is not an image.
UNSUPPORTED_IMAGE_SUFFIXES = (
    ".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".ico", ".psd", ".svg", ".tga", ".ppm", ".pgm",
    ".pbm", ".pcx", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf",
)  # fmt: skip
# Pillow decoders tried on a file's content: the suffix does not decide the format, but nothing outside
# this list is opened (a GIF renamed .png is reported, not decoded). The JPEG decoder also opens the
# multi-picture (MPO) JPEGs of phones and cameras.
DECODE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
OUTPUT_KINDS = ("rgba", "alpha", "composite")
# Pixel mode of each output kind: a resumed run only keeps an existing output of the right kind.
OUTPUT_MODES = {"rgba": "RGBA", "alpha": "L", "composite": "RGB"}
OUTPUT_SUFFIX = ".png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# zlib level of each PNG compression preset (PNG is lossless at all of them). Encoding a full-size RGBA PNG
# is the most expensive step of a matte run on the CPU; on 1024x1024 cut-outs "fast" writes files about 10%
# larger than "default" in a quarter of the time.
PNG_COMPRESSION: dict[str, int] = {"fast": 1, "default": 6, "small": 9}

_GLOB_MAGIC = re.compile(r"[*?[]")
_ORIENTATION_TAG = ExifTags.Base.Orientation
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF orientations that swap width and height


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted; a MoptError if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MoptError(f"image folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise MoptError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return paths


def _grey16_to_uint8(image: Image.Image) -> np.ndarray:
    """16/32-bit integer greyscale -> H x W uint8, scaled by value rather than clipped at 255 as PIL would."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        peak = 65535.0  # the mode says 16 bits: a dark image must stay dark
    else:
        peak = 65535.0 if values.size and values.max() > 255 else 255.0  # "I" does not say how many bits are used
    return np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _float_to_uint8(image: Image.Image) -> np.ndarray:
    """Float greyscale (TIFF "F") -> H x W uint8: values in [0, 1] are scaled, anything else is clipped."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    return np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)


def _oriented_to_rgb(image: Image.Image) -> np.ndarray:
    """An already oriented image in any PIL mode -> H x W x 3 uint8 RGB (transparency dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.repeat(_grey16_to_uint8(image)[..., None], 3, axis=2)
    if image.mode == "F":
        return np.repeat(_float_to_uint8(image)[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB").convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode (L, P, RGBA, LA, I;16, CMYK, ...) -> H x W x 3 uint8 RGB, EXIF orientation applied."""
    return _oriented_to_rgb(ImageOps.exif_transpose(image))


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def _open_checked(path: Path, strict: bool = True) -> Image.Image:
    """``Image.open`` with every failure turned into a one-line MoptError.

    Args:
        path: the file.
        strict: accept only the supported suffixes and formats (:data:`DECODE_FORMATS`); otherwise any
            format Pillow reads.
    """
    if strict and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise MoptError(f"unsupported format {path.suffix or '(no suffix)'}; mopt reads {', '.join(IMAGE_SUFFIXES)}")
    try:
        if path.stat().st_size == 0:
            raise MoptError("empty file (0 bytes)")
        return Image.open(path, formats=DECODE_FORMATS if strict else None)
    except FileNotFoundError as exc:
        raise MoptError("file does not exist") from exc
    except UnidentifiedImageError as exc:
        raise MoptError("not a JPEG, PNG, WebP, BMP or TIFF image (content unrecognised)") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MoptError(f"cannot read the image: {exc}") from exc


def _decode_error(path: Path, exc: BaseException) -> MoptError:
    return MoptError(f"cannot read image {path}: {exc}")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, or raise a MoptError naming the file and the reason."""
    return load_image(path, strict=False).rgb


@dataclass
class DecodedImage:
    """An input image at full resolution, oriented.

    Attributes:
        rgb: H x W x 3 uint8 RGB (the colour under transparent pixels is kept as stored).
        transparency: H x W uint8 alpha of the input itself, or None when it is opaque.
    """

    rgb: np.ndarray
    transparency: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.rgb.shape[0], self.rgb.shape[1]


def decoded_from_image(image: Image.Image) -> DecodedImage:
    """A loaded PIL image -> its oriented RGB and its own transparency (``None`` when it hides nothing).

    Shared by files (``mopt matte``) and uploaded bytes (``mopt serve``) so both read images identically.
    """
    oriented = ImageOps.exif_transpose(image)
    transparency = None
    if _has_transparency(oriented):
        rgba = oriented.convert("RGBA")  # applies a palette or tRNS transparency too
        transparency = np.asarray(rgba.getchannel("A"), dtype=np.uint8).copy()
        if transparency.min() == 255:
            transparency = None  # an alpha channel that hides nothing
    return DecodedImage(_oriented_to_rgb(oriented), transparency)


def load_image(path: str | Path, strict: bool = True) -> DecodedImage:
    """Read an image file with its own transparency, EXIF orientation applied.

    Args:
        path: a JPEG, PNG, WebP, BMP or TIFF file (the content decides the format, among these).
        strict: refuse other suffixes and formats; ``False`` reads anything Pillow reads.

    Raises:
        MoptError: the file is missing, empty, truncated, corrupt or of another format; the message names
            the file and the reason on one line.
    """
    path = Path(path)
    try:
        with _open_checked(path, strict) as image:
            image.load()
            return decoded_from_image(image)
    except MoptError as exc:
        raise _decode_error(path, exc) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Truncated and corrupt files fail here, in load(): Pillow reads lazily.
        raise _decode_error(path, exc) from exc


def oriented_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image after its EXIF orientation, from the header only (no pixel decoding).

    Raises:
        MoptError: the file cannot be identified as a supported image.
    """
    path = Path(path)
    try:
        with _open_checked(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except MoptError as exc:
        raise _decode_error(path, exc) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise _decode_error(path, exc) from exc
    return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)


def resize_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W x 3 uint8 image with a bilinear filter (antialiased when shrinking)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def resize_alpha(alpha: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W float32 matte bilinearly in float (no 8-bit rounding before the final one)."""
    if alpha.shape == (height, width):
        return np.asarray(alpha, dtype=np.float32)
    image = Image.fromarray(np.ascontiguousarray(alpha, dtype=np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)


def preprocess(images: Sequence[np.ndarray] | np.ndarray, spec: ModelCard | Normalization) -> np.ndarray:
    """N images of equal size, H x W x 3 uint8 RGB -> N x 3 x H x W float32 model input, as the card says."""
    batch = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise MoptError(f"expected N x H x W x 3 RGB images, got shape {batch.shape}")
    return input_card(spec).preprocess(batch)


def inputs_from_folder(
    folder: str | Path, normalization: ModelCard | Normalization, height: int, width: int, limit: int | None = None
) -> np.ndarray:
    """The first ``limit`` images of a folder resized to ``height x width`` and preprocessed: N x 3 x H x W."""
    paths = list_images(folder)[:limit]
    return preprocess([resize_rgb(load_rgb(p), height, width) for p in paths], normalization)


def synthetic_inputs(
    count: int, height: int, width: int, normalization: ModelCard | Normalization, seed: int = 0
) -> np.ndarray:
    """Deterministic model inputs from the built-in synthetic composites (disjoint from the training seeds)."""
    from optimize.synthetic import synthetic_sample

    images = [synthetic_sample(i, height, width, seed=seed + 7919)[0] for i in range(count)]
    return preprocess(images, normalization)


# --- input expansion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInput:
    """One input file and where its output goes.

    Attributes:
        path: the file to read.
        relative: its path relative to the root the user named (the folder, or a glob's fixed prefix);
            the output keeps it under the output folder, with the output suffix.
    """

    path: Path
    relative: Path


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _walk(folder: Path, exclude: Path | None) -> Iterable[Path]:
    """Files under ``folder`` that look like images, skipping hidden entries and the ``exclude`` subtree."""
    wanted = IMAGE_SUFFIXES + UNSUPPORTED_IMAGE_SUFFIXES
    for root, dirs, files in os.walk(folder, followlinks=False):
        root_path = Path(root)
        # Hidden folders and files (.git, .DS_Store, macOS "._x.jpg" forks, mopt's own temporary outputs) are
        # never images a user meant to process; the output folder must not feed the next run its own results.
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (exclude is None or (root_path / d).resolve() != exclude)
        )
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in wanted:
                yield root_path / name


def _glob_root(pattern: str) -> Path:
    """The leading part of a glob pattern without wildcards: matches keep their path relative to it."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_MAGIC.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def expand_image_inputs(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> list[ImageInput]:
    """Files, folders (recursive) and glob patterns -> the images to process, each with its relative path.

    A folder ``photos`` holding ``a/b/x.jpg`` gives relative path ``a/b/x.jpg``; a pattern
    ``photos/**/*.jpg`` gives paths relative to ``photos``; files named one by one give paths relative to
    their closest common folder (a single file gives its name), so a pattern the shell expanded gives the
    same paths as the quoted pattern. Folder walks and pattern matches keep files whose suffix is an image
    format (supported or not, so unsupported ones get reported), skip hidden entries, and skip ``exclude``
    (the output folder). A file named explicitly is kept whatever its suffix. A file reached twice is listed
    once, where first reached.

    Raises:
        MoptError: an input does not exist, a pattern matches nothing, or nothing at all was found.
    """
    if not inputs:
        raise MoptError("no input given; name image files, folders or glob patterns (e.g. 'photos/**/*.jpg')")
    exclude_path = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, Path | None]] = []  # (path, relative); None: a named file, placed below
    seen: set[Path] = set()

    def add(path: Path, relative: Path | None) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append((path, relative))

    wanted = IMAGE_SUFFIXES + UNSUPPORTED_IMAGE_SUFFIXES
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            for file in _walk(path, exclude_path):
                add(file, file.relative_to(path))
        elif path.is_file():
            add(path, None)
        elif _GLOB_MAGIC.search(text):
            root = _glob_root(text)
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True)) if Path(m).is_file()]
            matches = [
                m
                for m in matches
                if m.suffix.lower() in wanted
                and not any(part.startswith(".") for part in m.relative_to(root).parts)
                and not (exclude_path is not None and _is_within(m.resolve(), exclude_path))
            ]
            if not matches:
                raise MoptError(
                    f"pattern {text!r} matches no image file; check the pattern (quote it so the shell leaves it)"
                )
            for match in matches:
                add(match, match.relative_to(root))
        else:
            raise MoptError(f"input {text} does not exist; give image files, folders or glob patterns")
    if not found:
        raise MoptError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    named = [Path(os.path.abspath(path)) for path, relative in found if relative is None]
    common = Path(os.path.commonpath([p.parent for p in named])) if named else Path()
    return [ImageInput(path, relative or Path(os.path.abspath(path)).relative_to(common)) for path, relative in found]


def output_paths(images: Sequence[ImageInput], outdir: str | Path, suffix: str = OUTPUT_SUFFIX) -> list[Path]:
    """The output file of every input: ``outdir / relative`` with ``suffix``, never an input file.

    Inputs whose outputs would clash (``x.jpg`` and ``x.png`` in one folder) keep their own suffix in the
    output name (``x.jpg.png``, ``x.png.png``), so neither overwrites the other.

    Raises:
        MoptError: two inputs still map to one output (same relative path under two roots), or an output
            would be an input file.
    """
    outdir = Path(outdir)
    plain = [outdir / image.relative.with_suffix(suffix) for image in images]
    counts: dict[Path, int] = {}
    for path in plain:
        counts[path] = counts.get(path, 0) + 1
    outputs = [
        outdir / image.relative.parent / (image.relative.name + suffix) if counts[path] > 1 else path
        for image, path in zip(images, plain, strict=True)
    ]
    owner: dict[Path, Path] = {}
    for image, path in zip(images, outputs, strict=True):
        key = path.resolve()
        if key in owner:
            raise MoptError(
                f"{owner[key]} and {image.path} would both be written to {path}; "
                "matte them into separate output folders"
            )
        owner[key] = image.path
    inputs = {image.path.resolve(): image.path for image in images}
    for path in outputs:
        if path.resolve() in inputs:
            raise MoptError(
                f"output {path} would overwrite the input {inputs[path.resolve()]}; choose another output folder"
            )
    return outputs


# --- output writing --------------------------------------------------------------------------------


def parse_color(text: str) -> tuple[int, int, int]:
    """``"#RRGGBB"``, ``"#RGB"``, ``"RRGGBB"`` or a CSS colour name (``"white"``) -> ``(r, g, b)``.

    Raises:
        MoptError: the text is not a colour.
    """
    value = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{6}|[0-9a-fA-F]{3}", value):
        value = "#" + value
    try:
        rgb = ImageColor.getrgb(value)
    except ValueError as exc:
        raise MoptError(
            f"background {text!r} is not a colour; use #RRGGBB (e.g. '#FFFFFF'), #RGB or a name such as 'white'"
        ) from exc
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """Float matte in [0, 1] -> uint8 0..255, rounded to nearest (NaN -> 0)."""
    return np.clip(np.nan_to_num(alpha) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def matte_pixels(
    image: DecodedImage,
    alpha: np.ndarray,
    output: str = "rgba",
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """The output pixels for one input: H x W x 4 (``rgba``), H x W (``alpha``) or H x W x 3 (``composite``) uint8.

    Args:
        image: the decoded input at full resolution.
        alpha: H x W matte at the same size, float in [0, 1] or uint8.
        output: ``rgba`` (the input with the matte as its alpha channel), ``alpha`` (the 8-bit matte) or
            ``composite`` (the input over a solid ``background``).
        background: RGB of the composite's background.

    The input's own transparency, when it has one, multiplies the matte: what was transparent stays so. In
    ``rgba``, fully transparent pixels are stored as (0, 0, 0, 0): nothing of the removed background is left
    in the file, and the PNG is several times smaller and faster to encode than with the colours kept.
    """
    if output not in OUTPUT_KINDS:
        raise MoptError(f"output kind {output!r} is unknown; choose from: {', '.join(OUTPUT_KINDS)}")
    if alpha.shape != image.size:
        raise MoptError(f"matte is {alpha.shape[0]}x{alpha.shape[1]} but the image is {image.size[0]}x{image.size[1]}")
    alpha8 = alpha if alpha.dtype == np.uint8 else alpha_to_uint8(alpha)
    if image.transparency is not None:
        alpha8 = ((alpha8.astype(np.uint16) * image.transparency + 127) // 255).astype(np.uint8)
    if output == "alpha":
        return alpha8
    if output == "rgba":
        rgba = np.empty((*image.size, 4), dtype=np.uint8)
        rgba[..., :3] = image.rgb
        rgba[..., 3] = alpha8
        # Zero whole transparent pixels through a 32-bit view: one multiply per pixel instead of four.
        rgba.view(np.uint32).reshape(image.size)[...] *= alpha8 != 0
        return rgba
    # Integer blending: rgb * a + bg * (1 - a) with a = alpha8 / 255, rounded.
    a = alpha8.astype(np.uint32)[..., None]
    bg = np.asarray(background, dtype=np.uint32).reshape(1, 1, 3)
    return ((image.rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def matte_image(
    image: DecodedImage,
    alpha: np.ndarray,
    output: str = "rgba",
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """:func:`matte_pixels` as a PIL image (mode RGBA, L or RGB)."""
    pixels = matte_pixels(image, alpha, output, background)
    return Image.fromarray(pixels, mode=OUTPUT_MODES[output])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(pixels: np.ndarray, compression: str = DEFAULT_PNG_COMPRESSION) -> bytes:
    """8-bit grey (H x W), RGB or RGBA (H x W x 3|4) pixels -> the bytes of a PNG file.

    Every row uses PNG's "Up" filter (the difference to the row above), which compresses photos and mattes
    about as well as Pillow's per-row adaptive choice. Filtering runs in NumPy and deflate in zlib, both of
    which release the GIL, so worker threads encode in parallel; Pillow's PNG encoder holds the GIL while it
    compresses, which leaves one core encoding however many threads there are.

    Args:
        pixels: uint8 array.
        compression: ``fast``, ``default`` or ``small`` (see :data:`PNG_COMPRESSION`).
    """
    level = png_level(compression)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise MoptError(f"PNG pixels must be uint8 H x W, H x W x 3 or H x W x 4, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else {3: 2, 4: 6}[pixels.shape[2]]  # grey, RGB, RGBA
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    scanlines = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)  # filter-type byte + filtered row
    scanlines[:, 0] = 2  # "Up"
    scanlines[0, 1:] = rows[0]  # the row above the first one counts as zeros
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 9)
    data = deflate.compress(scanlines) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def png_level(compression: str) -> int:
    """The zlib level of a PNG compression preset (see :data:`PNG_COMPRESSION`)."""
    if compression not in PNG_COMPRESSION:
        raise MoptError(f"PNG compression {compression!r} is unknown; choose from: {', '.join(PNG_COMPRESSION)}")
    return PNG_COMPRESSION[compression]


def save_png(picture: Image.Image | np.ndarray, path: str | Path, compression: str = DEFAULT_PNG_COMPRESSION) -> Path:
    """Write ``picture`` as PNG atomically: the final name holds a complete file or nothing.

    Args:
        picture: a PIL image (L, RGB or RGBA) or its uint8 pixels.
        path: destination (its folder is created).
        compression: ``fast``, ``default`` or ``small`` (see :data:`PNG_COMPRESSION`).
    """
    if isinstance(picture, Image.Image):
        if picture.mode not in ("L", "RGB", "RGBA"):
            raise MoptError(f"PNG output must be L, RGB or RGBA, got a {picture.mode} image")
        picture = np.asarray(picture)
    data = encode_png(picture, compression)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# The last 12 bytes of every PNG mopt writes. Pillow decodes a file whose final bytes (the deflate checksum,
# the chunk CRCs, IEND) are missing without complaint, so a truncated output is only seen at its end.
PNG_END = _png_chunk(b"IEND", b"")


def output_status(path: str | Path, size: tuple[int, int], output: str) -> str:
    """What an existing output is worth to a re-run: ``complete``, ``missing``, ``truncated`` or ``different``.

    ``complete``: a PNG of ``size`` (height, width) and of the pixel mode ``output`` writes, that ends with its
    IEND chunk and decodes to the end. ``truncated``: a file that is cut short or does not decode (a copy or
    a crash outside mopt, a full disk); ``different``: a whole image of another size or kind. Decoding costs
    about 10 ms per 1024 x 1024 RGBA output on a free core (docs/testing.md), little beside writing it again.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            f.seek(-len(PNG_END), os.SEEK_END)  # OSError for a file shorter than that: truncated, below
            ends_whole = f.read() == PNG_END
        with Image.open(path, formats=("PNG",)) as picture:
            if picture.size != (size[1], size[0]) or picture.mode != OUTPUT_MODES[output]:
                return "different"
            if not ends_whole:
                return "truncated"
            picture.load()  # every pixel: a corrupt or cut IDAT fails here
    except FileNotFoundError:
        return "missing"
    except Exception:  # whatever stops the file from decoding (truncated, corrupt, not a PNG): write it again
        return "truncated"
    return "complete"


def is_complete_output(path: str | Path, size: tuple[int, int], output: str) -> bool:
    """Whether ``path`` is a whole PNG of ``size`` (height, width) and of the pixel mode ``output`` writes."""
    return output_status(path, size, output) == "complete"
