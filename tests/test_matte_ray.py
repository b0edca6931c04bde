"""``mopt matte --ray`` on a real two-node Ray cluster started on this machine (one CPU per node).

The cluster is started once for the module (it takes seconds). The runs use the matte tests' mixed folder:
every good file written at its exact size and byte for byte what plain ``mopt matte`` writes, broken ones
reported, exit code 1, a re-run writing nothing; an actor that dies on its first batch (and a batch that
kills its worker every time); Ctrl-C in the middle. Faults are triggered by marker files that exactly one
worker can claim (an atomic rename), never by timing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_images import write_mixed_folder
from typer.testing import CliRunner

from optimize.backends import InferenceBackend, ModelSources, OnnxRuntimeBackend
from optimize.cli import matte as matte_cli
from optimize.errors import MoptError
from optimize.fileio import atomic_output
from optimize.matte import BackendChoice, mattes_from_images
from optimize.matte_ray import (
    CALLS_PER_ACTOR,
    MAX_ATTEMPTS,
    BackendLoader,
    _RunLedger,
    backend_loader,
    backend_on_cluster,
    mattes_from_images_on_ray,
    plan_actors,
    ray_cluster,
    remove_stale_temporaries,
)
from optimize.onnx_model import onnx_normalization

runner = CliRunner()
NODE_OBJECT_STORE = 100 * 2**20  # only paths and per-file results travel through it
GATE_TIMEOUT_S = 120  # a safety net for a broken test, never reached when the code works


def tree_digest(folder: Path) -> dict[str, str]:
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(folder: Path) -> list[Path]:
    """Temporary files: what an interrupted write would leave behind."""
    return [p for p in folder.rglob("*") if p.is_file() and ".tmp" in p.name]


def png_of(outdir: Path, rel: str) -> Path:
    return outdir / Path(rel).with_suffix(".png")


# --- no cluster needed -----------------------------------------------------------------------------


def test_actor_plan_one_per_gpu_else_one_per_node():
    cpu_nodes = [{"CPU": 16.0}, {"CPU": 16.0}, {"CPU": 32.0}]
    assert plan_actors(cpu_nodes, gpu=False) == plan_actors(cpu_nodes[:2] + [{"CPU": 33.0}], gpu=False)
    plan = plan_actors(cpu_nodes, gpu=False)
    assert (plan.actors, plan.num_cpus, plan.num_gpus) == (4, 16.0, 0.0)  # the 32-CPU node runs two
    gpu_nodes = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 64.0}]
    plan = plan_actors(gpu_nodes, gpu=True)
    assert (plan.actors, plan.num_cpus, plan.num_gpus) == (3, 8.0, 1.0)  # a node's CPUs shared by its GPUs
    with pytest.raises(MoptError, match="no node of the Ray cluster has one"):
        plan_actors(cpu_nodes, gpu=True)
    with pytest.raises(MoptError, match="whole CPU"):
        plan_actors([{"CPU": 0.5}], gpu=False)


def test_only_a_batchs_own_deaths_count_towards_its_limit():
    # A batch killed while it still waited for its turn (a neighbour crashed the worker) did not start: it
    # arrives again with no death of its own, and is not run alone. Before, every delivery counted, so a
    # good batch queued behind a poisonous one was reported as failed beside it.
    ledger = _RunLedger()
    assert ledger.arrive(1) == (1, 0, None)  # waited, then the worker died under it
    assert ledger.arrive(1) == (2, 0, None) and ledger.start(1)  # its turn came: from here a death is its own
    assert ledger.arrive(1) == (3, 1, None)
    # Once a run has its result, a later delivery (the result was lost with its worker, or a second actor got
    # the batch) gets that result instead of another run, which could only count deaths that were not its own.
    assert ledger.start(1) and ledger.finish(1, {"written": ["a.jpg"]})
    assert ledger.finish(1, {"failed": [["a.jpg", "late"]]}) and ledger.arrive(1) == (4, 2, {"written": ["a.jpg"]})
    assert ledger.stop() and ledger.arrive(2) is None


def test_stale_temporaries_of_the_planned_outputs_only_are_removed(tmp_path):
    out = tmp_path / "out" / "x.png"
    with atomic_output(out) as tmp:
        name = tmp.name  # the name atomic_output gives a temporary: the one a killed worker leaves
    stale = out.parent / name
    stale.write_bytes(b"half a png")
    other = out.parent / name.replace(".x.", ".y.", 1)  # a temporary of a file this run does not write
    other.write_bytes(b"not ours")
    out.write_bytes(b"a complete output")
    assert remove_stale_temporaries([out, tmp_path / "missing" / "z.png"]) == [stale]
    assert not stale.exists() and other.exists() and out.exists()


def test_ray_missing_is_a_one_line_error_with_the_extra(monkeypatch, tmp_path, tiny_onnx):
    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "x.png")
    result = runner.invoke(matte_cli.app, [str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--onnx", str(tiny_onnx),
                                           "--ray"])  # fmt: skip
    assert result.exit_code == 1 and isinstance(result.exception, MoptError)
    assert "pip install 'mopt[ray]'" in str(result.exception) and not (tmp_path / "o").exists()


# --- a two-node cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="ray is not installed (pip install 'mopt[ray]')")
    import ray
    import ray.cloudpickle
    from ray.cluster_utils import Cluster

    # The fault-injecting loaders below are defined here: workers get them by value, not by importing tests/.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": NODE_OBJECT_STORE, "include_dashboard": False},
    )
    try:
        nodes.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE)
        nodes.wait_for_nodes()
        yield nodes
    finally:
        if ray.is_initialized():
            ray.shutdown()
        nodes.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def mixed(tmp_path):
    root = tmp_path / "photos"
    good, broken = write_mixed_folder(root)
    return root, good, broken


def _claim(marker: Path) -> bool:
    """True for exactly one caller across all processes: the one whose rename of the marker succeeds."""
    try:
        os.rename(marker, marker.with_suffix(".taken"))
    except FileNotFoundError:
        return False
    return True


class _FaultyBackend(InferenceBackend):
    """Exits the worker process on the first batch any worker infers, and on every batch of one shape."""

    def __init__(self, inner: InferenceBackend, crash_once: Path | None, poison: tuple[int, int] | None) -> None:
        self.inner, self.crash_once, self.poison = inner, crash_once, poison
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if (self.crash_once is not None and _claim(self.crash_once)) or tuple(batch.shape[2:]) == self.poison:
            os._exit(17)  # what a segfault or the OOM killer does to a worker: no cleanup, no exception
        return self.inner.infer(batch)


class _GatedBackend(InferenceBackend):
    """The first batch any worker infers goes through; every later one waits until the ``go`` file exists."""

    def __init__(self, inner: InferenceBackend, first: Path, go: Path) -> None:
        self.inner, self.first, self.go = inner, first, go
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not _claim(self.first):
            deadline = time.monotonic() + GATE_TIMEOUT_S
            while not self.go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return self.inner.infer(batch)


@dataclasses.dataclass(frozen=True)
class FaultyLoader(BackendLoader):
    crash_once: Path | None = None
    poison: tuple[int, int] | None = None

    def __call__(self, threads: int | None = None) -> BackendChoice:
        choice = super().__call__(threads)
        return dataclasses.replace(choice, backend=_FaultyBackend(choice.backend, self.crash_once, self.poison))


@dataclasses.dataclass(frozen=True)
class GatedLoader(BackendLoader):
    first: Path = Path()
    go: Path = Path()

    def __call__(self, threads: int | None = None) -> BackendChoice:
        choice = super().__call__(threads)
        return dataclasses.replace(choice, backend=_GatedBackend(choice.backend, self.first, self.go))


def _sources(onnx: Path) -> ModelSources:
    return ModelSources(onnx=[onnx], threads=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_write_what_plain_matte_writes_and_a_rerun_writes_nothing(cluster, mixed, tiny_onnx, tmp_path):
    root, good, broken = mixed
    before = tree_digest(root)
    plain = tmp_path / "plain"
    with OnnxRuntimeBackend(tiny_onnx, threads=1) as backend:
        mattes_from_images([root], plain, backend=backend, normalization=onnx_normalization(tiny_onnx), max_side=64)
    out, report_path = tmp_path / "out", tmp_path / "report.json"
    args = [str(root), "-o", str(out), "--onnx", str(tiny_onnx), "--max-side", "64", "--threads", "1",
            "--report", str(report_path), "--ray-address", cluster.address]  # fmt: skip
    result = runner.invoke(matte_cli.app, args)
    assert result.exit_code == 1, result.output
    assert "2 node(s)" in result.output and "2 actor(s) of 1 CPU" in result.output
    assert f"{len(good)} written" in result.output and f"{len(broken)} failed" in result.output
    report = json.loads(report_path.read_text())
    assert (report["processed"], report["skipped"], report["nodes"], report["actors"]) == (len(good), 0, 2, 2)
    assert report["backend"] == "onnxruntime-cpu-fp32" and report["device"] == "cpu"
    failed = {Path(f["path"]).relative_to(root).as_posix(): f["reason"] for f in report["failed"]}
    assert set(failed) == set(broken)
    for rel, word in broken.items():
        assert word in failed[rel], failed[rel]
    for rel, (height, width) in good.items():
        with Image.open(png_of(out, rel)) as picture:
            assert picture.size == (width, height) and picture.mode == "RGBA", rel
    assert tree_digest(out) == tree_digest(plain)  # the same batches, the same code: the same bytes
    assert tree_digest(root) == before and leftovers(out) == []

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    rerun = runner.invoke(matte_cli.app, args)
    assert rerun.exit_code == 1, rerun.output
    report = json.loads(report_path.read_text())
    assert (report["processed"], report["skipped"], len(report["failed"])) == (0, len(good), len(broken))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_model_the_workers_cannot_run_is_a_one_line_error(cluster, tiny_onnx):
    with ray_cluster(cluster.address) as joined, pytest.raises(MoptError) as info:
        backend_on_cluster(joined, backend_loader(_sources(tiny_onnx), require_gpu=True))
    message = str(info.value)
    assert message.startswith("on the Ray cluster: --require-gpu: no GPU backend can run here") and "\n" not in message


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dead_workers_are_retried_and_every_input_is_accounted_for(cluster, mixed, tiny_onnx, tmp_path):
    root, good, broken = mixed
    marker = tmp_path / "crash-once"
    marker.touch()
    # a/b/rotated.jpg (64 x 48) is the only image inferred at 64x64: its worker dies on every attempt.
    load = FaultyLoader(backend_loader(_sources(tiny_onnx)).sources, crash_once=marker, poison=(64, 64))
    out = tmp_path / "out"
    with ray_cluster(cluster.address) as joined:
        choice = backend_on_cluster(joined, load)
        report = mattes_from_images_on_ray([root], out, cluster=joined, load=load, choice=choice, batch=2,
                                           max_side=64)  # fmt: skip
    assert not marker.exists() and marker.with_suffix(".taken").exists()  # the first batch did kill its worker
    failed = {Path(f.path).relative_to(root).as_posix(): f.reason for f in report.failed}
    unexpected = {rel: why for rel, why in failed.items() if rel not in broken and rel != "a/b/rotated.jpg"}
    assert set(failed) == set(broken) | {"a/b/rotated.jpg"}, unexpected
    assert f"died {MAX_ATTEMPTS} times" in failed["a/b/rotated.jpg"]
    assert report.processed == len(good) - 1 and report.retried_batches >= 2
    for rel, (height, width) in good.items():
        if rel != "a/b/rotated.jpg":
            with Image.open(png_of(out, rel)) as picture:
                assert picture.size == (width, height), rel
                picture.load()
    assert not png_of(out, "a/b/rotated.jpg").exists() and leftovers(out) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_finishes_the_batches_being_written_and_resumes(cluster, mixed, tiny_onnx, tmp_path):
    root, good, _ = mixed
    first, go = tmp_path / "first", tmp_path / "go"
    first.touch()
    load = GatedLoader(backend_loader(_sources(tiny_onnx)).sources, first=first, go=go)
    out, report_path = tmp_path / "out", tmp_path / "report.json"

    def interrupt(phase: str, done: int, total: int) -> None:
        # Once the batch that passed the gate is written (broken files report earlier, without inferring).
        if phase == "matte" and not go.exists() and any(out.rglob("*.png")):
            go.touch()  # the batches held at the gate are being processed: they finish after the interrupt
            raise KeyboardInterrupt

    with ray_cluster(cluster.address) as joined:
        choice = backend_on_cluster(joined, load)
        with pytest.raises(KeyboardInterrupt):
            mattes_from_images_on_ray([root], out, cluster=joined, load=load, choice=choice, batch=1, max_side=64,
                                      report_path=report_path, progress=interrupt)  # fmt: skip
    written = list(out.rglob("*.png"))
    # One batch passed the gate; at most the calls the two actors held at the gate then got to write.
    assert 1 <= len(written) <= 1 + 2 * CALLS_PER_ACTOR < len(good)
    for path in written:
        with Image.open(path) as picture:
            picture.load()  # complete: decodes to the end
    assert leftovers(out) == []
    partial = json.loads(report_path.read_text())
    assert partial["interrupted"] is True and partial["processed"] == len(written)

    with ray_cluster(cluster.address) as joined:
        plain_load = backend_loader(_sources(tiny_onnx))
        resumed = mattes_from_images_on_ray([root], out, cluster=joined, load=plain_load, choice=choice, batch=1,
                                            max_side=64)  # fmt: skip
    assert resumed.skipped == len(written) and resumed.processed == len(good) - len(written)
