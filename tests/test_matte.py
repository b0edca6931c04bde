"""``mopt matte``: outputs for every input kind, failures reported, resume, interruption, backend choice."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_images import _pattern, bilinear_upscale, nearest_upscale, write_mixed_folder
from typer.testing import CliRunner

from optimize import backends
from optimize.backends import BackendSpec, InferenceBackend, ModelSources, OnnxRuntimeBackend, TorchBackend
from optimize.checkpoint import IMAGENET, load_checkpoint
from optimize.cli import matte as matte_cli
from optimize.compare import PRECISION_TOLERANCES
from optimize.errors import MoptError
from optimize.images import load_image, load_rgb, preprocess, resize_alpha, resize_rgb
from optimize.matte import (
    BackendChoice,
    ShapeLimits,
    inference_size,
    mattes_from_images,
    select_backend,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
MOPT = [sys.executable, "-m", "optimize.cli.main"]


class HalfBackend(InferenceBackend):
    """Alpha 0 on the left half of the inference input, 1 on the right; records every input shape."""

    name = "half"

    def __init__(
        self, fail_on_call: int | None = None, interrupt_on_call: int | None = None, outdir: Path | None = None
    ) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.fail_on_call, self.interrupt_on_call, self.outdir = fail_on_call, interrupt_on_call, outdir

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        if len(self.shapes) == self.interrupt_on_call:
            # Ctrl-C once earlier batches are being written, as in a real run (encodes lag inference).
            deadline = time.monotonic() + 120
            while not list(self.outdir.rglob("*.png")) and time.monotonic() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt
        if len(self.shapes) == self.fail_on_call:
            raise RuntimeError("device lost")
        n, _, h, w = batch.shape
        alpha = np.zeros((n, 1, h, w), np.float32)
        alpha[..., w // 2 :] = 1.0
        return alpha


def tree_digest(folder: Path) -> dict[str, str]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(folder: Path) -> list[Path]:
    """Temporary files: what an interrupted write would leave behind."""
    return [p for p in folder.rglob("*") if p.is_file() and ".tmp" in p.name]


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "photos"
    good, broken = write_mixed_folder(root)
    return root, good, broken


def png_of(outdir: Path, rel: str) -> Path:
    return outdir / Path(rel).with_suffix(".png")


# --- inference size and backend choice -------------------------------------------------------------


def test_inference_size():
    assert inference_size(1024, 1024, 320) == (320, 320)
    assert inference_size(3024, 4032, 1024) == (768, 1024)  # aspect kept, longest side bounded
    assert inference_size(37, 53, 1024) == (32, 64)  # small images are not scaled up, only snapped to 32
    assert inference_size(5000, 20, 1000) == (992, 32)  # never above max_side, never below one step
    assert inference_size(100, 300, 1024, min_side=256) == (256, 768)  # a profile's minimum scales up
    with pytest.raises(MoptError, match="too small"):
        inference_size(64, 64, 16)


def test_backend_choice_fits_an_engine_profile():
    choice = BackendChoice("tensorrt", HalfBackend(), IMAGENET, limits=ShapeLimits(256, 768, 8))
    assert choice.fit(16, 1024) == (8, 768, 256)
    assert BackendChoice("onnxruntime", HalfBackend(), IMAGENET).fit(16, 1024) == (16, 1024, 32)


def test_select_backend_prefers_onnxruntime_and_explains(tiny_checkpoint, tiny_onnx):
    choice = select_backend(ModelSources(checkpoint=tiny_checkpoint, onnx=[tiny_onnx], threads=1))
    with choice.backend:
        assert choice.name == "onnxruntime" and choice.backend.device == "cpu"
        assert "tensorrt" in choice.skipped and "onnxruntime-cuda" in choice.skipped
        assert "onnxruntime-cpu-fp32" in choice.describe()
    only_checkpoint = select_backend(ModelSources(checkpoint=tiny_checkpoint))
    assert only_checkpoint.name == "torch" and "onnxruntime" in only_checkpoint.skipped
    with pytest.raises(MoptError, match="no backend can run"):
        select_backend(ModelSources())


def test_require_gpu_refuses_the_cpu(tiny_checkpoint, tiny_onnx):
    with pytest.raises(MoptError, match="--require-gpu") as info:
        select_backend(ModelSources(checkpoint=tiny_checkpoint, onnx=[tiny_onnx]), require_gpu=True)
    assert "tensorrt" in str(info.value) and "onnxruntime-cuda" in str(info.value)


def _gpu_double(device: str, error: str | None = None) -> BackendSpec:
    def create(sources):
        if error:
            raise MoptError(error)
        backend = HalfBackend()
        backend.device = device
        yield backend

    return BackendSpec("tensorrt", "test double", create, lambda s: None)


def test_select_backend_takes_the_first_that_starts(monkeypatch, tiny_onnx):
    backend_names = backends.backend_names  # loads the GPU module before the registry is patched
    assert "tensorrt" in backend_names()
    monkeypatch.setitem(backends._BACKENDS, "tensorrt", _gpu_double("cuda:0 test GPU"))
    gpu = select_backend(ModelSources(onnx=[tiny_onnx]), require_gpu=True)
    assert gpu.name == "tensorrt" and gpu.backend.device == "cuda:0 test GPU"
    monkeypatch.setitem(backends._BACKENDS, "tensorrt", _gpu_double("cuda:0", error="engine built for another GPU"))
    fallback = select_backend(ModelSources(onnx=[tiny_onnx]))
    assert fallback.name == "onnxruntime" and fallback.skipped["tensorrt"] == "engine built for another GPU"
    monkeypatch.setitem(backends._BACKENDS, "tensorrt", _gpu_double("cpu"))
    with pytest.raises(MoptError, match="--require-gpu"):
        select_backend(ModelSources(onnx=[tiny_onnx]), require_gpu=True)


# --- the run ---------------------------------------------------------------------------------------


def test_every_good_file_gets_a_full_size_output_and_broken_ones_are_reported(mixed, tiny_onnx, tmp_path):
    root, good, broken = mixed
    before = tree_digest(root)
    out = tmp_path / "out"
    with OnnxRuntimeBackend(tiny_onnx, threads=1) as backend:
        report = mattes_from_images([root], out, backend=backend, normalization=IMAGENET, batch=3, max_side=64)
    assert report.processed == len(good) and report.skipped == 0
    for rel, (height, width) in good.items():
        with Image.open(png_of(out, rel)) as picture:
            assert picture.size == (width, height) and picture.mode == "RGBA", rel
    failed = {str(Path(f.path).relative_to(root)): f.reason for f in report.failed}
    assert set(failed) == set(broken)
    for rel, word in broken.items():
        assert word in failed[rel] and "\n" not in failed[rel], failed[rel]
    assert not any(png_of(out, rel).exists() for rel in broken)
    assert tree_digest(root) == before  # inputs untouched
    assert leftovers(out) == []
    assert report.images_per_s > 0 and 0 < report.p50_ms <= report.p99_ms
    assert sum(report.buckets.values()) == len(good)


def test_outputs_match_the_pytorch_reference(mixed, tiny_checkpoint, tiny_onnx, tmp_path):
    """The written matte is the FP32 reference's, up to ONNX Runtime's FP32 tolerance and 8-bit rounding."""
    root, good, _ = mixed
    out = tmp_path / "out"
    with OnnxRuntimeBackend(tiny_onnx, threads=1) as backend:
        mattes_from_images([root], out, backend=backend, normalization=IMAGENET, output="alpha", max_side=48)
    reference = TorchBackend(load_checkpoint(tiny_checkpoint).model)
    onnx_backend = OnnxRuntimeBackend(tiny_onnx, threads=1)
    atol = PRECISION_TOLERANCES["fp32"].atol
    for rel in good:
        rgb = load_rgb(root / rel)
        x = preprocess([resize_rgb(rgb, *inference_size(*rgb.shape[:2], 48))], IMAGENET)
        expected_small = reference.infer(x)[0, 0]
        assert np.abs(onnx_backend.infer(x)[0, 0] - expected_small).max() <= atol, rel
        expected = resize_alpha(expected_small, *rgb.shape[:2])
        own = load_image(root / rel).transparency
        transparency = np.ones(rgb.shape[:2], np.float32) if own is None else own / np.float32(255.0)
        written = np.asarray(Image.open(png_of(out, rel)), np.float32) / 255.0
        # Bilinear resizing is linear, so the fp32 tolerance carries over; 8-bit rounding adds half a step, and
        # the input's own transparency multiplies the matte (a second rounding).
        assert np.abs(written - expected * transparency).max() <= atol + 1.0 / 255.0, rel


def test_batch_composition_does_not_change_mattes(mixed, tiny_onnx, tmp_path):
    root, good, _ = mixed
    with OnnxRuntimeBackend(tiny_onnx, threads=1) as backend:
        for batch in (1, 4):
            mattes_from_images([root], tmp_path / f"b{batch}", backend=backend, normalization=IMAGENET, batch=batch)
    for rel in good:
        one = np.asarray(Image.open(png_of(tmp_path / "b1", rel)), np.int16)
        four = np.asarray(Image.open(png_of(tmp_path / "b4", rel)), np.int16)
        assert np.abs(one - four).max() <= 1, rel


def test_large_images_are_inferred_at_bounded_size_and_mattes_are_full_size(tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.tile(_pattern(30, 20, 0), (20, 30, 1))).save(tmp_path / "in" / "big.png")  # 600 x 600
    Image.fromarray(_pattern(150, 900, 1)).save(tmp_path / "in" / "wide.jpg")
    backend = HalfBackend()
    report = mattes_from_images([tmp_path / "in"], tmp_path / "out", backend=backend, normalization=IMAGENET,
                                output="composite", background=(0, 0, 255), max_side=128)  # fmt: skip
    assert sorted(backend.shapes) == [(1, 3, 32, 128), (1, 3, 128, 128)]
    assert report.buckets == {"128x128": 1, "32x128": 1}
    wide = np.asarray(Image.open(tmp_path / "out" / "wide.png")).astype(int)
    assert wide.shape == (150, 900, 3)
    np.testing.assert_array_equal(wide[:, :400], np.broadcast_to((0, 0, 255), (150, 400, 3)))  # alpha 0 -> background
    original = load_rgb(tmp_path / "in" / "wide.jpg")
    np.testing.assert_array_equal(wide[:, 500:], original[:, 500:])  # alpha 1 -> the image at full resolution


class WaveBackend(InferenceBackend):
    """A known smooth matte at the inference size, steep enough (~0.2 per pixel) to show how it is resized."""

    name = "wave"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        wave = 0.5 + 0.45 * np.sin(xx / 2.0) * np.cos(yy / 3.0)
        return np.broadcast_to(wave, (n, 1, h, w)).copy()


def test_the_matte_is_resized_back_bilinearly(tmp_path):
    """The written matte is the inference-size matte upscaled by a bilinear filter computed without mopt's code."""
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(150, 200, 0)).save(tmp_path / "in" / "x.png")  # inferred at 96x128 (max side 128)
    backend = WaveBackend()
    mattes_from_images([tmp_path / "in"], tmp_path / "out", backend=backend, normalization=IMAGENET,
                       output="alpha", max_side=128)  # fmt: skip
    small = backend.infer(np.zeros((1, 3, 96, 128), np.float32))[0, 0]
    written = np.asarray(Image.open(tmp_path / "out" / "x.png"), np.float64)
    assert written.shape == (150, 200)
    expected = np.clip(bilinear_upscale(small, 150, 200) * 255, 0, 255)
    assert np.abs(written - expected).max() <= 0.5 + 1e-3  # 8-bit rounding only
    nearest = np.clip(nearest_upscale(small, 150, 200) * 255, 0, 255)
    assert np.abs(written - nearest).max() > 10  # the check tells bilinear from nearest by far


def test_rerun_processes_nothing_new_and_redoes_incomplete_outputs(mixed, tiny_onnx, tmp_path):
    root, good, broken = mixed
    out = tmp_path / "out"
    with OnnxRuntimeBackend(tiny_onnx, threads=1) as backend:
        run = dict(backend=backend, normalization=IMAGENET, max_side=64)
        mattes_from_images([root], out, **run)
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
        again = mattes_from_images([root], out, **run)
        assert (again.processed, again.skipped, len(again.failed)) == (0, len(good), len(broken))
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
        assert again.redone == 0
        png_of(out, "odd.png").unlink()
        truncated = png_of(out, "a/plain.jpeg")
        whole = truncated.read_bytes()
        truncated.write_bytes(whole[:45])  # the header (size, mode) is readable, the pixels are not there
        resumed = mattes_from_images([root], out, **run)
        assert (resumed.processed, resumed.skipped, resumed.redone) == (2, len(good) - 2, 1)
        assert truncated.read_bytes() == whole  # written again, the same matte
        truncated.write_bytes(whole[:-1])  # cut by one byte: Pillow alone would still decode every pixel
        assert mattes_from_images([root], out, **run).redone == 1
        another_kind = mattes_from_images([root], out, **{**run, "output": "alpha"})
        assert another_kind.processed == len(good)  # an output of another kind is not complete
        forced = mattes_from_images([root], out, **{**run, "output": "alpha", "overwrite": True})
        assert (forced.processed, forced.skipped) == (len(good), 0)


def test_failures_while_inferring_or_writing_lose_only_their_files(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_pattern(40, 40, i)).save(tmp_path / "in" / f"{i}.png")
    Image.fromarray(_pattern(40, 40, 9)).save(tmp_path / "in" / "sub" / "x.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file where the output folder should be")
    report = mattes_from_images([tmp_path / "in"], tmp_path / "out", backend=HalfBackend(fail_on_call=2),
                                normalization=IMAGENET, batch=2)  # fmt: skip
    reasons = {Path(f.path).name: f.reason for f in report.failed}
    assert reasons["x.png"].startswith("cannot write")
    assert sorted(name for name, why in reasons.items() if why == "inference failed: device lost") == ["2.png", "3.png"]
    assert report.processed == 2 and sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png"]


def test_interruption_leaves_only_complete_outputs_and_resumes(mixed, tmp_path):
    root, good, _ = mixed
    out = tmp_path / "out"
    report_path = tmp_path / "report.json"
    interrupting = HalfBackend(interrupt_on_call=3, outdir=out)
    with pytest.raises(KeyboardInterrupt):
        mattes_from_images([root], out, backend=interrupting, normalization=IMAGENET, batch=2, report_path=report_path)
    assert leftovers(out) == []
    written = list(out.rglob("*.png"))
    assert 0 < len(written) < len(good)
    for path in written:
        with Image.open(path) as picture:
            picture.load()  # complete: decodes to the end
    partial = json.loads(report_path.read_text())
    assert partial["interrupted"] is True and partial["processed"] == len(written)
    resumed = mattes_from_images([root], out, backend=HalfBackend(), normalization=IMAGENET, batch=2)
    assert resumed.skipped == len(written) and resumed.processed == len(good) - len(written)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll an observable state of a child process (files it wrote); fail if it exits or never gets there."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.02)


# The third inference call blocks until a signal arrives, after leaving a marker: the test signals a run that
# has written the first two outputs and cannot have finished, however busy the machine is.
BLOCK_ON_THIRD_CALL = """
import threading
from pathlib import Path

def block_on_third_call(infer, marker):
    calls = []

    def blocking(self, batch):
        calls.append(batch.shape)
        if len(calls) == 3:
            Path(marker).write_text("blocked")
            threading.Event().wait()  # a signal handler raising KeyboardInterrupt ends the wait
        return infer(self, batch)

    return blocking
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def renamed_outputs(folder: Path) -> list[Path]:
    """Outputs under their final names (a temporary file being written starts with a dot)."""
    return [p for p in folder.glob("*.png") if not p.name.startswith(".")]


def _two_outputs_and_blocked(out: Path, marker: Path) -> Callable[[], bool]:
    return lambda: marker.exists() and len(renamed_outputs(out)) >= 2


@pytest.mark.slow
def test_ctrl_c_in_a_real_process_leaves_no_partial_files(tmp_path):
    """SIGINT to a running process: it stops, exits non-zero, every output on disk is complete."""
    (tmp_path / "in").mkdir()
    for i in range(8):
        Image.fromarray(_pattern(96, 96, i)).save(tmp_path / "in" / f"{i:02d}.png")
    out, marker = tmp_path / "out", tmp_path / "blocked"
    script = BLOCK_ON_THIRD_CALL + f"""
import numpy as np
from optimize.backends import InferenceBackend
from optimize.checkpoint import IMAGENET
from optimize.matte import mattes_from_images

class Grey(InferenceBackend):
    def infer(self, batch):
        return np.full((batch.shape[0], 1, *batch.shape[2:]), 0.5, np.float32)

Grey.infer = block_on_third_call(Grey.infer, {str(marker)!r})
mattes_from_images([{str(tmp_path / "in")!r}], {str(out)!r}, backend=Grey(), normalization=IMAGENET, batch=1,
                   compression="small")
"""
    # SIGINT back to its default in the child: a signal the test process ignores (an earlier test's Ray or Triton
    # may leave SIGINT ignored) stays ignored across exec, and Python then installs no KeyboardInterrupt handler.
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, preexec_fn=_default_sigint
    )
    try:
        wait_for(_two_outputs_and_blocked(out, marker), process, "two outputs written and the third call blocked")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=300)  # a hang guard, not a speed bound
    finally:
        process.kill()
    assert process.returncode != 0 and b"KeyboardInterrupt" in stderr
    written = renamed_outputs(out)
    assert len(written) == 2 and leftovers(out) == []
    for path in written:
        with Image.open(path) as picture:
            picture.load()


@pytest.mark.slow
def test_sigterm_during_mopt_matte_leaves_no_partial_file_and_resumes(tmp_path, tiny_onnx):
    """`mopt matte` itself (the CLI, ONNX Runtime) stopped by SIGTERM: exit 130, only complete outputs."""
    (tmp_path / "in").mkdir()
    for i in range(6):
        Image.fromarray(_pattern(64, 64, i)).save(tmp_path / "in" / f"{i}.png")
    out, marker = tmp_path / "out", tmp_path / "blocked"
    hooked = BLOCK_ON_THIRD_CALL + """
import sys
from optimize.backends import OnnxRuntimeBackend
from optimize.cli.main import main

OnnxRuntimeBackend.infer = block_on_third_call(OnnxRuntimeBackend.infer, sys.argv.pop(1))
main()
"""
    # --backend: the hook is on ONNX Runtime, so no probe may pick OpenVINO (or count the probe's calls).
    args = ["matte", str(tmp_path / "in"), "-o", str(out), "--onnx", str(tiny_onnx), "--batch", "1", "--threads", "1",
            "--backend", "onnxruntime"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", hooked, str(marker), *args], cwd=REPO, preexec_fn=_default_sigint,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(_two_outputs_and_blocked(out, marker), process, "two outputs written and the third call blocked")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)  # a hang guard, not a speed bound
    finally:
        process.kill()
    assert process.returncode == 130, (stdout, stderr)
    assert "run the same command again" in stdout and "Traceback" not in stderr
    written = renamed_outputs(out)
    assert len(written) == 2 and leftovers(out) == []
    for path in written:
        with Image.open(path) as picture:
            picture.load()
    resumed = subprocess.run([*MOPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 written, 2 already complete" in resumed.stdout
    assert len(renamed_outputs(out)) == 6 and leftovers(out) == []


# --- never overwriting inputs ----------------------------------------------------------------------


def test_output_folder_equal_to_the_input_folder_is_refused(mixed, tiny_onnx):
    root, _, _ = mixed
    before = tree_digest(root)
    with pytest.raises(MoptError, match="is the input folder"):
        mattes_from_images([root], root, backend=HalfBackend(), normalization=IMAGENET)
    result = runner.invoke(matte_cli.app, [str(root), "-o", str(root), "--onnx", str(tiny_onnx)])
    assert result.exit_code == 1 and "is the input folder" in str(result.exception)
    assert tree_digest(root) == before


def test_output_folder_inside_the_input_folder_is_not_reprocessed(mixed):
    root, good, broken = mixed
    out = root / "mattes"
    first = mattes_from_images([root], out, backend=HalfBackend(), normalization=IMAGENET)
    second = mattes_from_images([root], out, backend=HalfBackend(), normalization=IMAGENET)
    assert first.inputs == second.inputs == len(good) + len(broken)
    assert second.processed == 0


# --- the command -----------------------------------------------------------------------------------


def test_cli_reports_failures_with_exit_code_1_and_resumes(mixed, tiny_onnx, tmp_path):
    root, good, broken = mixed
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    args = [str(root), "-o", str(out), "--onnx", str(tiny_onnx), "--max-side", "64", "--threads", "1",
            "--report", str(report_path)]  # fmt: skip
    result = runner.invoke(matte_cli.app, args)
    assert result.exit_code == 1, result.output
    assert f"{len(broken)} failed" in result.output
    # On a CPU the faster of OpenVINO and ONNX Runtime at the --max-side square runs; the line says which and why.
    chosen = next(line for line in result.output.splitlines() if line.startswith("backend: "))
    assert "chosen by probe at 64x64: " in chosen and "OpenVINO" in chosen and "ONNX Runtime" in chosen
    report = json.loads(report_path.read_text())
    assert report["backend"] in ("onnxruntime-cpu-fp32", "openvino-cpu-fp32") and report["device"] == "cpu"
    assert report["backend"] in chosen
    assert report["processed"] == len(good) and report["skipped"] == 0
    assert {Path(f["path"]).relative_to(root).as_posix() for f in report["failed"]} == set(broken)
    assert all(f["reason"] for f in report["failed"])
    assert report["images_per_s"] > 0 and report["p50_ms"] > 0 and report["p99_ms"] >= report["p50_ms"]
    rerun = runner.invoke(matte_cli.app, args)
    assert rerun.exit_code == 1
    report = json.loads(report_path.read_text())
    assert (report["processed"], report["skipped"], report["redone"]) == (0, len(good), 0)
    assert "redone" not in rerun.output
    cut = png_of(out, "odd.png")
    cut.write_bytes(cut.read_bytes()[:45])
    redo = runner.invoke(matte_cli.app, args)
    assert "1 written (redone: 1 truncated outputs)" in redo.output, redo.output
    report = json.loads(report_path.read_text())
    assert (report["processed"], report["skipped"], report["redone"]) == (1, len(good) - 1, 1)


def test_cli_exit_code_0_when_nothing_fails_and_composite_background(tmp_path, tiny_onnx):
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(40, 30, 0)).save(tmp_path / "in" / "x.jpg")
    out = tmp_path / "out"
    base = [str(tmp_path / "in"), "-o", str(out), "--onnx", str(tiny_onnx)]
    result = runner.invoke(matte_cli.app, [*base, "--output", "composite", "--background", "#00FF00"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "x.png") as picture:
        assert picture.mode == "RGB" and picture.size == (30, 40)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--background", "#00FF00"], "only applies to --output composite"),
        (["--output", "composite", "--background", "greenish"], "#RRGGBB"),
        (["--require-gpu"], "--require-gpu"),
    ],
)
def test_cli_user_errors_are_one_line_and_write_nothing(tmp_path, tiny_onnx, extra, message):
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(40, 30, 0)).save(tmp_path / "in" / "x.jpg")
    out = tmp_path / "out"
    result = runner.invoke(matte_cli.app, [str(tmp_path / "in"), "-o", str(out), "--onnx", str(tiny_onnx), *extra])
    assert result.exit_code == 1 and isinstance(result.exception, MoptError)
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()


def test_output_folder_that_is_a_file_is_a_one_line_error(tmp_path, tiny_onnx):
    (tmp_path / "in").mkdir()
    Image.fromarray(_pattern(40, 30, 0)).save(tmp_path / "in" / "x.jpg")
    existing = tmp_path / "cutouts"
    existing.write_text("a file, not a folder")
    result = subprocess.run([*MOPT, "matte", str(tmp_path / "in"), "-o", str(existing), "--onnx", str(tiny_onnx)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"mopt: error: output folder {existing} is a file; choose a folder for -o"]
    assert existing.read_text() == "a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cutouts", "in"]


def test_cli_without_a_model_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(matte_cli, "DEFAULT_MATTE_CHECKPOINT", tmp_path / "missing.pth")
    os.makedirs("in")
    Image.fromarray(_pattern(40, 30, 0)).save("in/x.jpg")
    result = runner.invoke(matte_cli.app, ["in", "-o", "out"])
    assert result.exit_code == 1 and "pass --onnx" in str(result.exception)


def test_cli_backend_option_overrides_the_choice(tiny_onnx, tmp_path):
    Image.fromarray(_pattern(40, 30, 0)).save(tmp_path / "x.jpg")
    args = [str(tmp_path / "x.jpg"), "-o", str(tmp_path / "out"), "--onnx", str(tiny_onnx), "--max-side", "64",
            "--threads", "1", "--backend", "openvino"]  # fmt: skip
    result = runner.invoke(matte_cli.app, args)
    assert result.exit_code == 0, result.output
    assert "backend: openvino-cpu-fp32 (openvino) on cpu (--backend)" in result.output
    assert "chosen by probe" not in result.output
    unknown = runner.invoke(matte_cli.app, [*args[:-1], "fastest"])
    assert unknown.exit_code != 0 and "unknown backend 'fastest'" in str(unknown.exception or unknown.output)


def test_cli_default_is_the_named_bundled_model_not_a_leftover_in_engines(
    tmp_path, monkeypatch, tiny_onnx, tiny_checkpoint
):
    """A model `mopt export` left in engines/ must not silently replace the default: the default is named.

    The default is the bundled checkpoint exported to ONNX once (it runs on ONNX Runtime or OpenVINO, several
    times faster than PyTorch), and a newer leftover in engines/ is not it.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(matte_cli, "DEFAULT_MATTE_CHECKPOINT", tiny_checkpoint)
    os.makedirs("in")
    os.makedirs("engines")
    Image.fromarray(_pattern(40, 30, 0)).save("in/x.jpg")
    Path("engines/leftover.onnx").write_bytes(tiny_onnx.read_bytes())
    result = runner.invoke(matte_cli.app, ["in", "-o", "out", "--output", "alpha"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"model: engines/{tiny_checkpoint.stem}.onnx (") and "default: the bundled" in first
    assert "leftover" not in result.output and "torch-cpu" not in result.output.split("not used")[0]
    assert Path("out/x.png").is_file()
    again = runner.invoke(matte_cli.app, ["in", "-o", "out2", "--output", "alpha"])
    assert again.exit_code == 0 and sorted(p.name for p in Path("engines").iterdir()) == [
        "leftover.onnx", f"{tiny_checkpoint.stem}.onnx"
    ]  # exported once, not again


def test_cli_names_a_missing_model_file(tmp_path):
    (tmp_path / "in").mkdir()
    result = runner.invoke(matte_cli.app, [str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--onnx", "nope.onnx"])
    assert result.exit_code == 1 and "nope.onnx does not exist" in str(result.exception)


def test_cli_ctrl_c_exits_130_with_a_hint(tmp_path, tiny_onnx, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("optimize.matte.mattes_from_images", interrupted)
    (tmp_path / "in").mkdir()
    result = runner.invoke(matte_cli.app, [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--onnx", str(tiny_onnx)])
    assert result.exit_code == 130 and "run the same command again" in result.output


def test_the_probe_times_the_side_the_run_will_use(tiny_onnx):
    # A model trained at 256 px (its card's preferred side) runs at 256 by default: timing the runtimes at 1024
    # could pick the one that is faster only at a size the run never uses.
    import dataclasses

    from optimize.matte import probe_size_for
    from optimize.onnx_model import card_of_onnx

    card = dataclasses.replace(card_of_onnx(tiny_onnx), preferred_side=256)
    assert probe_size_for(None, card) == (256, 256)
    assert probe_size_for(512, card) == (512, 512)  # --max-side wins
    assert probe_size_for(None, dataclasses.replace(card, preferred_side=None)) == (1024, 1024)
    assert probe_size_for(None) == (1024, 1024)
