"""The measured choice between CPU runtimes: choice logic with fake backends, the cache, one real probe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optimize.backends import InferenceBackend, ModelSources
from optimize.backends import probe as probe_mod
from optimize.backends.probe import ProbeCache, ProbeResult, cache_path, choose_fastest, probe_key
from optimize.matte import select_backend


class FakeBackend(InferenceBackend):
    def __init__(self, name: str, ms: float, log: list[str]) -> None:
        self.name, self.ms, self.log = name, ms, log
        log.append(f"load {name}")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], 1, *batch.shape[2:]), np.float32)

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def _fakes(times: dict[str, float], log: list[str] | None = None):
    log = [] if log is None else log
    return [(name, lambda name=name: FakeBackend(name, times[name], log)) for name in times]


def _timer(backend: FakeBackend, size: tuple[int, int]) -> float:
    return backend.ms


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model bytes")
    return path


def test_the_faster_is_kept_loaded_and_the_slower_closed(tmp_path, model_file):
    log: list[str] = []
    cache = ProbeCache(tmp_path / "probe.json")
    backend, result = choose_fastest(
        _fakes({"openvino": 113.0, "onnxruntime": 130.0}, log), (1024, 1024), model_file, 2, cache, _timer
    )
    assert backend.name == "openvino" and result.chosen == "openvino" and not result.cached
    assert log == ["load openvino", "load onnxruntime", "close onnxruntime"]
    assert result.describe() == "chosen by probe at 1024x1024: OpenVINO 113 ms, ONNX Runtime 130 ms"
    log.clear()
    backend, result = choose_fastest(
        _fakes({"openvino": 150.0, "onnxruntime": 130.0}, log), (512, 512), model_file, 2, cache, _timer
    )
    assert result.chosen == "onnxruntime" and log == ["load openvino", "load onnxruntime", "close openvino"]
    assert result.describe().startswith("chosen by probe at 512x512: ONNX Runtime 130 ms, OpenVINO 150 ms")


def test_a_cache_hit_loads_only_the_winner_and_says_so(tmp_path, model_file):
    cache = ProbeCache(tmp_path / "probe.json")
    choose_fastest(_fakes({"openvino": 1.0, "onnxruntime": 2.0}), (64, 64), model_file, 1, cache, _timer)
    log: list[str] = []

    def never(backend, size):
        raise AssertionError("a cache hit must not time anything")

    # The cached answer stands even though these fakes would now say otherwise.
    backend, result = choose_fastest(
        _fakes({"openvino": 9.0, "onnxruntime": 2.0}, log), (64, 64), model_file, 1, cache, never
    )
    assert result.cached and result.chosen == "openvino" and log == ["load openvino"]
    assert result.latencies_ms == {"openvino": 1.0, "onnxruntime": 2.0} and result.describe().endswith("(cached)")


def test_the_key_separates_model_size_threads_and_cpu(tmp_path, model_file, monkeypatch):
    sha = "ab" * 32
    key = probe_key(sha, (1024, 1024), 2, cpu="AMD EPYC")
    assert key.startswith("AMD EPYC|" + sha + "|1024x1024|threads=2|") and "openvino=" in key
    others = {
        probe_key("cd" * 32, (1024, 1024), 2, cpu="AMD EPYC"),
        probe_key(sha, (512, 512), 2, cpu="AMD EPYC"),
        probe_key(sha, (1024, 1024), None, cpu="AMD EPYC"),
        probe_key(sha, (1024, 1024), 2, cpu="Intel Xeon"),
    }
    assert key not in others and len(others) == 4
    # A miss for another size or thread count measures again.
    cache = ProbeCache(tmp_path / "probe.json")
    choose_fastest(_fakes({"openvino": 1.0, "onnxruntime": 2.0}), (64, 64), model_file, 1, cache, _timer)
    _, other_size = choose_fastest(
        _fakes({"openvino": 3.0, "onnxruntime": 2.0}), (96, 96), model_file, 1, cache, _timer
    )
    _, other_threads = choose_fastest(
        _fakes({"openvino": 3.0, "onnxruntime": 2.0}), (64, 64), model_file, 2, cache, _timer
    )
    assert not other_size.cached and other_size.chosen == "onnxruntime" and not other_threads.cached
    entries = json.loads((tmp_path / "probe.json").read_text())["entries"]
    assert len(entries) == 3 and all(e["chosen"] in ("openvino", "onnxruntime") for e in entries.values())


def test_a_corrupt_or_foreign_cache_is_a_miss(tmp_path, model_file):
    path = tmp_path / "probe.json"
    path.write_text("{not json")
    cache = ProbeCache(path)
    _, result = choose_fastest(_fakes({"openvino": 1.0, "onnxruntime": 2.0}), (64, 64), model_file, 1, cache, _timer)
    assert not result.cached and json.loads(path.read_text())["version"] == probe_mod.CACHE_VERSION
    (key,) = json.loads(path.read_text())["entries"]
    assert ProbeCache(path).get(key) is not None
    path.write_text(json.dumps({"version": 999, "entries": {key: {"chosen": "openvino", "latencies_ms": {}}}}))
    assert ProbeCache(path).get(key) is None


def test_cache_path_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path() == tmp_path / "xdg" / "mopt" / "backend-probe.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_path() == tmp_path / "home" / ".cache" / "mopt" / "backend-probe.json"


def test_select_backend_probes_the_real_runtimes(tiny_simplified_onnx, tmp_path):
    cache = ProbeCache(tmp_path / "probe.json")
    sources = ModelSources(onnx=[tiny_simplified_onnx], threads=1)
    choice = select_backend(sources, probe_size=(64, 64), probe_cache=cache)
    with choice.backend:
        assert isinstance(choice.probe, ProbeResult) and choice.name in ("openvino", "onnxruntime")
        line = choice.describe()
        assert "chosen by probe at 64x64: " in line and "OpenVINO" in line and "ONNX Runtime" in line
        assert all(ms > 0 for ms in choice.probe.latencies_ms.values())
        loser = ({"openvino", "onnxruntime"} - {choice.name}).pop()
        assert choice.skipped[loser].startswith("slower at 64x64")
    again = select_backend(sources, probe_size=(64, 64), probe_cache=cache)
    with again.backend:
        assert again.probe.cached and again.name == choice.name
    # Without a probe size (library callers), the preference order decides, as before.
    plain = select_backend(sources)
    with plain.backend:
        assert plain.name == "onnxruntime" and plain.probe is None
