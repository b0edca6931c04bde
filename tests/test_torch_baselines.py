"""The PyTorch baselines of `mopt bench`: channels-last eager and torch.compile, compile time kept apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimize.backends import ModelSources, TorchBackend, TorchChannelsLastBackend, backend_names, backend_spec
from optimize.backends.torch import TorchCompileBackend, torch_compile_reason
from optimize.bench import measure_backend
from optimize.checkpoint import load_checkpoint
from optimize.compare import candidates_from_sources


def _x(shape=(2, 3, 64, 64)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_channels_last_matches_eager(tiny_checkpoint):
    eager = TorchBackend(load_checkpoint(tiny_checkpoint).model)
    channels_last = TorchChannelsLastBackend(load_checkpoint(tiny_checkpoint).model)
    assert channels_last.name == "torch-cpu-fp32-channels-last" and channels_last.backend == "torch-channels-last"
    got = channels_last.infer(_x())
    assert got.shape == (2, 1, 64, 64) and got.flags["C_CONTIGUOUS"]
    assert np.abs(got - eager.infer(_x())).max() <= 1e-4


def test_baselines_run_only_when_named(tiny_checkpoint, tiny_simplified_onnx):
    assert {"torch-channels-last", "torch-compile"} <= set(backend_names())
    assert not backend_spec("torch-compile").default and not backend_spec("torch-channels-last").default
    sources = ModelSources(checkpoint=tiny_checkpoint, onnx=[tiny_simplified_onnx], threads=1)
    default, _ = candidates_from_sources(sources)
    assert not any(c.name.startswith("torch-cpu-fp32-") for c in default)
    named, _ = candidates_from_sources(sources, ["torch-channels-last"])
    assert [c.name for c in named] == ["torch-cpu-fp32-channels-last"]


def test_compile_needs_a_cxx_compiler(monkeypatch, tmp_path):
    import shutil

    assert torch_compile_reason(ModelSources()) == "no checkpoint given"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "needs a C++ compiler" in torch_compile_reason(ModelSources(checkpoint=tmp_path / "c.pth"))


def test_compile_time_is_reported_apart_from_the_latencies(tiny_checkpoint):
    reason = torch_compile_reason(ModelSources(checkpoint=tiny_checkpoint))
    if reason:
        pytest.skip(reason)
    backend = TorchCompileBackend(load_checkpoint(tiny_checkpoint).model, threads=1)
    try:
        result = measure_backend(backend, 1, 64, 64, warmup=1, iterations=2)
    except Exception as exc:  # Inductor's failures (a broken toolchain) are its own exception types
        if "inductor" in type(exc).__module__.lower() or "dynamo" in type(exc).__module__.lower():
            pytest.skip(f"Inductor cannot compile here: {str(exc).splitlines()[0]}")
        raise
    assert result.backend == "torch-compile" and result.iterations == 2
    assert result.compile_s is not None and result.compile_s > 0
    assert backend.compile_s == {(1, 3, 64, 64): result.compile_s}
    eager = TorchBackend(load_checkpoint(tiny_checkpoint).model)
    assert np.abs(backend.infer(_x((1, 3, 64, 64))) - eager.infer(_x((1, 3, 64, 64)))).max() <= 1e-4
    backend.close()
    torch._dynamo.reset()
