"""Serve a matting model with Triton Inference Server (through PyTriton), and load-test a running server.

``mopt serve`` starts a real ``tritonserver`` (bundled with ``nvidia-pytriton``; it runs on CPU-only machines
too) with two models, both dynamically batched:

* ``<name>`` (default ``cvunet``): input ``image``, an encoded image (JPEG, PNG, WebP, BMP or TIFF bytes, or
  their base64 text for JSON clients; TYPE_BYTES, one element per image). The server decodes it (EXIF
  orientation, any pixel mode), infers, and resizes the matte back to the image's own size.
* ``<name>_rgb``: input ``rgb``, a uint8 H x W x 3 tensor, for clients that already hold decoded pixels.

Both return ``alpha`` (uint8 H x W, the matte at the input's size), ``alpha_png`` (the same matte as an 8-bit
greyscale PNG) and ``error`` (empty, or why this request failed); only the outputs a request asks for are
computed. The matte is the one ``mopt matte --output alpha`` writes: same decoding, inference size
(:func:`optimize.matte.inference_size`), preprocessing, backend choice, resizing and rounding.

Images of different sizes in one dynamic batch are grouped by inference size (sides snapped to multiples of
32, so similar sizes share a group); each group runs as one model batch, in chunks of at most the max batch.
Equal-size traffic (one camera, one product pipeline) thus batches fully, and mixed traffic still batches
what can be stacked, without padding that would change the matte at the borders.

PyTriton reports a failure of the inference callable for the whole dynamic batch, so one undecodable upload
would fail every request batched with it. Instead, a bad request gets its reason in ``error`` (and no
``alpha``/``alpha_png``) while the others in the batch are served.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from optimize.backends import InferenceBackend, ModelSources, backend_spec
from optimize.card import ModelCard, Normalization, input_card
from optimize.defaults import DEFAULT_HOST as DEFAULT_HOST
from optimize.defaults import DEFAULT_INSTANCES as DEFAULT_INSTANCES  # see _start_triton
from optimize.defaults import DEFAULT_MAX_QUEUE_DELAY_MS as DEFAULT_MAX_QUEUE_DELAY_MS
from optimize.defaults import DEFAULT_MODEL_NAME as DEFAULT_MODEL_NAME
from optimize.defaults import DEFAULT_PORT as DEFAULT_PORT
from optimize.deploy import validate_model_name
from optimize.deps import require
from optimize.errors import MoptError
from optimize.identity import ModelIdentity, model_identity
from optimize.images import (
    DECODE_FORMATS,
    DecodedImage,
    decoded_from_image,
    encode_png,
    matte_pixels,
    preprocess,
    resize_alpha,
    resize_rgb,
)
from optimize.matte import (
    BACKEND_PREFERENCE,
    DEFAULT_MAX_SIDE,
    SIZE_STEP,
    BackendChoice,
    default_max_side,
    inference_size,
    select_backend,
)

DEFAULT_MAX_BATCH = 8
# Seconds tritonserver waits for in-flight requests (and idle keep-alive connections) when stopping.
EXIT_TIMEOUT_S = 5
START_ATTEMPTS = 3  # see _start_triton
PNG_COMPRESSION = "fast"  # PNG is lossless at every level; the fastest one keeps serving latency low

IMAGE_INPUT = "image"
RGB_INPUT = "rgb"
ALPHA_OUTPUT = "alpha"
PNG_OUTPUT = "alpha_png"
ERROR_OUTPUT = "error"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failure_summary(exc: BaseException) -> str:
    """First and last line of an error whose text is a remote traceback (what Triton relays from a model)."""
    lines = [line.strip() for line in str(exc).replace("\\n", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("File ", "At:", "^"))]
    if len(lines) <= 1:
        return _first_line(exc)
    return f"{lines[0]} ... {lines[-1]}"


# --- decoding and encoding ------------------------------------------------------------------------------


def _unwrap_base64(data: bytes) -> bytes:
    """The image bytes of a base64 text (what JSON clients such as curl send); other data as it is.

    Encoded images start with a binary signature (PNG ``\\x89PNG``, JPEG ``\\xff\\xd8``...) that is never
    valid base64 text, so the two cannot be confused.
    """
    if data.isascii():
        try:
            return base64.b64decode(b"".join(data.split()), validate=True)  # line breaks of `base64` removed
        except binascii.Error:
            return data
    return data


def decode_image(data: bytes) -> DecodedImage:
    """Encoded image bytes -> the oriented image with its own transparency, as ``mopt matte`` reads files.

    The formats are ``mopt matte``'s (:data:`optimize.images.DECODE_FORMATS`): an upload is decoded only by
    the decoders a folder of photos would be. Base64 text of such bytes is accepted too.
    """
    data = _unwrap_base64(bytes(data))
    if not data:
        raise MoptError("empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=DECODE_FORMATS) as image:
            image.load()
            return decoded_from_image(image)
    except UnidentifiedImageError as exc:
        raise MoptError(f"cannot decode image ({len(data)} bytes): not a JPEG, PNG, WebP, BMP or TIFF image") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MoptError(f"cannot decode image ({len(data)} bytes): {exc}") from exc


# --- the predictor: decode -> group by size -> infer -> resize back ---------------------------------------


@dataclass
class ServeStats:
    """What the server did, for the shutdown summary."""

    requests: int = 0
    images: int = 0
    failed_requests: int = 0
    batches: int = 0  # dynamic batches received from Triton
    model_runs: int = 0  # backend.infer calls (one per size group and chunk)


class MattePredictor:
    """Turns decoded images into 8-bit mattes at their own size with one backend; safe to call from threads.

    Host work (decoding, resizing, PNG encoding) runs in the calling thread, so several Triton model instances
    overlap it with inference; the backend itself runs one batch at a time (a TensorRT execution context is
    not re-entrant).
    """

    def __init__(
        self,
        backend: InferenceBackend,
        normalization: ModelCard | Normalization,
        max_side: int = DEFAULT_MAX_SIDE,
        max_batch: int = DEFAULT_MAX_BATCH,
        min_side: int = SIZE_STEP,
    ) -> None:
        inference_size(64, 64, max_side, min_side=min_side)  # validates the sizes as `mopt matte` does
        if max_batch < 1:
            raise MoptError(f"--max-batch must be positive, got {max_batch}")
        self.backend = backend
        self.normalization = normalization
        self.max_side = max_side
        self.max_batch = max_batch
        self.min_side = min_side
        self.stats = ServeStats()
        self._infer_lock = threading.Lock()
        self._stats_lock = threading.Lock()

    def alphas_from_images(self, images: Sequence[DecodedImage]) -> list[np.ndarray | str]:
        """Decoded images (any sizes) -> uint8 mattes, each the size of its image, or why it failed.

        Images are grouped by inference size and each group runs in chunks of at most ``max_batch``; the
        matte is made as ``mopt matte --output alpha`` makes it (float resize to full size, rounding, the
        input's own transparency applied).
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            rule = input_card(self.normalization).size
            groups[inference_size(*image.size, self.max_side, min_side=self.min_side, rule=rule)].append(index)
        mattes: list[np.ndarray | str] = [""] * len(images)
        for (height, width), indices in groups.items():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start : start + self.max_batch]
                batch = preprocess([resize_rgb(images[i].rgb, height, width) for i in chunk], self.normalization)
                try:
                    with self._infer_lock:
                        alpha = self.backend.infer(batch)  # N,1,h,w
                    if alpha.shape != (len(chunk), 1, height, width):
                        raise MoptError(f"the model returned shape {alpha.shape} for input {batch.shape}")
                except Exception as exc:  # one failed group fails its requests, not the whole dynamic batch
                    for i in chunk:
                        mattes[i] = f"inference failed at {height}x{width}: {_first_line(exc)}"
                    continue
                finally:
                    with self._stats_lock:
                        self.stats.model_runs += 1
                for i, a in zip(chunk, alpha[:, 0], strict=True):
                    full = resize_alpha(a, *images[i].size)
                    mattes[i] = matte_pixels(images[i], full, "alpha")
        return mattes

    def _respond(self, requests: list, decoded: list[list[DecodedImage] | str]) -> list[dict[str, np.ndarray]]:
        """Infer every request that decoded, then build one response per request (failures in ``error``)."""
        flat = [image for item in decoded if not isinstance(item, str) for image in item]
        mattes = iter(self.alphas_from_images(flat))
        responses = []
        failed = 0
        for request, item in zip(requests, decoded, strict=True):
            wanted = set(getattr(request, "requested_output_names", None) or (ALPHA_OUTPUT, PNG_OUTPUT, ERROR_OUTPUT))
            alphas = [next(mattes) for _ in item] if not isinstance(item, str) else []
            error = item if isinstance(item, str) else next((a for a in alphas if isinstance(a, str)), "")
            if not error and ALPHA_OUTPUT in wanted and len({a.shape for a in alphas}) > 1:
                error = (
                    f"the {len(alphas)} images of this request have different sizes, which one uint8 '{ALPHA_OUTPUT}' "
                    f"tensor cannot hold: request only '{PNG_OUTPUT}' or send one image per request"
                )
            if error:
                failed += 1
                responses.append(_error_response(_request_count(request), error))
                continue
            # Only the outputs asked for are computed (PNG encoding is the costly one); Triton would drop the
            # others from the response anyway.
            response = {ERROR_OUTPUT: np.full((len(alphas), 1), b"", dtype=object)}
            if ALPHA_OUTPUT in wanted:
                response[ALPHA_OUTPUT] = np.stack(alphas)
            if PNG_OUTPUT in wanted:
                response[PNG_OUTPUT] = np.array([[encode_png(a, PNG_COMPRESSION)] for a in alphas], dtype=object)
            responses.append(response)
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.requests += len(requests)
            self.stats.failed_requests += failed
            self.stats.images += len(flat)
        return responses

    def infer_encoded(self, requests: list) -> list[dict[str, np.ndarray]]:
        """PyTriton callable of the encoded-image model: each request holds ``image`` as N x 1 bytes."""
        decoded: list[list[DecodedImage] | str] = []
        for request in requests:
            try:
                items = np.asarray(request[IMAGE_INPUT]).reshape(-1)
                decoded.append([decode_image(bytes(item)) for item in items])
            except MoptError as exc:
                decoded.append(str(exc))
        return self._respond(requests, decoded)

    def infer_rgb(self, requests: list) -> list[dict[str, np.ndarray]]:
        """PyTriton callable of the uint8-tensor model: each request holds ``rgb`` as N x H x W x 3 uint8."""
        decoded: list[list[DecodedImage] | str] = []
        for request in requests:
            batch = np.asarray(request[RGB_INPUT])
            if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[1] == 0 or batch.shape[2] == 0:
                decoded.append(f"'{RGB_INPUT}' must be N x H x W x 3 uint8 with H, W > 0, got {list(batch.shape)}")
            else:
                decoded.append([DecodedImage(np.ascontiguousarray(image, dtype=np.uint8)) for image in batch])
        return self._respond(requests, decoded)


def _request_count(request: Any) -> int:
    for value in request.values():
        return int(np.asarray(value).shape[0]) if np.asarray(value).ndim else 1
    return 1


def _error_response(count: int, message: str) -> dict[str, np.ndarray]:
    """A failed request carries only ``error`` (PyTriton cannot send zero-size tensors, and no matte is better
    than a fake one)."""
    return {ERROR_OUTPUT: np.full((count, 1), message.encode(), dtype=object)}


# --- the model and its backend ----------------------------------------------------------------------------


@dataclass
class ServedModel:
    """The backend chosen for serving (``mopt matte``'s choice) and the file it serves."""

    choice: BackendChoice
    source: Path
    identity: ModelIdentity | None = None  # path, sha256, architecture, precision of ``source``

    @property
    def backend(self) -> InferenceBackend:
        return self.choice.backend


def served_model_from_files(
    onnx: Path | None = None,
    engine: Path | None = None,
    backend: str | None = None,
    threads: int | None = None,
    probe_size: tuple[int, int] | None = None,
    identity: ModelIdentity | None = None,
) -> ServedModel:
    """Load the model to serve with the backend ``mopt matte`` would pick for it.

    An ONNX runs on the best runtime here (ONNX Runtime CUDA, else the faster of OpenVINO and ONNX Runtime); an
    engine runs on TensorRT only: serving its source ONNX instead would be a different model than the one asked for.

    Args:
        onnx: an ONNX model (exported by ``mopt export``: its metadata holds the normalization).
        engine: a TensorRT engine with its JSON sidecar (its profile bounds the batch and sizes served).
        backend: a registered backend name to use instead of the automatic choice.
        threads: CPU threads for ONNX Runtime and OpenVINO.
        probe_size: the largest size served: on a CPU, OpenVINO and ONNX Runtime are timed at it and the faster
            serves (see :func:`optimize.matte.select_backend`).
        identity: the model's identity when the caller has already read it (to print it before the probe).

    Raises:
        MoptError: neither or both given, a missing file or sidecar, or no backend that can run it here.
    """
    if (onnx is None) == (engine is None):
        raise MoptError("give exactly one model to serve: --onnx MODEL.onnx or --engine MODEL.plan")
    source = Path(engine or onnx)  # type: ignore[arg-type]
    if not source.is_file():
        raise MoptError(f"model {source} does not exist; pass the path of an ONNX model or a TensorRT engine")
    # Read first: a file that is no ONNX (or an engine without a readable sidecar) is named as such, before
    # backends are tried and each reports its own failure.
    identity = identity or model_identity(source)
    if engine is not None:
        from optimize.deploy import read_engine_sidecar

        sidecar = read_engine_sidecar(source)  # profiles known, and the sidecar describes this very engine
        sources = ModelSources(engine=source, threads=threads)
        preference: tuple[str, ...] = (backend,) if backend else ("tensorrt",)
        reason = backend_spec(preference[0]).unavailable_reason(sources)
        if reason:
            built_from = sidecar.get("onnx") or "the ONNX it was built from"
            raise MoptError(f"cannot serve engine {source} here: {reason}; serve {built_from} with --onnx instead")
    else:
        sources = ModelSources(onnx=[source], threads=threads)
        preference = (backend,) if backend else tuple(n for n in BACKEND_PREFERENCE if n not in ("tensorrt", "torch"))
    fix = "serve another model with --onnx or --engine, or name a backend that runs here with --backend"
    choice = select_backend(sources, preference=preference, fix=fix, probe_size=probe_size)
    return ServedModel(choice, source, identity)


# --- the server ---------------------------------------------------------------------------------------------


@dataclass
class ServeOptions:
    """How ``mopt serve`` listens and batches."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    grpc_port: int | None = None  # default: port + 1
    metrics_port: int | None = None  # default: port + 2
    name: str = DEFAULT_MODEL_NAME
    max_batch: int | None = None  # default: the engine's profile max batch, else DEFAULT_MAX_BATCH
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    max_side: int | None = None  # None: the model card's preferred side, else DEFAULT_MAX_SIDE
    instances: int = DEFAULT_INSTANCES
    log_file: Path | None = None  # Triton's log (default: <tmp>/mopt-serve-<port>.log)
    verbose: bool = False  # Triton's log on the console instead of the file

    def triton_log_file(self) -> Path:
        """Where Triton's own log goes unless ``verbose``."""
        return self.log_file or Path(tempfile.gettempdir()) / f"mopt-serve-{self.port}.log"

    def ports(self) -> dict[str, int]:
        return {
            "HTTP": self.port,
            "gRPC": self.grpc_port if self.grpc_port is not None else self.port + 1,
            "metrics": self.metrics_port if self.metrics_port is not None else self.port + 2,
        }


def python_library_dir() -> str | None:
    """The folder holding this interpreter's ``libpython`` (None for a static build)."""
    return sysconfig.get_config_var("LIBDIR")


def ensure_python_library_path(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Put the interpreter's library folder first on ``LD_LIBRARY_PATH`` of ``environ``; True if it changed it.

    PyTriton's Python backend stub is a separate executable linked against ``libpython3.X.so``. Without this
    folder on the loader path it binds whatever ``libpython3.X`` the system has, of another patch release, and
    model loading fails inside the stub. The server and its stubs are spawned with a copy of this process's
    environment, so setting it here, before the server starts, is enough (no re-exec needed).
    """
    libdir = python_library_dir()
    if not libdir:
        return False
    current = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if current and current[0] == libdir:
        return False
    environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in current if p != libdir]])
    return True


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise a MoptError naming the first of ``ports`` that something already listens on.

    The check binds each port the way a server does (``SO_REUSEADDR``: a port in TIME_WAIT counts as free).
    """
    if len(set(ports.values())) != len(ports):
        raise MoptError(f"ports must differ, got {', '.join(f'{k} {v}' for k, v in ports.items())}")
    for what, port in ports.items():
        if not 1 <= port <= 65535:
            raise MoptError(f"{what} port {port} is out of range 1..65535")
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise MoptError(f"cannot resolve host {host!r}: {exc}; use an IP address such as 127.0.0.1") from exc
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except PermissionError as exc:
                raise MoptError(f"no permission to listen on {host}:{port} ({what}); use a port above 1023") from exc
            except OSError as exc:
                flag = {"HTTP": "--port", "gRPC": "--grpc-port", "metrics": "--metrics-port"}.get(what, "--port")
                raise MoptError(
                    f"{what} port {port} on {host} is already in use (another server?); stop it or pick a free "
                    f"port with {flag}"
                ) from exc


def _bind_models(
    triton: Any, predictor: MattePredictor, options: ServeOptions, max_batch: int, preferred: list[int]
) -> list[str]:
    """Bind the encoded-image model and the uint8-tensor model to ``triton``; returns their names."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    def config() -> Any:
        return ModelConfig(
            max_batch_size=max_batch,
            batcher=DynamicBatcher(
                max_queue_delay_microseconds=int(round(options.max_queue_delay_ms * 1000)),
                preferred_batch_size=preferred or None,
            ),
        )

    outputs = [
        Tensor(name=ALPHA_OUTPUT, dtype=np.uint8, shape=(-1, -1)),
        Tensor(name=PNG_OUTPUT, dtype=np.bytes_, shape=(1,)),
        Tensor(name=ERROR_OUTPUT, dtype=np.bytes_, shape=(1,)),
    ]
    # One callable per instance: Triton hands batches to idle instances, so host work overlaps inference.
    triton.bind(
        model_name=options.name,
        infer_func=[predictor.infer_encoded] * options.instances,
        inputs=[Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,))],
        outputs=outputs,
        config=config(),
    )
    rgb_name = f"{options.name}_rgb"
    triton.bind(
        model_name=rgb_name,
        infer_func=[predictor.infer_rgb] * options.instances,
        inputs=[Tensor(name=RGB_INPUT, dtype=np.uint8, shape=(-1, -1, 3))],
        outputs=outputs,
        config=config(),
    )
    return [options.name, rgb_name]


@dataclass
class ServerInfo:
    """What is being served where; passed to ``on_ready``."""

    url: str
    grpc_url: str
    metrics_url: str
    models: list[str]
    backend: str
    max_batch: int
    notes: list[str]
    log_file: Path | None = None  # where Triton's own log goes (None: the console, with --verbose)


def _start_triton(config: Any, bind: Callable[[Any], list[str]], stop: threading.Event) -> tuple[Any, list[str]]:
    """Start Triton and load the models, retrying a start that lost PyTriton's instance handshake race.

    With several instances per model, PyTriton's second instance may connect to the first one's handshake
    socket between its ``bind`` and ``listen`` and be refused; on a loaded machine that fails the model load
    now and then. A fresh start succeeds, so such a failure is retried a few times; any other is reported.
    """
    from pytriton.triton import Triton, TritonSecurityConfig

    # PyTriton guards some endpoints with a token by default; statistics stay open (as in plain Triton) so
    # that `mopt bench-serve` can report the batch sizes the dynamic batcher formed.
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
    for attempt in range(1, START_ATTEMPTS + 1):
        triton = Triton(config=config, security_config=security)
        try:
            models = bind(triton)
            triton.run()
            return triton, models
        except Exception as exc:  # PyTriton and tritonclient raise their own types for a failed start or load
            triton.stop()
            race = "get_config_from_handshake_server" in str(exc) and "ConnectionRefusedError" in str(exc)
            if not race or attempt == START_ATTEMPTS or stop.is_set():
                raise MoptError(f"Triton failed to start: {_failure_summary(exc)}") from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def serve_model(
    model: ServedModel,
    options: ServeOptions,
    stop: threading.Event | None = None,
    on_ready: Callable[[ServerInfo], None] | None = None,
) -> ServeStats:
    """Run Triton with ``model`` until ``stop`` is set, SIGINT/SIGTERM arrives, or the server dies.

    Args:
        model: from :func:`served_model_from_files`; its backend is closed when this returns.
        options: ports, model name, batching.
        stop: set it (from another thread) to shut down; signals set it too when this runs in the main thread.
        on_ready: called once the models are loaded and the endpoints answer.

    Returns:
        What was served.

    Raises:
        MoptError: a busy port, a bad option, PyTriton missing, or Triton failing to start or dying.
    """
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}
    triton = None
    try:
        require("pytriton")
        if options.instances < 1:
            raise MoptError(f"--instances must be at least 1, got {options.instances}")
        validate_model_name(options.name)
        ports = options.ports()
        check_ports_free(options.host, ports)
        limits = model.choice.limits
        max_batch = options.max_batch or (limits.max_batch if limits else DEFAULT_MAX_BATCH)
        if limits is not None and max_batch > limits.max_batch:
            raise MoptError(
                f"--max-batch {max_batch} exceeds the engine's profile max batch {limits.max_batch}; "
                f"use at most {limits.max_batch}"
            )
        # The same batch and size bounds `mopt matte` derives from the backend (an engine's profile).
        requested_side = default_max_side(model.choice.normalization, options.max_side)
        max_batch, max_side, min_side = model.choice.fit(max_batch, requested_side)
        predictor = MattePredictor(model.backend, model.choice.normalization, max_side, max_batch, min_side)
        # TensorRT tuned its kernels for the profile's batches: let Triton aim for the largest one.
        preferred = [max_batch] if limits is not None else []

        ensure_python_library_path()
        from pytriton.triton import TritonConfig

        from optimize.engine import gpu_environment

        log_file = options.triton_log_file()
        if not options.verbose:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.write_text("")  # this run's log only: Triton appends

        config = TritonConfig(
            http_address=options.host,
            http_port=ports["HTTP"],
            grpc_address=options.host,
            grpc_port=ports["gRPC"],
            metrics_address=options.host,
            metrics_port=ports["metrics"],
            exit_timeout_secs=EXIT_TIMEOUT_S,
            log_verbose=0,
            # Triton's start-up log is ~70 lines, some starting with "E" or "Error:" on a healthy CPU machine
            # (no CUDA, no NVML): it goes to a file the summary names, unless the user asked to see it.
            log_file=None if options.verbose else log_file,
            allow_gpu_metrics=gpu_environment().gpu,
        )
        previous = _install_stop_handlers(stop)
        try:
            triton, models = _start_triton(
                config, lambda server: _bind_models(server, predictor, options, max_batch, preferred), stop
            )
        except MoptError as exc:
            if options.verbose:
                raise
            raise MoptError(f"{exc} (Triton's log: {log_file})") from exc
        host = f"[{options.host}]" if ":" in options.host else options.host
        info = ServerInfo(
            url=f"http://{host}:{ports['HTTP']}",
            grpc_url=f"{host}:{ports['gRPC']}",
            metrics_url=f"http://{host}:{ports['metrics']}/metrics",
            models=models,
            backend=model.choice.describe(),
            max_batch=max_batch,
            notes=list(model.choice.notes),
            log_file=None if options.verbose else log_file,
        )
        if on_ready is not None:
            on_ready(info)
        while not stop.wait(0.5):
            if not triton.is_alive():
                if stop.wait(0.2):  # a Ctrl-C reaches tritonserver too and may stop it first
                    break
                where = "its log lines above" if options.verbose else f"its log in {log_file}"
                raise MoptError(f"Triton Inference Server stopped unexpectedly; see {where}")
    finally:
        if triton is not None:
            triton.stop()
        model.backend.close()
        _restore_handlers(previous)
    return predictor.stats


def _install_stop_handlers(stop: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM set ``stop`` (so the server shuts down in order) when called from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


# --- load testing a running server -----------------------------------------------------------------------


@dataclass
class LoadResult:
    """One concurrency level of a load run."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    mean_batch: float | None = None  # images per model execution on the server, when its statistics are open


def _client_url(url: str) -> str:
    """``http://host:port/`` -> ``host:port`` (tritonclient's form)."""
    for scheme in ("http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


def encoded_images_from_folder(folder: str | Path, limit: int | None = None) -> list[bytes]:
    """The bytes of the images in ``folder`` (sent as they are: the server decodes them)."""
    from optimize.images import list_images

    return [p.read_bytes() for p in list_images(folder)[:limit]]


def synthetic_encoded_images(count: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """``count`` synthetic composites as JPEG (quality 92, like camera output)."""
    from optimize.synthetic import synthetic_sample

    payloads = []
    for index in range(count):
        rgb, _ = synthetic_sample(index, height, width, seed=seed)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
        payloads.append(buffer.getvalue())
    return payloads


def wait_for_server(url: str, model: str, timeout_s: float = 60.0) -> None:
    """Block until the server at ``url`` is ready and serves ``model``, or raise a MoptError."""
    require("tritonclient")  # a missing package is reported with the extra that installs it
    http = require("tritonclient.http")
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            client = http.InferenceServerClient(_client_url(url), connection_timeout=2.0, network_timeout=2.0)
            try:
                if client.is_server_ready() and client.is_model_ready(model):
                    return
                last = f"server up, model {model!r} not ready"
            finally:
                client.close()
        except Exception as exc:  # connection refused and friends come as several gevent/socket types
            last = _first_line(exc)
        time.sleep(0.25)
    raise MoptError(
        f"no Triton server with model {model!r} ready at {url} after {timeout_s:.0f}s ({last}); "
        f"start one with `mopt serve`"
    )


def _infer_once(client: Any, http: Any, model: str, payload: bytes) -> str:
    """Send one image; return the server's error text ('' on success)."""
    tensor = http.InferInput(IMAGE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[payload]], dtype=object), binary_data=True)
    outputs = [
        http.InferRequestedOutput(ALPHA_OUTPUT, binary_data=True),
        http.InferRequestedOutput(ERROR_OUTPUT, binary_data=True),
    ]
    result = client.infer(model, [tensor], outputs=outputs)
    error = result.as_numpy(ERROR_OUTPUT)
    return error.reshape(-1)[0].decode() if error is not None and error.size else ""


class _LoadLevel:
    """One concurrency level: ``clients`` threads sharing a request budget and a deadline."""

    def __init__(
        self,
        http: Any,
        address: str,
        model: str,
        payloads: Sequence[bytes],
        clients: int,
        requests: int,
        warmup: int,
        timeout_s: float,
    ) -> None:
        self.http, self.address, self.model, self.payloads = http, address, model, payloads
        self.clients, self.requests, self.warmup, self.timeout_s = clients, requests, warmup, timeout_s
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.issued = 0
        self.deadline = float("inf")
        self.lock = threading.Lock()
        self.warmed = threading.Barrier(clients + 1)
        self.go = threading.Event()

    def _next_index(self) -> int | None:
        with self.lock:
            if self.issued >= self.requests or time.monotonic() >= self.deadline:
                return None
            self.issued += 1
            return self.issued - 1

    def client(self, seed: int) -> None:
        client = self.http.InferenceServerClient(
            self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
        )
        try:
            try:
                for i in range(self.warmup):
                    error = _infer_once(client, self.http, self.model, self.payloads[(seed + i) % len(self.payloads)])
                    if error:
                        raise MoptError(error)
            except Exception as exc:  # the server's answer or a network error: stop the level and say why
                with self.lock:
                    self.errors.append(_first_line(exc))
                self.warmed.abort()
                return
            self.warmed.wait()
            self.go.wait()
            while (index := self._next_index()) is not None:
                begin = time.perf_counter()
                try:
                    error = _infer_once(client, self.http, self.model, self.payloads[index % len(self.payloads)])
                except Exception as exc:  # tritonclient raises InferenceServerException or socket errors
                    error = _first_line(exc)
                elapsed_ms = (time.perf_counter() - begin) * 1e3
                with self.lock:
                    if error:
                        self.errors.append(error)
                    else:
                        self.latencies.append(elapsed_ms)
        except threading.BrokenBarrierError:
            return  # another client's warm-up failed; the level reports it
        finally:
            client.close()

    def _counts(self) -> tuple[int, int] | None:
        """The server's (inference count, execution count) of the model; None if statistics are closed."""
        client = self.http.InferenceServerClient(self.address, network_timeout=self.timeout_s)
        try:
            stats = client.get_inference_statistics(self.model)["model_stats"]
            return sum(int(m["inference_count"]) for m in stats), sum(int(m["execution_count"]) for m in stats)
        except Exception:  # a restricted or older server: the batch size is simply not reported
            return None
        finally:
            client.close()

    def run(self, duration_s: float) -> LoadResult:
        threads = [threading.Thread(target=self.client, args=(c,), daemon=True) for c in range(self.clients)]
        for thread in threads:
            thread.start()
        warmup_limit = self.timeout_s * max(1, self.warmup)
        try:
            self.warmed.wait(timeout=warmup_limit)
        except threading.BrokenBarrierError as exc:
            self.go.set()
            reason = self.errors[0] if self.errors else f"no answer within {warmup_limit:.0f}s"
            raise MoptError(f"warm-up requests to model {self.model!r} failed: {reason}") from exc
        before = self._counts()
        begin = time.perf_counter()
        self.deadline = time.monotonic() + duration_s
        self.go.set()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - begin
        after = self._counts()
        mean_batch = None
        if before is not None and after is not None and after[1] > before[1]:
            mean_batch = (after[0] - before[0]) / (after[1] - before[1])
        if not self.latencies:
            example = self.errors[0] if self.errors else "no answer"
            raise MoptError(f"every request at concurrency {self.clients} failed, e.g.: {example}")
        t = np.asarray(self.latencies)
        return LoadResult(
            concurrency=self.clients,
            requests=len(self.latencies),
            errors=len(self.errors),
            seconds=seconds,
            requests_per_s=len(self.latencies) / seconds,
            p50_ms=float(np.percentile(t, 50)),
            p90_ms=float(np.percentile(t, 90)),
            p99_ms=float(np.percentile(t, 99)),
            mean_ms=float(t.mean()),
            max_ms=float(t.max()),
            mean_batch=mean_batch,
        )


def serve_load_from_url(
    url: str,
    payloads: Sequence[bytes],
    concurrency: Sequence[int] = (1, 4, 16),
    requests: int = 200,
    duration_s: float = 60.0,
    model: str = DEFAULT_MODEL_NAME,
    warmup: int = 2,
    timeout_s: float = 120.0,
    on_level: Callable[[int, LoadResult | None], None] | None = None,
) -> list[LoadResult]:
    """Load a running server with ``c`` clients in parallel, for each ``c`` in ``concurrency``.

    Every client is a thread with its own HTTP connection that sends one image per request, back to back
    (closed loop), round-robin over ``payloads``. A level ends after ``requests`` requests or ``duration_s``
    seconds, whichever comes first; requests already sent are waited for. Latency is per request, measured by
    the client (upload, queueing, batching, decoding, inference, response).

    Args:
        url: the server's HTTP endpoint (``127.0.0.1:8000`` or ``http://127.0.0.1:8000``).
        payloads: encoded images to send.
        concurrency: client counts to measure, in order.
        requests: request budget per level.
        duration_s: time budget per level.
        model: the encoded-image model's name.
        warmup: untimed requests per client before each level.
        timeout_s: network timeout of one request.
        on_level: called with ``(clients, None)`` when a level starts and ``(clients, result)`` when it ends,
            so that a caller can show progress (a level may take its whole ``duration_s``).

    Raises:
        MoptError: no payloads, bad budgets, no ready server at ``url``, or every request failing.
    """
    require("tritonclient")  # a missing package is reported with the extra that installs it
    http = require("tritonclient.http")
    if not payloads:
        raise MoptError("no images to send")
    if requests < 1 or duration_s <= 0 or not concurrency or min(concurrency) < 1:
        raise MoptError("--requests, --duration and every --concurrency level must be positive")
    wait_for_server(url, model, timeout_s=10.0)
    address = _client_url(url)
    results = []
    for clients in concurrency:
        if on_level is not None:
            on_level(clients, None)
        results.append(_LoadLevel(http, address, model, payloads, clients, requests, warmup, timeout_s).run(duration_s))
        if on_level is not None:
            on_level(clients, results[-1])
    return results


def load_report(results: Sequence[LoadResult], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of a load run: machine, settings, one row per concurrency level."""
    from optimize.bench import machine_info

    return {"machine": machine_info(), "settings": settings, "results": [asdict(r) for r in results]}
