"""Every command says first which model file(s) it runs, and defaults never pair a checkpoint with another's ONNX.

Before: `mopt matte` printed only its backend, `mopt compare` paired the bundled checkpoint with whatever ONNX
was newest in engines/ (another model's: a numeric FAIL), and bench JSON and the matte report did not say which
file they measured.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from architectures import create_model
from optimize.artifacts import default_fp32_onnx, default_onnx_models
from optimize.checkpoint import save_checkpoint
from optimize.cli.main import app
from optimize.errors import MoptError
from optimize.export import onnx_from_checkpoint
from optimize.fileio import file_sha256
from optimize.identity import SHA_PREFIX, model_identity


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def first_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.strip())


def model_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("model: ")]


@pytest.fixture
def two_models(in_tmp: Path, tiny_checkpoint: Path) -> dict[str, Path]:
    """engines/ holding the export of the tiny checkpoint and, newer, the export of another checkpoint."""
    engines = Path("engines")  # relative, as a user types them: the commands print them as given
    engines.mkdir()
    mine = Path(shutil.copy(tiny_checkpoint, "mine.pth"))
    onnx_from_checkpoint(mine, engines / "mine.onnx")
    torch.manual_seed(1)
    other = save_checkpoint(create_model("cvunet-tiny"), Path("other.pth"))
    onnx_from_checkpoint(other, engines / "other.onnx")
    older = os.stat(engines / "mine.onnx").st_mtime - 10
    os.utime(engines / "mine.onnx", (older, older))  # whatever the clock's resolution: other.onnx is the newest
    return {"mine": mine, "other": other, "mine_onnx": engines / "mine.onnx", "other_onnx": engines / "other.onnx"}


def test_identity_names_path_hash_arch_precision(tiny_checkpoint: Path, tiny_onnx: Path):
    ckpt = model_identity(tiny_checkpoint)
    assert (ckpt.arch, ckpt.precision, ckpt.sha256) == ("cvunet-tiny", "fp32", file_sha256(tiny_checkpoint))
    onnx = model_identity(tiny_onnx, origin="default: somewhere")
    text = onnx.describe()
    assert str(tiny_onnx) in text and onnx.sha256[:SHA_PREFIX] in text and "default: somewhere" in text
    assert onnx.to_dict()["sha256"] == file_sha256(tiny_onnx)


def test_default_onnx_is_the_export_of_the_paired_checkpoint(two_models: dict[str, Path]):
    newest, why = default_fp32_onnx(Path("engines"))
    assert newest.name == "other.onnx" and "newest" in why
    sha = file_sha256(two_models["mine"])
    paired, why = default_fp32_onnx(Path("engines"), made_from=(sha, "mine.pth"))
    assert paired.name == "mine.onnx" and "mine.pth" in why and "other.onnx" in why
    with pytest.raises(MoptError, match="no ONNX in engines/ was exported from nobody.pth"):
        default_fp32_onnx(Path("engines"), made_from=("0" * 64, "nobody.pth"))
    assert [p.name for p, _ in default_onnx_models(made_from=(sha, "mine.pth"))] == ["mine.onnx"]


def test_compare_defaults_to_the_checkpoints_own_export_and_says_so(two_models: dict[str, Path]):
    result = invoke("compare", "--checkpoint", two_models["mine"], "--size", "64x64", "--count", "1", "--batch", "1")
    assert result.exit_code == 0, result.output
    lines = model_lines(result.output)
    assert first_line(result.output).startswith("model: mine.pth")
    assert any("engines/mine.onnx" in line and "default" in line for line in lines), result.output
    assert not any("engines/other.onnx (" in line for line in lines), result.output


def test_compare_refuses_another_models_onnx_unless_allowed(two_models: dict[str, Path]):
    args = ["compare", "--checkpoint", two_models["mine"], "--onnx", two_models["other_onnx"], "--size", "64x64",
            "--count", "1", "--batch", "1"]  # fmt: skip
    refused = invoke(*args)
    assert refused.exit_code == 1 and "made from another model" in str(refused.exception)
    allowed = invoke(*args, "--allow-mismatch", "--json", "cmp.json")
    assert "other.onnx" in model_lines(allowed.output)[1]
    recorded = json.loads(Path("cmp.json").read_text())["models"]
    assert [Path(m["path"]).name for m in recorded] == ["mine.pth", "other.onnx"]
    assert recorded[1]["sha256"] == file_sha256(two_models["other_onnx"])


def test_bench_names_its_models_first_and_records_them(two_models: dict[str, Path]):
    result = invoke("bench", "--checkpoint", two_models["mine"], "--backend", "torch,onnxruntime", "--batch", "1",
                    "--size", "64x64", "--iterations", "1", "--warmup", "0", "--json", "bench.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert first_line(result.output).startswith("model: mine.pth")
    recorded = json.loads(Path("bench.json").read_text())["models"]
    assert [Path(m["path"]).name for m in recorded] == ["mine.pth", "mine.onnx"]
    assert recorded[0]["sha256"] == file_sha256(two_models["mine"]) and recorded[1]["arch"] == "cvunet-tiny"


def test_bench_refuses_to_time_another_models_onnx_beside_pytorch(two_models: dict[str, Path]):
    result = invoke("bench", "--checkpoint", two_models["mine"], "--onnx", two_models["other_onnx"], "--backend",
                    "torch,onnxruntime", "--batch", "1", "--size", "64x64", "--iterations", "1")  # fmt: skip
    assert result.exit_code == 1 and "made from another model" in str(result.exception)


def test_matte_names_the_model_and_records_it_in_the_report(two_models: dict[str, Path]):
    Path("in").mkdir()
    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save("in/a.jpg")
    result = invoke("matte", "in", "-o", "out", "--onnx", two_models["mine_onnx"], "--backend", "onnxruntime",
                    "--report", "report.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert first_line(result.output).startswith(f"model: {two_models['mine_onnx']}")
    recorded = json.loads(Path("report.json").read_text())["models"]
    assert recorded == [model_identity(two_models["mine_onnx"]).to_dict()]


@pytest.mark.parametrize("command", ["export", "simplify", "info"])
def test_single_model_commands_name_it_first(two_models: dict[str, Path], command: str):
    target = two_models["mine_onnx"] if command == "simplify" else two_models["mine"]
    args = [command, target] + (["-o", "x.onnx"] if command in ("export", "simplify") else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    line = first_line(result.output)
    assert line.startswith(f"model: {target}") and file_sha256(target)[:SHA_PREFIX] in line


def test_simplify_without_a_path_explains_its_default(two_models: dict[str, Path]):
    result = invoke("simplify", "-o", "x.onnx")
    assert result.exit_code == 0, result.output
    assert first_line(result.output).startswith("model: engines/other.onnx") and "default" in first_line(result.output)
