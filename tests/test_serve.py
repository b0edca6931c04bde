"""`mopt serve`: a real Triton server (PyTriton) on a free loopback port, checked against `mopt matte`.

The fast tests exercise the predictor, sizes, ports and the library-path fix without a server. The server
tests start `mopt serve` in a child process (its own session, so nothing can outlive the test), send
concurrent requests within bounded counts and timeouts, compare the mattes with what `mopt matte` writes for
the same files, and stop it with SIGTERM.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from optimize.backends import OnnxRuntimeBackend
from optimize.deps import is_available
from optimize.errors import MoptError
from optimize.images import DecodedImage
from optimize.matte import inference_size, mattes_from_images
from optimize.onnx_model import onnx_normalization
from optimize.serve import (
    ALPHA_OUTPUT,
    ERROR_OUTPUT,
    IMAGE_INPUT,
    PNG_OUTPUT,
    RGB_INPUT,
    MattePredictor,
    check_ports_free,
    decode_image,
    ensure_python_library_path,
    python_library_dir,
    serve_load_from_url,
)

REPO = Path(__file__).resolve().parents[1]
needs_pytriton = pytest.mark.skipif(not is_available("pytriton"), reason="nvidia-pytriton is not installed")
needs_tritonclient = pytest.mark.skipif(not is_available("tritonclient.http"), reason="tritonclient is not installed")
STARTUP_TIMEOUT_S = 45
REQUEST_TIMEOUT_S = 30


# --- images ------------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_images(seed: int = 0) -> dict[str, bytes]:
    """Small images of different sizes and kinds: JPEG with EXIF rotation, RGBA PNG, greyscale, odd sizes."""
    rng = np.random.default_rng(seed)

    def picture(h: int, w: int) -> np.ndarray:
        # Smooth gradients plus a disc: something a matting model answers with a non-constant matte.
        yy, xx = np.mgrid[0:h, 0:w]
        disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2)[..., None]
        base = rng.integers(0, 256, (1, 1, 3)) * (xx[..., None] / w) + 40 * disc
        return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)

    rotated = Image.fromarray(picture(60, 100))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait: the matte must be 100 x 60
    rgba = Image.fromarray(picture(72, 72)).convert("RGBA")
    alpha = np.full((72, 72), 255, np.uint8)
    alpha[:, :20] = 0  # transparent band: mopt matte multiplies the matte by it
    rgba.putalpha(Image.fromarray(alpha))
    return {
        "square.png": encode(Image.fromarray(picture(96, 96)), "PNG"),
        "wide.jpg": encode(Image.fromarray(picture(64, 120)), "JPEG", quality=90),
        "rotated.jpg": encode(rotated, "JPEG", quality=90, exif=exif.tobytes()),
        "cutout.png": encode(rgba, "PNG"),
        "grey.png": encode(Image.fromarray(picture(50, 70)).convert("L"), "PNG"),
        "same_size.png": encode(Image.fromarray(picture(96, 96)), "PNG"),
    }


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("uploads")
    for name, data in sample_images().items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def reference_mattes(
    image_folder: Path, tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, np.ndarray]:
    """What `mopt matte --output alpha` writes for each image (the library the command calls)."""
    out = tmp_path_factory.mktemp("matte-out")
    with OnnxRuntimeBackend(tiny_onnx, threads=1) as backend:
        report = mattes_from_images(
            [image_folder], out, backend=backend, normalization=onnx_normalization(tiny_onnx), output="alpha"
        )
    assert report.processed == len(sample_images()) and not report.failed
    return {p.stem: np.asarray(Image.open(p)) for p in out.rglob("*.png")}


# --- fast: no server ---------------------------------------------------------------------------------------


@dataclass
class FakeRequest:
    """What PyTriton hands the callable: named inputs and the outputs the client asked for."""

    data: dict[str, np.ndarray]
    requested_output_names: list[str]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def values(self):
        return self.data.values()


def bytes_request(*payloads: bytes, outputs: tuple[str, ...] = (ALPHA_OUTPUT, PNG_OUTPUT, ERROR_OUTPUT)) -> FakeRequest:
    return FakeRequest({IMAGE_INPUT: np.array([[p] for p in payloads], dtype=object)}, list(outputs))


@pytest.fixture(scope="module")
def predictor(tiny_onnx: Path) -> MattePredictor:
    backend = OnnxRuntimeBackend(tiny_onnx, threads=1)
    yield MattePredictor(backend, onnx_normalization(tiny_onnx), max_batch=2)
    backend.close()


def test_predictor_matches_matte_and_isolates_bad_requests(
    predictor: MattePredictor, reference_mattes: dict[str, np.ndarray]
) -> None:
    images = sample_images()
    names = list(images)
    requests = [bytes_request(images[n]) for n in names]
    requests.insert(2, bytes_request(b"this is not an image"))  # batched with good requests
    requests.append(bytes_request(images["square.png"], images["same_size.png"], outputs=(ALPHA_OUTPUT, ERROR_OUTPUT)))
    runs_before = predictor.stats.model_runs
    responses = predictor.infer_encoded(requests)

    assert len(responses) == len(requests)
    bad = responses.pop(2)
    assert bad[ERROR_OUTPUT][0, 0].decode().startswith("cannot decode image")
    assert ALPHA_OUTPUT not in bad and PNG_OUTPUT not in bad
    for name, response in zip(names, responses, strict=False):
        assert response[ERROR_OUTPUT][0, 0] == b""
        alpha = response[ALPHA_OUTPUT][0]
        expected = reference_mattes[Path(name).stem]
        assert alpha.dtype == np.uint8 and alpha.shape == expected.shape, name
        # Same decoding, preprocessing, backend and rounding as mopt matte; batching may move a value by one step.
        assert np.abs(alpha.astype(int) - expected).max() <= 1, name
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(response[PNG_OUTPUT][0, 0]))), alpha)
    assert reference_mattes["rotated"].shape == (100, 60)
    assert reference_mattes["cutout"][:, :20].max() == 0  # the input's transparency carried into the matte
    pair = responses[-1]
    assert pair[ALPHA_OUTPUT].shape == (2, 96, 96) and PNG_OUTPUT not in pair  # PNG not asked for: not made
    # Grouped by inference size, in chunks of max_batch=2: one model run per chunk, whatever the request order.
    good = [images[n] for n in names] + [images["square.png"], images["same_size.png"]]
    groups = Counter(inference_size(*decode_image(data).size) for data in good)
    assert predictor.stats.model_runs - runs_before == sum(math.ceil(count / 2) for count in groups.values())
    assert max(groups.values()) == 4  # four 96x96 images: two runs of two


def test_predictor_rgb_requests_and_size_mismatch(predictor: MattePredictor) -> None:
    rgb = np.asarray(Image.open(io.BytesIO(sample_images()["square.png"])))
    expected = predictor.alphas_from_images([DecodedImage(rgb)])[0]
    ok = FakeRequest({RGB_INPUT: rgb[None]}, [ALPHA_OUTPUT])
    flat = FakeRequest({RGB_INPUT: np.zeros((1, 0, 5, 3), np.uint8)}, [ALPHA_OUTPUT])
    good, empty = predictor.infer_rgb([ok, flat])
    assert np.array_equal(good[ALPHA_OUTPUT][0], expected)
    assert b"H, W > 0" in empty[ERROR_OUTPUT][0, 0]

    images = sample_images()
    mixed = predictor.infer_encoded([bytes_request(images["square.png"], images["wide.jpg"])])[0]
    assert b"different sizes" in mixed[ERROR_OUTPUT][0, 0]
    pair = bytes_request(images["square.png"], images["wide.jpg"], outputs=(PNG_OUTPUT,))
    as_png = predictor.infer_encoded([pair])[0]
    assert [Image.open(io.BytesIO(p)).size for p in as_png[PNG_OUTPUT][:, 0]] == [(96, 96), (120, 64)]


def test_decode_accepts_base64_and_refuses_other_formats() -> None:
    png = sample_images()["square.png"]
    text = base64.encodebytes(png)  # with line breaks, as `base64` prints it
    assert np.array_equal(decode_image(text).rgb, decode_image(png).rgb)
    gif = encode(Image.new("RGB", (8, 8)), "GIF")
    with pytest.raises(MoptError, match="not a JPEG, PNG"):
        decode_image(gif)
    with pytest.raises(MoptError, match="empty image"):
        decode_image(b"")
    with pytest.raises(MoptError, match="cannot decode"):
        decode_image(png[: len(png) // 2])


def test_engine_without_tensorrt_is_refused_with_the_onnx_to_serve(tiny_onnx: Path, tmp_path: Path) -> None:
    from optimize.engine import tensorrt_unavailable_reason
    from optimize.fileio import file_sha256
    from optimize.serve import served_model_from_files

    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT runs here: the engine would be served")
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"opaque engine bytes")
    profile = {"min": [1, 3, 256, 256], "opt": [4, 3, 512, 512], "max": [8, 3, 1024, 1024]}
    sidecar = {"precision": "fp16", "profiles": [profile], "engine_sha256": file_sha256(plan), "onnx": str(tiny_onnx)}
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    with pytest.raises(MoptError, match=f"cannot serve engine .*m.plan here: .*serve {tiny_onnx} with --onnx"):
        served_model_from_files(engine=plan)
    with pytest.raises(MoptError, match="exactly one model"):
        served_model_from_files(engine=plan, onnx=tiny_onnx)


def test_library_path_fix_puts_libpython_first() -> None:
    libdir = python_library_dir()
    if not libdir:
        pytest.skip("this interpreter is statically linked: no libpython to find")
    env = {"LD_LIBRARY_PATH": f"/opt/other:{libdir}"}
    assert ensure_python_library_path(env)
    assert env["LD_LIBRARY_PATH"] == f"{libdir}:/opt/other"
    assert not ensure_python_library_path(env)  # idempotent
    empty: dict[str, str] = {}
    ensure_python_library_path(empty)
    assert empty["LD_LIBRARY_PATH"] == libdir


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MoptError, match=f"HTTP port {port} on 127.0.0.1 is already in use.*--port"):
            check_ports_free("127.0.0.1", {"HTTP": port})
    with pytest.raises(MoptError, match="ports must differ"):
        check_ports_free("127.0.0.1", {"HTTP": 9000, "gRPC": 9000})


class FakeTriton:
    """Stands in for pytriton.triton.Triton: the first ``failures`` starts lose the handshake race."""

    failures = 0
    started: list[FakeTriton] = []

    def __init__(self, config: object, security_config: object) -> None:
        self.stopped = False
        FakeTriton.started.append(self)

    def run(self) -> None:
        if len(FakeTriton.started) <= FakeTriton.failures:
            raise RuntimeError(
                "[400] load failed for model 'cvunet': Model initialize error: Traceback (most recent call last):\n"
                "  File \"model.py\", in get_config_from_handshake_server\nConnectionRefusedError: [Errno 111]"
            )

    def stop(self) -> None:
        self.stopped = True


@needs_pytriton
@pytest.mark.parametrize(("failures", "started"), [(0, 1), (2, 3), (3, 3)])
def test_start_retries_only_the_instance_handshake_race(
    monkeypatch: pytest.MonkeyPatch, failures: int, started: int
) -> None:
    import threading

    import pytriton.triton

    from optimize import serve

    monkeypatch.setattr(pytriton.triton, "Triton", FakeTriton)
    monkeypatch.setattr(FakeTriton, "failures", failures)
    monkeypatch.setattr(FakeTriton, "started", [])
    bind = lambda server: ["cvunet"]  # noqa: E731
    if failures < serve.START_ATTEMPTS:
        server, models = serve._start_triton(object(), bind, threading.Event())
        assert models == ["cvunet"] and server is FakeTriton.started[-1] and not server.stopped
    else:
        with pytest.raises(MoptError, match=r"Triton failed to start: \[400\] load failed .* ConnectionRefusedError"):
            serve._start_triton(object(), bind, threading.Event())
    assert len(FakeTriton.started) == started
    assert all(t.stopped for t in FakeTriton.started[:failures])  # every failed start was shut down

    def other_failure(server: object) -> list[str]:
        raise RuntimeError("port 8000 already in use")

    FakeTriton.started.clear()
    with pytest.raises(MoptError, match="port 8000 already in use"):
        serve._start_triton(object(), other_failure, threading.Event())
    assert len(FakeTriton.started) == 1  # not the race: no retry


# --- the server --------------------------------------------------------------------------------------------


def free_port_block() -> int:
    """A port p with p, p+1, p+2 free on loopback (HTTP, gRPC, metrics), below the kernel's ephemeral range.

    Client sockets take their ports from the ephemeral range and leave them in TIME_WAIT for a minute after
    closing; on a machine where other servers were just started and polled, a block picked there is often
    taken. Below it, only listening servers compete, and the check sees them.
    """
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    top = ephemeral_low - 3 if ephemeral_low > 20000 else 65532
    pick = random.SystemRandom()  # not the test's seeded `random`: every test would draw the same ports
    for _ in range(200):
        base = pick.randrange(10000, top)
        try:
            check_ports_free("127.0.0.1", {"HTTP": base, "gRPC": base + 1, "metrics": base + 2})
        except MoptError:
            continue
        return base
    raise RuntimeError("no block of three free loopback ports")


def session_processes(sid: int) -> list[str]:
    """Processes still alive in session ``sid`` (the server child and everything it spawned)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while listing
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            alive.append(stat.parent.name)
    return alive


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    port: int
    log: Path


def start_server(onnx: Path, log: Path, *extra: str) -> Server:
    port = free_port_block()
    env = dict(os.environ)
    # Prove the fix: start without the interpreter's library folder on the loader path.
    libdir = python_library_dir() or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir)
    command = [sys.executable, "-c", "from optimize.cli.serve import app; app()", "--onnx", str(onnx),
               "--host", "127.0.0.1", "--port", str(port), "--threads", "1", *extra]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Server(process, f"127.0.0.1:{port}", port, log)


def wait_ready(server: Server) -> None:
    import tritonclient.http as http

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"mopt serve exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}")
        client = http.InferenceServerClient(server.url, connection_timeout=1.0, network_timeout=2.0)
        try:
            ready = client.is_server_ready() and client.is_model_ready("cvunet") and client.is_model_ready("cvunet_rgb")
        except Exception:  # refused while starting; any other trouble shows up at the deadline
            ready = False
        finally:
            client.close()
        if ready:
            return
        # Poll, also while the server is up and its models load: a loop without a pause opens thousands of
        # connections, whose ports then sit in TIME_WAIT.
        time.sleep(0.3)
    pytest.fail(f"mopt serve not ready after {STARTUP_TIMEOUT_S}s:\n{server.log.read_text()[-3000:]}")


def stop_server(server: Server, timeout: float = 30.0) -> int:
    """SIGTERM, wait; kill the whole session if it does not stop in time. Returns the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        return -9
    finally:
        deadline = time.monotonic() + 10
        while session_processes(server.process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in session_processes(server.process.pid):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    log = tmp_path_factory.mktemp("server") / "serve.log"
    running = start_server(tiny_onnx, log, "--max-batch", "4", "--max-queue-delay-ms", "20")
    try:
        wait_ready(running)
        yield running
    finally:
        stop_server(running)


def infer_bytes(url: str, payload: bytes, outputs: tuple[str, ...] = (ALPHA_OUTPUT, ERROR_OUTPUT)) -> dict:
    import tritonclient.http as http

    client = http.InferenceServerClient(url, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S)
    try:
        tensor = http.InferInput(IMAGE_INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
        result = client.infer("cvunet", [tensor], outputs=[http.InferRequestedOutput(o) for o in outputs])
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


@pytest.mark.serve
@pytest.mark.slow
@needs_pytriton
@needs_tritonclient
@pytest.mark.timeout(120)
class TestServer:
    """One server for the class (started once: about 10 s), stopped by the fixture after the last of them."""

    def test_health_and_dynamic_batching_config(self, server: Server) -> None:
        import tritonclient.http as http

        with urllib.request.urlopen(f"http://{server.url}/v2/health/ready", timeout=5) as answer:  # KServe v2
            assert answer.status == 200
        client = http.InferenceServerClient(server.url)
        try:
            assert client.is_server_live() and client.is_server_ready()
            config = client.get_model_config("cvunet")
        finally:
            client.close()
        assert config["max_batch_size"] == 4
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
        assert [i["name"] for i in config["input"]] == [IMAGE_INPUT]
        assert {o["name"] for o in config["output"]} == {ALPHA_OUTPUT, PNG_OUTPUT, ERROR_OUTPUT}

    def test_concurrent_requests_match_mopt_matte(
        self, server: Server, reference_mattes: dict[str, np.ndarray]
    ) -> None:
        images = sample_images()
        jobs = [(name, data) for _ in range(3) for name, data in images.items()] + [("bad", b"\x89PNG broken")]
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda job: (job[0], infer_bytes(server.url, job[1])), jobs))
        assert len(answers) == len(jobs)
        for name, answer in answers:
            error = answer[ERROR_OUTPUT].reshape(-1)[0].decode()
            if name == "bad":
                assert error.startswith("cannot decode image") and answer[ALPHA_OUTPUT] is None
                continue
            assert error == ""
            expected = reference_mattes[Path(name).stem]
            alpha = answer[ALPHA_OUTPUT][0]
            assert alpha.shape == expected.shape, name
            assert np.abs(alpha.astype(int) - expected).max() <= 1, name  # one 8-bit step: batch composition

    def test_rgb_model_and_json_clients(self, server: Server, reference_mattes: dict[str, np.ndarray]) -> None:
        import tritonclient.http as http

        png = sample_images()["square.png"]
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        client = http.InferenceServerClient(server.url, network_timeout=REQUEST_TIMEOUT_S)
        try:
            tensor = http.InferInput(RGB_INPUT, [1, *rgb.shape], "UINT8")
            tensor.set_data_from_numpy(rgb[None])
            result = client.infer("cvunet_rgb", [tensor], outputs=[http.InferRequestedOutput(PNG_OUTPUT)])
            matte = np.asarray(Image.open(io.BytesIO(result.as_numpy(PNG_OUTPUT)[0, 0])))
        finally:
            client.close()
        assert np.abs(matte.astype(int) - reference_mattes["square"]).max() <= 1

        # The README's curl request: plain KServe v2 JSON, the image as base64 text, the matte as JSON numbers.
        body = {
            "inputs": [{"name": IMAGE_INPUT, "shape": [1, 1], "datatype": "BYTES",
                        "data": [base64.b64encode(png).decode()]}],
            "outputs": [{"name": ALPHA_OUTPUT}],
        }
        request = urllib.request.Request(
            f"http://{server.url}/v2/models/cvunet/infer", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
            (output,) = json.loads(answer.read())["outputs"]
        assert output["shape"] == [1, 96, 96] and output["datatype"] == "UINT8"
        assert np.abs(np.asarray(output["data"]).reshape(96, 96) - reference_mattes["square"]).max() <= 1

    def test_load_run_reports_every_level(self, server: Server, image_folder: Path) -> None:
        payloads = [p.read_bytes() for p in sorted(image_folder.iterdir())]
        results = serve_load_from_url(server.url, payloads, concurrency=(1, 3), requests=6, duration_s=20, warmup=1)
        assert [r.concurrency for r in results] == [1, 3]
        for r in results:
            assert r.requests == 6 and r.errors == 0
            assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms and r.requests_per_s > 0
            assert r.mean_batch is not None and 1 <= r.mean_batch <= 4  # from the server's statistics

    def test_a_second_server_on_the_same_port_is_refused(self, server: Server, tiny_onnx: Path) -> None:
        from typer.testing import CliRunner

        from optimize.cli import serve as serve_cli

        clash = CliRunner().invoke(serve_cli.app, ["--onnx", str(tiny_onnx), "--port", str(server.port)])
        assert isinstance(clash.exception, MoptError), clash.output
        assert f"HTTP port {server.port} on 127.0.0.1 is already in use" in str(clash.exception)
        assert server.process.poll() is None  # the running server is not disturbed


@pytest.mark.serve
@pytest.mark.slow
@needs_pytriton
@needs_tritonclient
@pytest.mark.timeout(120)
def test_sigterm_stops_the_server_and_everything_it_started(tiny_onnx: Path, tmp_path: Path) -> None:
    """Its own server (the shared one serves the other tests, whatever their order): SIGTERM, exit 0, nothing left."""
    server = start_server(tiny_onnx, tmp_path / "serve.log")
    try:
        wait_ready(server)
        assert infer_bytes(server.url, sample_images()["square.png"])[ERROR_OUTPUT].reshape(-1)[0] == b""
    finally:
        code = stop_server(server)
    assert code == 0, server.log.read_text()[-3000:]
    assert "stopped:" in server.log.read_text()
    assert session_processes(server.process.pid) == []  # tritonserver and its Python stubs are gone
    check_ports_free("127.0.0.1", {"HTTP": server.port, "gRPC": server.port + 1, "metrics": server.port + 2})


def test_serve_without_a_model_exports_the_bundled_selfie_model_once(tmp_path):
    from optimize.artifacts import bundled_model_onnx
    from optimize.checkpoint import DEFAULT_MATTE_CHECKPOINT
    from optimize.fileio import file_sha256
    from optimize.onnx_model import card_of_onnx, lineage_of

    path = bundled_model_onnx(tmp_path)
    assert path == tmp_path / "selfie.onnx" and lineage_of(path) == file_sha256(DEFAULT_MATTE_CHECKPOINT)
    assert card_of_onnx(path).arch == "mediapipe-selfie"
    stamp = path.stat().st_mtime_ns
    assert bundled_model_onnx(tmp_path) == path and path.stat().st_mtime_ns == stamp  # not exported again
