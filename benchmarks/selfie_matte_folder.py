"""``mopt matte`` images/s on a folder of real-photo-sized JPEGs, beside a plain LiteRT loop doing the same job.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/selfie_matte_folder.py --count 200 --threads 2 --json matte.json

The JPEGs (1280x853 .. 1600x1200, landscape and portrait) are made in a temporary folder from the bundled real
photos (``optimize.sample_photos``): each a different crop, flip and exposure of one of them, upscaled to its
size, so no two files are alike. Three runs write RGBA PNGs of every photo (a fresh output folder each):

- ``mopt matte DIR -o OUT``: the command as a user types it, no model named (the bundled selfie checkpoint,
  at the card's 256 px side), timed as a whole process, start-up included;
- ``mopt matte DIR -o OUT --onnx selfie.sim.onnx``: the same on the exported, simplified ONNX (the command
  times OpenVINO against ONNX Runtime and takes the faster);
- a LiteRT loop: what a MediaPipe user writes around the original ``.tflite`` (XNNPACK): for each file,
  decode, resize to 256x256, infer, upscale the mask to full size, write the PNG, one file after another. It
  decodes, resizes and encodes with mopt's own image functions (same decoder, PNG encoder and compression),
  so the two differ in the inference and in how the work is scheduled, not in the codecs.

The CLI's own report (``--report``) gives its images/s without the process start-up; both are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimize.bench import machine_info  # noqa: E402
from optimize.export import onnx_from_checkpoint  # noqa: E402
from optimize.images import load_image, matte_pixels, resize_alpha, resize_rgb, save_png  # noqa: E402
from optimize.sample_photos import sample_photo_paths  # noqa: E402
from optimize.simplify import simplified_onnx_from_onnx  # noqa: E402
from optimize.tflite_import import bundled_tflite  # noqa: E402

# Sizes of real camera and phone photos, width x height, landscape and portrait.
PHOTO_SIZES = ((1280, 853), (1600, 1200), (1440, 960), (1200, 1600), (853, 1280), (1600, 1067))


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct JPEGs in ``folder``: random crops (60-100 % of the side), flips and exposures of the
    bundled photos, resized to one of :data:`PHOTO_SIZES`."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sample_photo_paths()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = PHOTO_SIZES[index % len(PHOTO_SIZES)]
        # A crop of the target's aspect ratio, as large as fits times a random fraction, at a random place.
        scale = rng.uniform(0.6, 1.0) * min(source.width / width, source.height / height)
        crop_w, crop_h = max(1, int(width * scale)), max(1, int(height * scale))
        left = int(rng.integers(0, source.width - crop_w + 1))
        top = int(rng.integers(0, source.height - crop_h + 1))
        image = source.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2)
        path = folder / f"{index:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def run_cli(photos: Path, outdir: Path, report: Path, extra: list[str], threads: int) -> dict:
    """``mopt matte`` in its own process; wall seconds of the whole process and the images/s it reports."""
    command = [sys.executable, "-m", "optimize.cli.main", "matte", str(photos), "-o", str(outdir)]
    command += ["--report", str(report), "--threads", str(threads), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mopt matte failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    written = json.loads(report.read_text())
    images = len(list(outdir.rglob("*.png")))
    return {"command": " ".join(["mopt", *command[3:]]), "wall_s": wall, "images": images, "report": written}


def run_litert(photos: list[Path], outdir: Path, tflite: Path, threads: int) -> dict:
    """The plain loop: decode, resize to 256x256, infer in LiteRT (XNNPACK), upscale the mask, write RGBA PNG."""
    from ai_edge_litert.interpreter import Interpreter

    start = time.perf_counter()
    interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    outdir.mkdir(parents=True, exist_ok=True)
    infer_s = 0.0
    for path in photos:
        picture = load_image(path)
        nhwc = resize_rgb(picture.rgb, 256, 256)[None].astype(np.float32) / 255.0
        began = time.perf_counter()
        interpreter.set_tensor(source, nhwc)
        interpreter.invoke()
        mask = interpreter.get_tensor(target)[0, :, :, 0]
        infer_s += time.perf_counter() - began
        alpha = resize_alpha(np.clip(mask, 0.0, 1.0), *picture.size)
        save_png(matte_pixels(picture, alpha, "rgba"), outdir / f"{path.stem}.png", "fast")
    wall = time.perf_counter() - start
    return {"wall_s": wall, "images": len(list(outdir.glob("*.png"))), "infer_s": infer_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "selfie.pth")
    parser.add_argument("--workdir", type=Path, default=None, help="keep photos and outputs here [a temporary folder]")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    machine = machine_info(args.threads)
    load_start = os.getloadavg()
    print(json.dumps(machine))
    with tempfile.TemporaryDirectory(prefix="mopt-matte-folder-") as tmp:
        work = args.workdir or Path(tmp)
        photos = make_photos(work / "photos", args.count)
        megapixels = sum(Image.open(p).width * Image.open(p).height for p in photos) / len(photos) / 1e6
        onnx = simplified_onnx_from_onnx(onnx_from_checkpoint(args.checkpoint, work / "selfie.onnx").path).path
        runs = {
            "mopt matte (default model)": run_cli(
                work / "photos", work / "out-default", work / "default.json", [], args.threads
            ),
            "mopt matte --onnx": run_cli(
                work / "photos", work / "out-onnx", work / "onnx.json", ["--onnx", str(onnx)], args.threads
            ),
            "litert loop": run_litert(photos, work / "out-litert", bundled_tflite("mediapipe-selfie"), args.threads),
        }
    load_end = os.getloadavg()
    print(
        f"\n{args.count} JPEGs, {megapixels:.2f} MP on average; {args.threads} threads; load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end\n"
    )
    print("| run | backend | images | wall s | images/s (whole process) | images/s (mopt's report) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        report = run.get("report", {})
        backend = report.get("backend", "LiteRT XNNPACK")
        reported = report.get("images_per_s")
        cells = [
            name,
            str(backend),
            str(run["images"]),
            f"{run['wall_s']:.1f}",
            f"{run['images'] / run['wall_s']:.2f}",
            f"{reported:.2f}" if isinstance(reported, float) else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "load_average": {"start": list(load_start), "end": list(load_end)},
                    "count": args.count,
                    "megapixels": megapixels,
                    "runs": runs,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
