"""Shared fixtures: a tiny checkpoint and its exported ONNX, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from architectures import create_model
from optimize.checkpoint import save_checkpoint

# `make mutation` runs the tests once per mutant, each time in a new session: there the tiny model is built once
# into this folder and reused, rather than exported again for every mutant (none of the mutated modules makes it).
ARTIFACT_CACHE = os.environ.get("MOPT_TEST_ARTIFACTS")


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if ARTIFACT_CACHE:
        Path(ARTIFACT_CACHE).mkdir(parents=True, exist_ok=True)
        return Path(ARTIFACT_CACHE)
    return tmp_path_factory.mktemp("artifacts")


def _cached(path: Path) -> bool:
    return bool(ARTIFACT_CACHE) and path.is_file()


@pytest.fixture(scope="session")
def tiny_checkpoint(artifacts_dir: Path) -> Path:
    """A cvunet-tiny checkpoint with non-trivial BatchNorm statistics (random init leaves them at 0/1)."""
    if _cached(artifacts_dir / "tiny.pth"):
        return artifacts_dir / "tiny.pth"
    torch.manual_seed(0)
    model = create_model("cvunet-tiny")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return save_checkpoint(model, artifacts_dir / "tiny.pth")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, artifacts_dir: Path) -> Path:
    from optimize.export import onnx_from_checkpoint

    if _cached(artifacts_dir / "tiny.onnx"):
        return artifacts_dir / "tiny.onnx"
    return onnx_from_checkpoint(tiny_checkpoint, artifacts_dir / "tiny.onnx").path


@pytest.fixture(scope="session")
def tiny_simplified_onnx(tiny_onnx: Path) -> Path:
    from optimize.simplify import simplified_onnx_from_onnx

    if _cached(tiny_onnx.with_suffix(".sim.onnx")):
        return tiny_onnx.with_suffix(".sim.onnx")
    return simplified_onnx_from_onnx(tiny_onnx).path


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run a test from an empty working folder (commands write to ./engines by default)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Commands that cache (the CPU runtime probe of matte and serve) write under a test folder, not ~/.cache."""
    path = tmp_path_factory.mktemp("cache-home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))
    return path
