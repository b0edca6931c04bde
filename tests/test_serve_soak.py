"""The short serve soak (``benchmarks/serve_soak.py --cycles 2 --duration 30``): restarts and mixed load, no leak."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from optimize.deps import is_available

REPO = Path(__file__).resolve().parents[1]


def _soak_module():
    if "serve_soak" not in sys.modules:
        spec = importlib.util.spec_from_file_location("serve_soak", REPO / "benchmarks" / "serve_soak.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["serve_soak"] = module  # dataclasses look their module up there while it executes
        spec.loader.exec_module(module)
    return sys.modules["serve_soak"]


@pytest.mark.serve
@pytest.mark.slow
@pytest.mark.skipif(not is_available("pytriton"), reason="nvidia-pytriton is not installed")
@pytest.mark.skipif(not is_available("tritonclient.http"), reason="tritonclient is not installed")
@pytest.mark.timeout(600)
def test_short_soak_answers_every_request_and_leaves_nothing_behind(tiny_onnx: Path, tmp_path: Path) -> None:
    soak = _soak_module()
    result = soak.soak(tiny_onnx, cycles=2, duration_s=30, clients=8, workdir=tmp_path / "logs", say=lambda _: None)
    load = result.load
    assert result.cycles == 2 and len(result.start_s) == 3
    assert result.stop_failures == [] and result.processes_left == 0 and result.shm_left == [], result.to_dict()
    assert load.good_ok > 0 and load.bad_ok > 0, load
    assert (load.wrong_matte, load.good_with_error, load.bad_without_error, load.transport_errors) == (0, 0, 0, 0), load
    # Readiness: the server answers every probe. On a CPU-starved machine Triton's Python backend can report a
    # model not ready for a moment while it still serves every request; the full soak counts those moments and
    # docs/benchmarks.md reports them, this short run does not fail on them.
    assert load.ready_checks > 0 and load.not_live == 0, load
    assert result.answers_ok
