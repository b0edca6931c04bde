"""GPU backends: registration, import cost, why each cannot run on a CPU machine; numerics and timing on a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from optimize import engine as engine_mod
from optimize.backends import ModelSources, TorchBackend, backend_names, backend_spec
from optimize.checkpoint import load_checkpoint
from optimize.engine import MachineInfo, tensorrt_unavailable_reason
from optimize.profiles import ShapeProfile

GPU_BACKENDS = ("torch-cuda", "torch-cuda-fp16", "onnxruntime-cuda", "tensorrt")
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with a CUDA build of PyTorch")
needs_tensorrt = pytest.mark.skipif(
    tensorrt_unavailable_reason() is not None or not HAS_CUDA,
    reason=f"needs TensorRT and a GPU: {tensorrt_unavailable_reason() or 'PyTorch has no CUDA'}",
)
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="checks the messages of a machine without a GPU")


def test_gpu_backends_are_registered_with_descriptions() -> None:
    registered = backend_names()
    for name in GPU_BACKENDS:
        assert name in registered
        assert backend_spec(name).description


def test_importing_the_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, optimize.backends; "
        "print(sorted(m for m in ('torch', 'tensorrt', 'onnxruntime', 'onnx') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert done.stdout.strip() == "[]"


def test_missing_sources_are_reported_first(tmp_path: Path) -> None:
    empty = ModelSources()
    assert backend_spec("torch-cuda").unavailable_reason(empty) == "no checkpoint given"
    assert backend_spec("torch-cuda-fp16").unavailable_reason(empty) == "no checkpoint given"
    assert "no ONNX file given" in backend_spec("onnxruntime-cuda").unavailable_reason(empty)
    assert "no engine given" in backend_spec("tensorrt").unavailable_reason(empty)
    missing = ModelSources(engine=tmp_path / "missing.plan")
    assert "does not exist" in backend_spec("tensorrt").unavailable_reason(missing)


@cpu_only
def test_without_a_gpu_each_backend_says_so(tmp_path: Path) -> None:
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"engine")
    sources = ModelSources(checkpoint=tmp_path / "c.pth", onnx=[tmp_path / "m.onnx"], engine=engine)
    for name in ("torch-cuda", "torch-cuda-fp16"):
        assert backend_spec(name).unavailable_reason(sources).startswith("no CUDA GPU")
    # ONNX Runtime's provider is what was asked for: its reason names it, not the PyTorch build.
    reason = backend_spec("onnxruntime-cuda").unavailable_reason(sources)
    assert reason == "ONNX Runtime's CUDA provider is unavailable: no NVIDIA GPU on this machine"
    reason = backend_spec("tensorrt").unavailable_reason(sources)
    assert reason == tensorrt_unavailable_reason() and "pip install 'mopt[tensorrt]'" in reason


def test_tensorrt_reason_reports_a_sidecar_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    l4 = MachineInfo(gpu=True, gpu_name="NVIDIA L4", compute_capability="8.9", tensorrt="11.4.0")
    monkeypatch.setattr(engine_mod, "gpu_environment", lambda: l4)
    engine = tmp_path / "m.fp16.plan"
    engine.write_bytes(b"engine")
    (tmp_path / "m.fp16.json").write_text(
        '{"compute_capability": "9.0", "tensorrt_version": "11.4.0", "precision": "fp16", "onnx": "m.onnx"}'
    )
    reason = backend_spec("tensorrt").unavailable_reason(ModelSources(engine=engine))
    assert reason.startswith("engine built for sm_90 with TensorRT 11.4.0; this GPU is sm_89 (NVIDIA L4)")


def fake_cuda_capture(monkeypatch: pytest.MonkeyPatch, fail: bool) -> dict:
    """torch.cuda's graph/stream calls on a CPU machine, with torch's behaviour on a failed capture: when
    capture_end raises, torch.cuda.graph's __exit__ never restores the stream that was current before."""
    state: dict = {"current": "caller-stream", "modes": [], "set": []}

    class Graph:
        def __init__(self, graph, stream=None, capture_error_mode="global") -> None:
            self.stream = stream
            state["modes"].append(capture_error_mode)

        def __enter__(self) -> None:
            state["current"] = self.stream

        def __exit__(self, *exc) -> None:
            if fail:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            state["current"] = "caller-stream"

    def set_stream(stream) -> None:
        state["set"].append(stream)
        state["current"] = stream

    monkeypatch.setattr(torch.cuda, "graph", Graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["current"])
    monkeypatch.setattr(torch.cuda, "set_stream", set_stream)
    return state


def test_a_failed_capture_restores_the_stream_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimize.backends.cuda import capture_cuda_graph

    state = fake_cuda_capture(monkeypatch, fail=True)
    graph, out, reason = capture_cuda_graph(lambda: "output", "engine-stream", "cuda:0")
    assert (graph, out) == (None, None)
    assert reason == (
        "CUDA graph capture failed (CUDA error: operation not permitted when stream is capturing); "
        "timing plain launches"
    )
    assert state["current"] == "caller-stream" and state["set"] == ["caller-stream"]
    assert state["modes"] == ["thread_local"]  # as trtexec captures: other threads' CUDA calls are not refused


def test_a_capture_whose_step_fails_is_reported_with_the_steps_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from optimize.backends.cuda import capture_cuda_graph
    from optimize.errors import MoptError

    state = fake_cuda_capture(monkeypatch, fail=False)

    def step() -> None:
        raise MoptError("TensorRT execution failed: enqueueV3 cannot be captured")

    graph, _, reason = capture_cuda_graph(step, "engine-stream", "cuda:0")
    assert graph is None and "enqueueV3 cannot be captured" in reason and state["current"] == "caller-stream"

    graph, out, reason = capture_cuda_graph(lambda: "output", "engine-stream", "cuda:0")
    assert (graph, out, reason) == ("graph", "output", None) and state["set"] == ["caller-stream"]


# --- on a GPU ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path, batch: np.ndarray) -> np.ndarray:
    return TorchBackend(load_checkpoint(tiny_checkpoint).model).infer(batch)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("name", "atol"), [("torch-cuda", 1e-4), ("torch-cuda-fp16", 1e-2)])
def test_torch_cuda_matches_the_cpu_reference(tiny_checkpoint: Path, batch, reference, name: str, atol: float) -> None:
    spec = backend_spec(name)
    sources = ModelSources(checkpoint=tiny_checkpoint)
    assert spec.unavailable_reason(sources) is None
    (backend,) = list(spec.create(sources))
    with backend:
        out = backend.infer(batch)
        assert out.shape == (2, 1, 64, 96) and out.dtype == np.float32
        np.testing.assert_allclose(out, reference, atol=atol, rtol=0)
        backend.reset_peak_memory()
        times = backend.time_inference(batch, warmup=2, iterations=5)
        assert len(times) == 5 and all(t > 0 for t in times)
        assert backend.peak_memory_mb() > 0
        assert backend.device.startswith("cuda:")
        if name == "torch-cuda-fp16":  # the CUDA graph was captured and replayed, not silently skipped
            assert backend.graph_used == {batch.shape: True}, backend.graph_notes
            assert torch.cuda.current_stream() == torch.cuda.default_stream()


@pytest.mark.gpu
@needs_gpu
def test_onnxruntime_cuda_when_it_loads(tiny_onnx: Path, batch, reference) -> None:
    spec = backend_spec("onnxruntime-cuda")
    reason = spec.unavailable_reason(ModelSources(onnx=[tiny_onnx]))
    if reason:
        assert "CUDA" in reason
        pytest.skip(reason)
    (backend,) = list(spec.create(ModelSources(onnx=[tiny_onnx])))
    with backend:
        np.testing.assert_allclose(backend.infer(batch), reference, atol=1e-3, rtol=0)
        times = backend.time_inference(batch, warmup=1, iterations=3)
        assert len(times) == 3 and all(t > 0 for t in times)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
def test_tensorrt_engine_builds_reuses_and_matches(tiny_onnx: Path, tmp_path: Path, batch, reference) -> None:
    from optimize.engine import engine_from_onnx

    profile = ShapeProfile((1, 3, 64, 64), (2, 3, 64, 96), (4, 3, 128, 128))
    built = engine_from_onnx(tiny_onnx, tmp_path / "tiny.fp32.plan", precision="fp32", profiles=[profile])
    assert not built.reused
    assert engine_from_onnx(tiny_onnx, tmp_path / "tiny.fp32.plan", precision="fp32", profiles=[profile]).reused
    spec = backend_spec("tensorrt")
    sources = ModelSources(engine=built.path)
    assert spec.unavailable_reason(sources) is None
    (backend,) = list(spec.create(sources))
    with backend:
        np.testing.assert_allclose(backend.infer(batch), reference, atol=1e-3, rtol=0)
        times = backend.time_inference(batch, warmup=2, iterations=5)
        assert len(times) == 5 and all(t > 0 for t in times)
        assert backend.peak_memory_mb() > 0
        assert backend.graph_used == {batch.shape: True}, backend.graph_notes
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        # The engine's own numbers: activation memory from device_memory_size_v2, weights from the built graph.
        assert backend.activation_mb > 0 and backend.weights_mb > 0
        assert (backend.io.input_name, backend.io.output_name) == ("input", "alpha") and backend.io.recorded


def test_onnxruntime_cuda_reason_names_the_provider_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(engine_mod, "gpu_environment", lambda: MachineInfo(gpu=True, gpu_name="NVIDIA L4"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    reason = backend_spec("onnxruntime-cuda").unavailable_reason(ModelSources(onnx=[tmp_path / "m.onnx"]))
    assert reason.startswith("ONNX Runtime's CUDA provider is unavailable: CUDAExecutionProvider is not in")
    assert "onnxruntime.get_available_providers()" in reason and "PyTorch" not in reason
