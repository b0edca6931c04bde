"""``mopt matte --ray``: the job of :func:`optimize.matte.mattes_from_images`, run as a Ray Data pipeline.

The driver does what needs the whole picture: it lists the inputs, skips outputs that are already complete,
and cuts the rest into batches of one inference-size bucket. These are the batches a plain run infers (the
same planning code), so every matte is the one ``mopt matte`` writes. Each batch travels as one row (its
paths, as JSON) through ``Dataset.map_batches`` into a fixed pool of actors. An actor loads the model once
(:func:`optimize.matte.select_backend` on its node) and, for each batch, decodes, infers and encodes with the
plain run's own per-file code, decoding and encoding in a thread pool beside inference. Pixels never cross
the object store: paths go out, per-file results come back, and every node reads the inputs and writes the
outputs on a file system they all see at the same path.

Resources: one actor per GPU where the cluster has GPUs and the chosen backend runs on one (each with its
share of the node's CPUs for decoding and encoding); otherwise one actor per node, holding the node's CPUs
(nodes larger than the smallest hold one actor per smallest node's worth of CPUs). Each actor runs two
batches at a time, one inferring while the other decodes or writes, inference one at a time.

Failures: a file that cannot be read, inferred or written is reported with its reason, as in a plain run. A
worker process that dies is restarted by Ray and its batch retried; a small ledger actor counts the starts
of every batch, so a batch whose worker died :data:`MAX_ATTEMPTS` times is reported as failed instead of
being retried for ever. Any file without a result at the end is reported too: every input is written,
skipped or failed. Temporary files a dead worker left beside an output are removed at the end of the run.

Interruption (Ctrl-C, SIGTERM): the ledger stops handing out batches, the ones being processed finish
writing, the report is written with ``interrupted`` set, and ``KeyboardInterrupt`` is raised; a second
Ctrl-C stops at once (the temporary files of the writes it cut short are removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimize.backends import InferenceBackend, ModelSources
from optimize.deps import require
from optimize.errors import MoptError
from optimize.fileio import write_json
from optimize.images import DEFAULT_PNG_COMPRESSION, ImageInput, expand_image_inputs, output_paths
from optimize.matte import (
    DEFAULT_BATCH,
    DEFAULT_MAX_SIDE,
    SIZE_STEP,
    BackendChoice,
    MatteFailure,
    MatteReport,
    MatteSettings,
    ProgressCallback,
    _Job,
    _MatteRun,
    _reason,
    _sigterm_as_interrupt,
    default_workers,
    select_backend,
)

LOCAL = "local"  # the address that starts a Ray instance on this machine
MAX_ATTEMPTS = 3  # runs of one batch whose worker died before its files are reported as failed
CALLS_PER_ACTOR = 2  # batches an actor works on at once: one infers while the other decodes or writes
# Only paths and per-file results go through the object store of a local instance: a small one leaves the
# machine's memory to the actors' images.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
GROUP_COLUMN = "group"
RESULT_COLUMN = "result"
RESULT_POLL_S = 0.2  # how often the driver thread wakes up from waiting for results (to see Ctrl-C)
# atomic_output's temporary files: ".{stem}.{8 random characters}.tmp{suffix}" beside the final file.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]+)?$")


def _ray() -> Any:
    return require("ray")


# --- the cluster ---------------------------------------------------------------------------------------


@dataclass
class RayCluster:
    """The Ray cluster a run uses.

    Attributes:
        address: ``local`` for an instance started here, else the address that was joined.
        nodes: the resources of every live node (``{"CPU": 16.0, "GPU": 1.0, ...}``).
        startup_s: seconds to start or join it.
        owned: whether this process connected (and so disconnects, or stops the local instance, at the end).
        backend_s: seconds :func:`backend_on_cluster` took to choose the backend on a worker.
    """

    address: str
    nodes: list[dict[str, float]]
    startup_s: float
    owned: bool
    backend_s: float = 0.0

    @property
    def cpus(self) -> float:
        return sum(node.get("CPU", 0.0) for node in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(node.get("GPU", 0.0) for node in self.nodes)

    def describe(self) -> str:
        where = "a local Ray instance" if self.address == LOCAL else f"the Ray cluster at {self.address}"
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{where}: {len(self.nodes)} node(s), {self.cpus:g} CPU{gpus} (ready in {self.startup_s:.1f} s)"

    def disconnect(self) -> None:
        """Leave the cluster (a local instance stops; the actors this driver owns end with it)."""
        if self.owned:
            _ray().shutdown()
            self.owned = False


@contextlib.contextmanager
def ray_cluster(
    address: str | None = None, object_store_memory: int = LOCAL_OBJECT_STORE_BYTES
) -> Iterator[RayCluster]:
    """Start a local Ray instance (``address`` None or ``local``) or join a cluster, and leave it at the end.

    Args:
        address: ``local``, ``auto`` (the cluster ``ray start`` runs on this machine), ``ray://host:10001`` (Ray
            Client) or a head node's ``host:6379``.
        object_store_memory: bytes of object store for a local instance.

    Raises:
        MoptError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _ray()
    began = time.perf_counter()
    address = address or LOCAL
    owned = not ray.is_initialized()  # a caller's own session (a notebook) is used as it is, and left running
    if owned:
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address == LOCAL:
            options.update(include_dashboard=False, object_store_memory=object_store_memory)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MoptError(
                f"cannot join the Ray cluster at {address}: {_reason(exc)}; start one with `ray start --head` "
                "(and `ray start --address HEAD:6379` on the other machines), or use --ray alone for a local one"
            ) from exc
    cluster = RayCluster(address, [], 0.0, owned)
    try:
        cluster.nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
        cluster.startup_s = time.perf_counter() - began
        yield cluster
    finally:
        cluster.disconnect()


# --- the backend, loaded where it runs -------------------------------------------------------------


@dataclass(frozen=True)
class BackendLoader:
    """Loads the model on a Ray worker as ``mopt matte`` does (:func:`select_backend`); sent to every actor.

    Attributes:
        sources: the model files, with absolute paths (workers open them on their own node).
        require_gpu: refuse a backend that runs on the CPU.
    """

    sources: ModelSources
    require_gpu: bool = False

    def __call__(self, threads: int | None = None) -> BackendChoice:
        """The loaded backend; ``threads`` (the worker's CPUs) applies unless the sources name their own."""
        sources = self.sources
        if threads and not sources.threads:
            sources = dataclasses.replace(sources, threads=threads)
        return select_backend(sources, require_gpu=self.require_gpu)


def backend_loader(sources: ModelSources, require_gpu: bool = False) -> BackendLoader:
    """A :class:`BackendLoader` for ``sources``, its paths made absolute for workers elsewhere."""

    def absolute(path: Path | None) -> Path | None:
        return Path(path).absolute() if path is not None else None

    fixed = dataclasses.replace(
        sources,
        checkpoint=absolute(sources.checkpoint),
        engine=absolute(sources.engine),
        onnx=[Path(p).absolute() for p in sources.onnx],
    )
    return BackendLoader(fixed, require_gpu)


class BackendLabel(InferenceBackend):
    """What a backend on the cluster is (name, registry name, device, precision); it runs nothing here."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.name, self.backend = backend.name, backend.backend
        self.device, self.precision = backend.device, backend.precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise MoptError(f"{self.name} runs on the Ray cluster, not in this process")


def _describe_backend(load: BackendLoader) -> BackendChoice:
    """On a worker: the choice ``load`` makes there, with the loaded backend replaced by its label."""
    choice = load()
    try:
        return dataclasses.replace(choice, backend=BackendLabel(choice.backend))
    finally:
        choice.backend.close()


def _cluster_error(exc: BaseException) -> MoptError | None:
    """The user error a Ray task or actor raised (a model that does not load), if that is what ``exc`` is."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MoptError):
            return MoptError(str(cause.args[0]) if cause.args else str(cause))
        if isinstance(cause, ImportError) and (cause.name or "").split(".")[0] in ("optimize", "architectures"):
            return MoptError(f"its workers cannot import mopt ({cause}): pip install 'mopt[ray]' on every node")
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


def backend_on_cluster(cluster: RayCluster, load: BackendLoader) -> BackendChoice:
    """The backend the actors will run, chosen on a worker with an actor's accelerator (a GPU where there is one).

    The driver may be a machine without the GPU, TensorRT or model runtime the workers have, so the choice is
    made where the work runs. The returned choice holds a :class:`BackendLabel`; its card, size limits, skipped
    backends and notes are the real ones.

    Raises:
        MoptError: nothing can run the model there (or ``require_gpu`` and no GPU backend can).
    """
    ray = _ray()
    # max_calls=1: the probe's worker exits afterwards, giving back the memory (and GPU) it loaded the model into.
    probe = ray.remote(num_cpus=0, num_gpus=1 if cluster.gpus >= 1 else 0, max_calls=1)(_describe_backend)
    began = time.perf_counter()
    try:
        return ray.get(probe.remote(load))
    except Exception as exc:  # a RayTaskError wrapping the worker's MoptError
        user_error = _cluster_error(exc)
        if user_error is not None:
            raise MoptError(f"on the Ray cluster: {user_error}") from None
        raise
    finally:
        cluster.backend_s = time.perf_counter() - began


@dataclass(frozen=True)
class ActorPlan:
    """How many inference actors a run starts and what each one holds."""

    actors: int
    num_cpus: float
    num_gpus: float

    def describe(self) -> str:
        gpus = f" and {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.actors} actor(s) of {self.num_cpus:g} CPU{gpus} each"


def plan_actors(nodes: Sequence[dict[str, float]], gpu: bool) -> ActorPlan:
    """One actor per GPU (``gpu``: the backend runs on one), else one per node's worth of CPUs.

    A GPU actor also holds its share of its node's CPUs (decoding and encoding feed the GPU). A CPU actor holds
    as many CPUs as the smallest node has, so each node runs the model with all its cores, and a node twice
    that size runs two actors.

    Raises:
        MoptError: no node has a CPU (or, with ``gpu``, a GPU).
    """
    if gpu:
        gpu_nodes = [node for node in nodes if node.get("GPU", 0) >= 1]
        if not gpu_nodes:
            raise MoptError("the backend runs on a GPU but no node of the Ray cluster has one")
        share = min(int(node.get("CPU", 0) // int(node["GPU"])) for node in gpu_nodes)
        return ActorPlan(sum(int(node["GPU"]) for node in gpu_nodes), float(share), 1.0)
    cpu_nodes = [node for node in nodes if node.get("CPU", 0) >= 1]
    if not cpu_nodes:
        raise MoptError("no node of the Ray cluster has a whole CPU; start the nodes with --num-cpus 1 or more")
    smallest = min(int(node["CPU"]) for node in cpu_nodes)
    return ActorPlan(sum(int(node["CPU"]) // smallest for node in cpu_nodes), float(smallest), 0.0)


# --- the workers ---------------------------------------------------------------------------------------


class _RunLedger:
    """Counts the deliveries and the starts of each batch and stops handing them out once the driver is interrupted.

    A batch whose worker died is retried by Ray on the restarted actor; the count of its starts lets the actor
    give up on a batch that kills its worker every time (a decoder crash on one file) instead of retrying it for
    ever. Only starts count towards that limit: a batch that was still waiting for its turn when a neighbour
    killed the worker did nothing wrong.
    """

    def __init__(self) -> None:
        self.deliveries: dict[int, int] = {}
        self.starts: dict[int, int] = {}
        self.outcomes: dict[int, dict[str, Any]] = {}
        self.stopping = False

    def arrive(self, key: int) -> tuple[int, int, dict[str, Any] | None] | None:
        """``(delivery number, earlier starts, outcome)`` of batch ``key`` reaching an actor; None: the run stops.

        ``outcome`` is the result of a run of this batch that already finished: Ray delivers a batch again when
        the worker died before its result got back (or hands it to two actors), and running it again could only
        contradict the files already written, or count deaths that were not its own.
        """
        if self.stopping:
            return None
        self.deliveries[key] = self.deliveries.get(key, 0) + 1
        return self.deliveries[key], self.starts.get(key, 0), self.outcomes.get(key)

    def start(self, key: int) -> bool:
        """Batch ``key`` starts running now (its turn came): a death from here on is its own."""
        self.starts[key] = self.starts.get(key, 0) + 1
        return True

    def finish(self, key: int, outcome: dict[str, Any]) -> bool:
        """Batch ``key`` has its result; the first one stands."""
        self.outcomes.setdefault(key, outcome)
        return True

    def stop(self) -> bool:
        self.stopping = True
        return True


class _OneAtATime(InferenceBackend):
    """A backend shared by the actor's concurrent calls: host work overlaps, inference runs one batch at a time
    (a TensorRT execution context is not re-entrant, and two CPU inferences would only share the cores)."""

    def __init__(self, backend: InferenceBackend) -> None:
        self._inner = backend
        self._lock = threading.Lock()
        self._waited = threading.local()
        self.name, self.backend = backend.name, backend.backend
        self.device, self.precision = backend.device, backend.precision

    def infer(self, batch: np.ndarray) -> np.ndarray:
        began = time.perf_counter()
        with self._lock:
            self._waited.s = getattr(self._waited, "s", 0.0) + time.perf_counter() - began
            return self._inner.infer(batch)

    def take_waited_s(self) -> float:
        """Seconds this thread waited for its turn since the last call (not inference time, for the report)."""
        waited, self._waited.s = getattr(self._waited, "s", 0.0), 0.0
        return waited

    def close(self) -> None:
        self._inner.close()


class MatteActor:
    """One Ray Data actor: the model loaded once, then every batch decoded, inferred and written here.

    Args:
        load: loads the backend on this worker.
        settings: the driver's settings (card, output kind, sizes), with the decode/encode threads of this actor.
        outdir: the output folder (absolute, seen by every node).
        ledger: the run's :class:`_RunLedger` actor.
        threads: CPU threads for the model (the CPUs this actor holds), unless the sources name their own.
    """

    def __init__(
        self, load: BackendLoader, settings: MatteSettings, outdir: str, ledger: Any, threads: int | None
    ) -> None:
        import ray

        choice = load(threads)
        self.backend = _OneAtATime(choice.backend)
        self.settings = settings
        self.outdir = Path(outdir)
        self.ledger = ledger
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="mopt-matte-ray")
        # A dying worker takes every batch it was working on down with it. A batch that ran again after a death
        # therefore runs alone: only its own deaths count towards MAX_ATTEMPTS, never a neighbour's.
        self._turns = threading.Condition()
        self._running = 0
        self._alone = False
        self._waiting_alone = 0
        self.identity = {
            "backend": self.backend.name,
            "device": self.backend.device,
            "precision": self.backend.precision,
            "node": ray.get_runtime_context().get_node_id(),
            "workers": settings.workers,
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = [json.dumps(self._run_group(json.loads(str(text)))) for text in batch[GROUP_COLUMN]]
        return {RESULT_COLUMN: np.array(outcomes, dtype=object)}

    @contextlib.contextmanager
    def _turn(self, alone: bool) -> Iterator[None]:
        """Run beside the actor's other calls, or (``alone``) once they are done and with none starting."""
        with self._turns:
            if alone:
                self._waiting_alone += 1
                self._turns.wait_for(lambda: not self._alone and self._running == 0)
                self._waiting_alone -= 1
                self._alone = True
            else:
                self._turns.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._running += 1
        try:
            yield
        finally:
            with self._turns:
                self._running -= 1
                if alone:
                    self._alone = False
                self._turns.notify_all()

    def _run_group(self, group: dict[str, Any]) -> dict[str, Any]:
        import ray

        jobs = [_Job(ImageInput(Path(p), Path(r)), Path(o), (h, w)) for p, r, o, h, w in group["jobs"]]
        paths = [str(job.image.path) for job in jobs]
        outcome: dict[str, Any] = {"key": group["key"], **self.identity}
        arrival = ray.get(self.ledger.arrive.remote(group["key"]))
        if arrival is None:
            return {**outcome, "attempt": None, "cancelled": paths}
        outcome["attempt"], died_running, earlier = arrival
        if earlier is not None:  # a repeat delivery of a batch that has its result: that result, not another run
            return {**earlier, "attempt": outcome["attempt"], "repeat": True}
        if died_running >= MAX_ATTEMPTS:
            reason = f"the Ray worker processing its batch died {MAX_ATTEMPTS} times (see the node's Ray logs)"
            return self._finished(group["key"], {**outcome, "failed": [[path, reason] for path in paths]})
        run = _MatteRun([job.image for job in jobs], [job.output for job in jobs], self.outdir, self.backend,
                        self.settings, None)  # fmt: skip
        self.backend.take_waited_s()
        try:
            # A batch that died while running once runs alone from then on, so its later deaths are its own.
            with self._turn(alone=died_running > 0):
                ray.get(self.ledger.start.remote(group["key"]))
                run.process(self.pool, [jobs])  # inference runs on this thread: its waits are this thread's
        except Exception as exc:  # process() reports per-file failures itself; this is anything else
            accounted = {failure.path for failure in run.failed}
            reason = f"the batch failed on the Ray worker: {type(exc).__name__}: {_reason(exc)}"
            run.failed.extend(MatteFailure(path, reason) for path in paths if path not in accounted)
        run.stage["infer"] = max(0.0, run.stage["infer"] - self.backend.take_waited_s())
        failed = {failure.path: failure.reason for failure in run.failed}
        return self._finished(group["key"], {
            **outcome,
            "written": [path for path in paths if path not in failed],
            "failed": [[path, reason] for path, reason in failed.items()],
            "latencies": run.latencies,
            "buckets": run.buckets,
            "stage": run.stage,
        })  # fmt: skip

    def _finished(self, key: int, outcome: dict[str, Any]) -> dict[str, Any]:
        """Record ``outcome`` as batch ``key``'s result in the ledger (a later delivery returns it) and return it."""
        import ray

        ray.get(self.ledger.finish.remote(key, outcome))
        return outcome


# --- the run -------------------------------------------------------------------------------------------


@dataclass
class RayMatteReport(MatteReport):
    """A :class:`MatteReport` of a run on Ray, with where it ran.

    Attributes:
        ray_address: ``local`` or the cluster's address.
        nodes: live nodes at the start.
        actors, actor_cpus, actor_gpus: the inference actors and what each one held.
        startup_s: seconds to start or join Ray and choose the backend on a worker (not in ``wall_s``).
        retried_batches: batches that ran again because their worker died.
    """

    ray_address: str = LOCAL
    nodes: int = 0
    actors: int = 0
    actor_cpus: float = 0.0
    actor_gpus: float = 0.0
    startup_s: float = 0.0
    retried_batches: int = 0


def remove_stale_temporaries(outputs: Iterable[Path]) -> list[Path]:
    """Delete the temporary files of interrupted writes of ``outputs`` (what a killed worker leaves).

    Only files named as :func:`optimize.fileio.atomic_output` names the temporary of one of ``outputs`` are
    touched. Returns the removed paths.
    """
    wanted: dict[Path, set[tuple[str, str]]] = {}
    for output in outputs:
        wanted.setdefault(output.parent, set()).add((output.stem, output.suffix))
    removed = []
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:  # never created: nothing was written there
            continue
        for entry in entries:
            match = _TEMPORARY.match(entry.name)
            if match and (match["stem"], match["suffix"] or "") in names and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _check_output_folder(inputs: Sequence[str | Path], outdir: Path) -> None:
    """The checks ``mattes_from_images`` makes before anything is written."""
    if outdir.exists() and not outdir.is_dir():
        raise MoptError(f"output folder {outdir} is a file; choose a folder for -o")
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == outdir.resolve():
            raise MoptError(
                f"output folder {outdir} is the input folder {item}: outputs would mix with the inputs; "
                "choose another -o"
            )


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[Any]:
    """The run's Ray Data settings (no progress bars of its own, errors only), restored afterwards."""
    data = require("ray.data")
    context = data.DataContext.get_current()
    changes = {"enable_progress_bars": False, "print_on_execution_start": False, "enable_auto_log_stats": False}
    before = {name: getattr(context, name) for name in changes}
    logger = logging.getLogger("ray.data")
    level = logger.level
    for name, value in changes.items():
        setattr(context, name, value)
    logger.setLevel(logging.ERROR)
    try:
        yield data
    finally:
        for name, value in before.items():
            setattr(context, name, value)
        logger.setLevel(level)


class _Tally:
    """The driver's account of a run: what the actors reported, per planned file."""

    def __init__(self, run: _MatteRun, planned: list[str], original: dict[str, str], notify: ProgressCallback) -> None:
        self.run, self.planned, self.original, self.notify = run, planned, original, notify
        self.accounted: set[str] = set()
        self.identities: dict[str, dict[str, Any]] = {}
        self.retried: set[int] = set()

    def add(self, outcome: dict[str, Any]) -> None:
        run = self.run
        self.identities.setdefault(outcome["node"], outcome)
        if (outcome.get("attempt") or 1) > 1:
            self.retried.add(outcome["key"])
        if outcome.get("repeat"):  # the result of a run already tallied, delivered again: nothing new
            fresh = [p for p in outcome.get("written", []) + [f[0] for f in outcome.get("failed", [])]
                     if p not in self.accounted]  # fmt: skip
            if not fresh:
                return
        for path in outcome.get("written", []):
            if path not in self.accounted:
                self.accounted.add(path)
                run.processed += 1
        for path, reason in outcome.get("failed", []):
            if path not in self.accounted:
                self.accounted.add(path)
                run.failed.append(MatteFailure(self.original.get(path, path), reason))
        run.latencies.extend(outcome.get("latencies", []))
        for key, count in outcome.get("buckets", {}).items():
            run.buckets[key] = run.buckets.get(key, 0) + count
        for key, seconds in outcome.get("stage", {}).items():
            run.stage[key] = run.stage.get(key, 0.0) + seconds
        run.finished = len(self.accounted)
        self.notify("matte", run.finished, len(self.planned))

    def account_for_the_rest(self) -> None:
        """Every planned file without a result is a failure: none is lost silently."""
        for path in self.planned:
            if path not in self.accounted:
                self.accounted.add(path)
                self.run.failed.append(MatteFailure(self.original[path], "no result came back from the Ray cluster"))
        self.run.finished = len(self.accounted)


def _consume(dataset: Any, results: queue.Queue) -> None:
    """Iterate the dataset in a thread of its own, so that Ctrl-C in the driver's thread does not cut it off."""
    try:
        # prefetch_batches=0: a block is handed over as soon as it arrives (with prefetching, Ray Data holds each
        # block back until the next one is there, and a slow batch would delay the result of a finished one).
        for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            for text in block[RESULT_COLUMN]:
                results.put(("outcome", json.loads(str(text))))
    except BaseException as exc:  # handed to the driver's thread, which raises it
        results.put(("error", exc))
    finally:
        results.put(("end", None))


def _pump(results: queue.Queue, tally: _Tally) -> None:
    """Tally results until the dataset is done; raises what the consumer raised."""
    while True:
        try:
            kind, item = results.get(timeout=RESULT_POLL_S)
        except queue.Empty:
            continue
        if kind == "end":
            return
        if kind == "error":
            user_error = _cluster_error(item)
            if user_error is not None:
                raise MoptError(f"on the Ray cluster: {user_error}") from item
            raise item
        tally.add(item)


def mattes_from_images_on_ray(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    *,
    cluster: RayCluster,
    load: BackendLoader,
    choice: BackendChoice,
    output: str = "rgba",
    background: tuple[int, int, int] = (255, 255, 255),
    batch: int = DEFAULT_BATCH,
    workers: int | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    overwrite: bool = False,
    compression: str = DEFAULT_PNG_COMPRESSION,
    min_side: int = SIZE_STEP,
    report_path: str | Path | None = None,
    progress: ProgressCallback | None = None,
    plan: ActorPlan | None = None,
    models: Sequence[dict] = (),
) -> RayMatteReport:
    """Matte every image of ``inputs`` into ``outdir`` on a Ray cluster; the outputs of :func:`mattes_from_images`.

    Args:
        inputs: image files, folders (walked recursively) and glob patterns, on a file system every node sees.
        outdir: output folder, likewise shared; the input folder structure is kept.
        cluster: from :func:`ray_cluster`.
        load: loads the model on each actor (:func:`backend_loader`).
        choice: the backend the actors run (:func:`backend_on_cluster`): its card and limits plan the batches.
        output, background, batch, max_side, overwrite, compression, min_side: as for :func:`mattes_from_images`.
        workers: decode/encode threads per actor (default: the CPUs each actor holds).
        report_path: where to write the report JSON (also written when the run is interrupted).
        progress: called as ``progress(phase, done, total)`` with phase ``"scan"`` then ``"matte"``.
        plan: the actors to start (default: :func:`plan_actors` for the cluster and the backend's device).
        models: the identities of the model files the actors run, recorded in the report.

    Returns:
        The report; ``report.failed`` lists every input that produced no output.

    Raises:
        MoptError: bad arguments, no inputs, outputs that would overwrite inputs, a model the actors cannot load.
        KeyboardInterrupt: after an interruption, once the batches being processed are written.
    """
    ray = _ray()
    notify = progress or (lambda phase, done, total: None)
    settings = MatteSettings(choice.normalization, output, background, batch, default_workers(), max_side, overwrite,
                             compression, min_side)  # fmt: skip
    settings.validate()
    outdir = Path(outdir)
    _check_output_folder(inputs, outdir)
    images = expand_image_inputs(inputs, exclude=outdir)
    outputs = output_paths(images, outdir)
    plan = plan or plan_actors(cluster.nodes, gpu=choice.backend.device != "cpu")
    actor_settings = dataclasses.replace(settings, workers=workers or max(1, int(plan.num_cpus)))
    # The plain run's planning, on the driver: headers read in threads, complete outputs skipped, batches cut.
    run = _MatteRun(images, outputs, outdir, choice.backend, settings, notify, models)
    with ThreadPoolExecutor(settings.workers, thread_name_prefix="mopt-matte-scan") as pool:
        batches = run.plan(pool)
    original = {str(job.image.path.absolute()): str(job.image.path) for group in batches for job in group}
    tally = _Tally(run, list(original), original, notify)

    def report(interrupted: bool = False) -> RayMatteReport:
        base = run.report(interrupted=interrupted)
        first = next(iter(tally.identities.values()), None)
        if first is not None:
            base.backend, base.device, base.precision = first["backend"], first["device"], first["precision"]
            base.workers = first["workers"]
            differing = {(i["backend"], i["device"]) for i in tally.identities.values()}
            if len(differing) > 1:  # nodes of different kinds: name them all
                base.backend = ", ".join(sorted({name for name, _ in differing}))
                base.device = ", ".join(sorted({device for _, device in differing}))
        else:
            base.workers = actor_settings.workers
        return RayMatteReport(
            **dataclasses.asdict(base) | {"failed": base.failed},
            ray_address=cluster.address,
            nodes=len(cluster.nodes),
            actors=plan.actors,
            actor_cpus=plan.num_cpus,
            actor_gpus=plan.num_gpus,
            startup_s=cluster.startup_s + cluster.backend_s,
            retried_batches=len(tally.retried),
        )

    def finish(interrupted: bool = False) -> RayMatteReport:
        remove_stale_temporaries(outputs)
        result = report(interrupted)
        if report_path is not None:
            write_json(report_path, result.to_dict())
        return result

    notify("matte", 0, len(original))
    if not batches:
        return finish()
    rows = [
        {GROUP_COLUMN: json.dumps({"key": key, "jobs": [
            [str(job.image.path.absolute()), str(job.image.relative), str(job.output.absolute()), *job.bucket]
            for job in group
        ]})}
        for key, group in enumerate(batches)
    ]  # fmt: skip
    ledger_actor = ray.remote(num_cpus=0, max_restarts=0)(_RunLedger).remote()
    results: queue.Queue = queue.Queue()
    with _quiet_ray_data() as data, _sigterm_as_interrupt():
        # One row per block, so one task per batch: each result streams back on its own, as soon as it is written.
        dataset = data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            MatteActor,
            batch_size=1,  # one row is one batch of the plan: the batches a plain run infers
            batch_format="numpy",
            compute=data.ActorPoolStrategy(
                size=min(plan.actors, len(rows)),  # an actor without a batch would only load the model
                max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                enable_true_multi_threading=True,
            ),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus or None,
            fn_constructor_kwargs={
                "load": load,
                "settings": actor_settings,
                "outdir": str(outdir.absolute()),
                "ledger": ledger_actor,
                "threads": max(1, int(plan.num_cpus)) if not plan.num_gpus else None,
            },
        )
        consumer = threading.Thread(target=_consume, args=(dataset, results), name="mopt-ray-results", daemon=True)
        consumer.start()
        try:
            _pump(results, tally)
        except KeyboardInterrupt:
            ray.get(ledger_actor.stop.remote())
            try:
                _pump(results, tally)  # the batches being processed finish; the others are skipped at once
            except KeyboardInterrupt:
                cluster.disconnect()  # a second Ctrl-C: stop now (the actors end with the driver)
            finish(interrupted=True)
            raise
    tally.account_for_the_rest()
    return finish()
