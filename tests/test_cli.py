"""The user-facing contract of the `mopt` command: bad input -> one stderr line, exit 1, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

MOPT = [sys.executable, "-m", "optimize.cli.main"]


def run_mopt(*args, cwd):
    return subprocess.run([*MOPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mopt: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def work(tmp_path):
    return tmp_path


def test_help_lists_commands(work):
    result = run_mopt("--help", cwd=work)
    assert result.returncode == 0
    for command in ("info", "export", "simplify", "compare", "bench", "train", "pipeline"):
        assert command in result.stdout


def test_export_missing_checkpoint(work):
    assert_one_line_error(run_mopt("export", "nope.pth", cwd=work), "nope.pth", "does not exist")
    assert not (work / "engines").exists()


def test_export_truncated_checkpoint(work, tiny_checkpoint):
    cut = work / "cut.pth"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    assert_one_line_error(run_mopt("export", cut, cwd=work), "cut.pth")
    assert not (work / "engines").exists()


def test_export_text_file_and_wrong_arch(work, tiny_checkpoint):
    text = work / "readme.pth"
    text.write_text("not a model")
    assert_one_line_error(run_mopt("export", text, cwd=work), "readme.pth")
    assert_one_line_error(run_mopt("export", tiny_checkpoint, "--arch", "unet-classic", cwd=work), "cvunet-tiny")


def test_export_then_simplify_with_defaults(work, tiny_checkpoint):
    assert run_mopt("export", tiny_checkpoint, cwd=work).returncode == 0
    assert (work / "engines" / "tiny.onnx").is_file()
    result = run_mopt("simplify", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "engines" / "tiny.sim.onnx").is_file()
    assert "nodes" in result.stdout


def test_simplify_with_nothing_exported(work):
    assert_one_line_error(run_mopt("simplify", cwd=work), "mopt export")


def test_bad_sizes_and_lists(work, tiny_checkpoint):
    assert_one_line_error(run_mopt("info", tiny_checkpoint, "--size", "512by512", cwd=work), "512by512")
    assert_one_line_error(run_mopt("bench", "-c", tiny_checkpoint, "--batch", "0,x", cwd=work), "--batch")
    assert_one_line_error(run_mopt("info", "--arch", "resnet", cwd=work), "resnet", "cvunet-mbv3-large")


def test_info_prints_params_gflops_channels(work, tiny_checkpoint):
    result = run_mopt("info", tiny_checkpoint, "--size", "97x65", cwd=work)
    assert result.returncode == 0
    assert "parameters" in result.stdout and "GFLOPs at 97x65" in result.stdout and "/32:" in result.stdout


def test_compare_bad_images_folder(work, tiny_checkpoint, tiny_onnx):
    empty = work / "empty"
    empty.mkdir()
    result = run_mopt(
        "compare", "-c", tiny_checkpoint, "--onnx", tiny_onnx, "--images", empty, "--json", work / "c.json", cwd=work
    )
    assert_one_line_error(result, "no images")
    assert not (work / "c.json").exists()


def test_main_module_entry_point_matches_console_script():
    assert Path(sys.executable).parent.joinpath("mopt").exists()


def test_bench_named_path_or_backend_that_cannot_run_is_an_error(work, tiny_checkpoint):
    missing = run_mopt("bench", "--onnx", "nonexist.onnx", "--backend", "onnxruntime", cwd=work)
    assert_one_line_error(missing, "nonexist.onnx", "does not exist")
    assert_one_line_error(run_mopt("bench", "-c", work / "nope.pth", cwd=work), "nope.pth", "does not exist")
    # No engine and (here) no GPU: the named backend is refused with its reason, before any measurement.
    assert_one_line_error(run_mopt("bench", "-c", tiny_checkpoint, "--backend", "tensorrt", cwd=work), "tensorrt")


def _photos(folder, count=3):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_quantize_verifies_on_the_calibration_images_at_the_deployment_size(work, tiny_simplified_onnx):
    import json

    from optimize.onnx_model import read_metadata

    photos = _photos(work / "photos")
    out = work / "q.int8.onnx"
    result = run_mopt("quantize", tiny_simplified_onnx, "--int8", "--calib", photos, "--calib-size", "64x64",
                      "--count", "2", "-o", out, cwd=work)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert f"INT8 vs FP32 (ONNX Runtime CPU, 2 {photos}, 512x512)" in text, text  # not 4 synthetic at 256x256
    recorded = json.loads(read_metadata(out)["mopt.verification"])
    assert recorded["images"] == str(photos) and recorded["size"] == "512x512" and recorded["count"] == 2
    assert "onnxruntime-cpu" in recorded["checks"]


def test_convert_precision_refuses_to_overwrite_a_model_made_with_other_settings(work, tiny_onnx, tiny_simplified_onnx):
    out = work / "m.fp16.onnx"
    args = ("--fp16", "--size", "64x64", "--count", "1", "-o", out)
    first = run_mopt("convert-precision", tiny_onnx, *args, cwd=work)
    assert first.returncode == 0, first.stderr
    assert "1 synthetic composites, 64x64" in " ".join(first.stdout.split())
    before = out.read_bytes()
    assert run_mopt("convert-precision", tiny_onnx, *args, cwd=work).returncode == 0  # same settings: rewritten
    other = run_mopt("convert-precision", tiny_simplified_onnx, *args, cwd=work)
    assert_one_line_error(other, "m.fp16.onnx exists and was made with other settings", "mopt.source_onnx_sha256",
                          "--force")
    assert out.read_bytes() == before
    forced = run_mopt("convert-precision", tiny_simplified_onnx, *args, "--force", cwd=work)
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes() != before


def test_compare_with_a_missing_images_folder(work, tiny_checkpoint, tiny_onnx):
    result = run_mopt(
        "compare", "-c", tiny_checkpoint, "--onnx", tiny_onnx, "--images", work / "photos", "--json", work / "c.json",
        cwd=work,
    )  # fmt: skip
    assert_one_line_error(result, "image folder", "photos", "does not exist")
    assert sorted(work.iterdir()) == []


def test_quantize_with_a_missing_calibration_folder(work, tiny_onnx):
    output = work / "model.int8.onnx"
    result = run_mopt("quantize", tiny_onnx, "--int8", "--calib", work / "calib", "-o", output, cwd=work)
    assert_one_line_error(result, "calib", "does not exist")
    assert sorted(work.iterdir()) == []


def test_the_console_script_is_the_module_entry_point():
    """`mopt` (what the Makefile and users run) and `python -m optimize.cli.main` (what these tests run) are one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"mopt": "optimize.cli.main:main"}
