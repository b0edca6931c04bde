"""Soak test of ``mopt serve``: start/stop cycles, then minutes of mixed load, counting every answer and leak.

Loopback only, bounded in count and time (every request, start and stop has a timeout). Phase 1 starts
``mopt serve`` N times, checks that it becomes ready and answers one image, stops it with SIGTERM, and checks
that it exited 0 and left no process of its session and no ``/dev/shm`` segment behind. Phase 2 starts it once
more and loads it for D minutes from C concurrent clients: good images (several sizes and formats), and one
request in ten bad (empty, garbage, truncated, a decompression bomb). Every good answer must be the matte the
predictor computes for that image in this process (same model, decoding, preprocessing and rounding; one 8-bit
step allowed for batch composition), every bad one an ``error`` and no matte; a monitor checks
``/v2/health/ready`` every second throughout. The same stop checks end phase 2.

    .venv/bin/python benchmarks/serve_soak.py --onnx engines/cvunet.onnx --cycles 20 --duration 600 --json soak.json

Exit code 0 when every check held, 1 otherwise (the JSON and the last lines say which).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optimize.backends import OnnxRuntimeBackend  # noqa: E402
from optimize.fileio import write_json  # noqa: E402
from optimize.onnx_model import onnx_normalization  # noqa: E402
from optimize.serve import ALPHA_OUTPUT, ERROR_OUTPUT, IMAGE_INPUT, MattePredictor, decode_image  # noqa: E402

MODEL = "cvunet"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 60.0
READY_POLL_S = 1.0
BAD_EVERY = 10  # one request in ten is bad
SHM = Path("/dev/shm")


# --- payloads ---------------------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def good_payloads(seed: int = 0) -> list[bytes]:
    """Images of several sizes, formats and modes (an EXIF-rotated JPEG, RGBA and grey PNGs, a WebP)."""
    rng = np.random.default_rng(seed)

    def picture(h: int, w: int) -> Image.Image:
        yy, xx = np.mgrid[0:h, 0:w]
        disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2)[..., None]
        base = rng.integers(0, 256, (1, 1, 3)) * (xx[..., None] / w) + 60 * disc
        return Image.fromarray(np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8))

    rotated = picture(120, 200)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rgba = picture(160, 160).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (160, 1))))
    return [
        _encode(picture(256, 256), "JPEG", quality=90),
        _encode(picture(192, 320), "PNG"),
        _encode(rotated, "JPEG", quality=90, exif=exif.tobytes()),
        _encode(rgba, "PNG"),
        _encode(picture(100, 140).convert("L"), "PNG"),
        _encode(picture(224, 224), "WEBP", quality=90),
    ]


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims 900 megapixels: decoders must refuse it, not allocate it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def bad_payloads(good: list[bytes]) -> dict[str, bytes]:
    return {
        "empty": b"",
        "garbage": bytes(random.Random(7).getrandbits(8) for _ in range(4096)),
        "truncated": good[0][: len(good[0]) // 2],
        "bomb": _bomb_png(),
    }


# --- the server process -----------------------------------------------------------------------------------


def free_port_block(count: int = 3) -> int:
    """A port p with p .. p+count-1 free on loopback (HTTP, gRPC, metrics)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as other:
                    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    other.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of three free loopback ports")


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``: the server and everything it started."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _shm_in_use(name: str) -> bool:
    """Whether a live process has ``/dev/shm/name`` open or mapped."""
    target = str(SHM / name)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if target in (proc / "maps").read_text():
                return True
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    return True
        except OSError:
            continue
    return False


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path
    shm_before: set[str]

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_server(onnx: Path, log: Path, threads: int, max_batch: int) -> Server:
    port = free_port_block()
    command = [sys.executable, "-m", "optimize.cli.main", "serve", "--onnx", str(onnx), "--host", "127.0.0.1",
               "--port", str(port), "--threads", str(threads), "--max-batch", str(max_batch)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    shm_before = set(os.listdir(SHM)) if SHM.is_dir() else set()
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    return Server(process, port, log, shm_before)


def wait_ready(server: Server, timeout_s: float = START_TIMEOUT_S) -> float:
    """Seconds until the server and its model are ready; raises if it exits or the time runs out."""
    import tritonclient.http as http

    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if server.process.poll() is not None:
            raise RuntimeError(f"mopt serve exited with {server.process.returncode}: {server.log.read_text()[-2000:]}")
        client = http.InferenceServerClient(server.url, connection_timeout=2.0, network_timeout=5.0)
        try:
            if client.is_server_ready() and client.is_model_ready(MODEL):
                return time.monotonic() - began
        except Exception:  # refused while starting: try again
            pass
        finally:
            client.close()
        time.sleep(0.2)
    raise RuntimeError(f"mopt serve not ready after {timeout_s:.0f}s: {server.log.read_text()[-2000:]}")


@dataclass
class StopCheck:
    exit_code: int
    processes_left: list[int]
    shm_left: list[str]
    killed: bool


def stop_server(server: Server) -> StopCheck:
    """SIGTERM and wait; anything still alive afterwards is counted, then killed so the next cycle starts clean."""
    killed = False
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        code = server.process.wait(timeout=10)
        killed = True
    # Children (tritonserver, its Python stubs) exit after the server process: give them a bounded moment.
    deadline = time.monotonic() + 10
    while session_processes(server.process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = session_processes(server.process.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    shm_after = set(os.listdir(SHM)) if SHM.is_dir() else set()
    own = f"pytrtion{server.process.pid}-"  # PyTriton names its segments after the server's process id
    shm_left = sorted(n for n in shm_after - server.shm_before if n.startswith(own) or not _shm_in_use(n))
    return StopCheck(code, left, shm_left, killed)


# --- clients ----------------------------------------------------------------------------------------------


def infer(client: object, http: object, payload: bytes) -> tuple[np.ndarray | None, str]:
    tensor = http.InferInput(IMAGE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[payload]], dtype=object), binary_data=True)
    outputs = [http.InferRequestedOutput(ALPHA_OUTPUT, binary_data=True),
               http.InferRequestedOutput(ERROR_OUTPUT, binary_data=True)]  # fmt: skip
    result = client.infer(MODEL, [tensor], outputs=outputs)
    error = result.as_numpy(ERROR_OUTPUT)
    alpha = result.as_numpy(ALPHA_OUTPUT)
    return (alpha[0] if alpha is not None else None), (error.reshape(-1)[0].decode() if error is not None else "")


@dataclass
class LoadTally:
    requests: int = 0
    good_ok: int = 0
    bad_ok: int = 0
    wrong_matte: int = 0
    good_with_error: int = 0
    bad_without_error: int = 0
    transport_errors: int = 0
    ready_checks: int = 0
    not_live: int = 0  # the server did not answer /v2/health/live with 200
    not_ready: int = 0  # /v2/health/ready answered anything but 200
    not_ready_models: dict[str, int] = field(default_factory=dict)  # which model said it was not ready
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


def load_phase(server: Server, good: list[bytes], expected: list[np.ndarray], bad: dict[str, bytes],
               clients: int, duration_s: float) -> LoadTally:  # fmt: skip
    """``clients`` threads, each sending requests back to back until the deadline; a monitor polls readiness."""
    import tritonclient.http as http

    tally = LoadTally()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s
    bad_items = list(bad.items())

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        client = http.InferenceServerClient(server.url, connection_timeout=REQUEST_TIMEOUT_S,
                                            network_timeout=REQUEST_TIMEOUT_S)  # fmt: skip
        try:
            count = 0
            while time.monotonic() < deadline:
                count += 1
                is_bad = (count + seed) % BAD_EVERY == 0
                if is_bad:
                    kind, payload = bad_items[rng.randrange(len(bad_items))]
                else:
                    index = rng.randrange(len(good))
                    kind, payload = f"good[{index}]", good[index]
                try:
                    alpha, error = infer(client, http, payload)
                except Exception as exc:  # tritonclient raises its own and socket errors
                    with lock:
                        tally.requests += 1
                        tally.transport_errors += 1
                        tally.note(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                with lock:
                    tally.requests += 1
                    if is_bad:
                        if error and alpha is None:
                            tally.bad_ok += 1
                        else:
                            tally.bad_without_error += 1
                            tally.note(f"{kind}: answered without an error")
                    elif error or alpha is None:
                        tally.good_with_error += 1
                        tally.note(f"{kind}: {error or 'no alpha'}")
                    else:
                        reference = expected[index]
                        if alpha.shape == reference.shape and np.abs(alpha.astype(int) - reference).max() <= 1:
                            tally.good_ok += 1
                        else:
                            tally.wrong_matte += 1
                            tally.note(f"{kind}: matte {alpha.shape} differs from the predictor's {reference.shape}")
        finally:
            client.close()

    def probe(path: str) -> str:
        """'' when ``path`` answers 200, else why not."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{server.url}{path}", timeout=10) as answer:
                return "" if answer.status == 200 else f"status {answer.status}"
        except OSError as exc:  # URLError, HTTPError, a timeout
            return f"{type(exc).__name__}: {exc}"

    def monitor() -> None:
        while time.monotonic() < deadline:
            live, ready = probe("/v2/health/live"), probe("/v2/health/ready")
            models = [m for m in (MODEL, f"{MODEL}_rgb") if ready and probe(f"/v2/models/{m}/ready")]
            with lock:
                tally.ready_checks += 1
                tally.not_live += bool(live)
                if live:
                    tally.note(f"live check: {live}")
                if ready:
                    tally.not_ready += 1
                    for model in models:
                        tally.not_ready_models[model] = tally.not_ready_models.get(model, 0) + 1
                    tally.note(f"ready check: {ready} (not ready: {', '.join(models) or 'no model'})")
            time.sleep(READY_POLL_S)

    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
    threads.append(threading.Thread(target=monitor, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + REQUEST_TIMEOUT_S + 30)
    return tally


# --- the soak ---------------------------------------------------------------------------------------------


@dataclass
class SoakResult:
    cycles: int = 0
    start_s: list[float] = field(default_factory=list)
    stop_failures: list[str] = field(default_factory=list)
    processes_left: int = 0
    shm_left: list[str] = field(default_factory=list)
    load: LoadTally | None = None
    duration_s: float = 0.0
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        load = self.load
        return self.answers_ok and load is not None and not load.not_ready

    @property
    def answers_ok(self) -> bool:
        """Everything but readiness: every request answered right, the server up, clean stops, no leaks."""
        load = self.load
        load_ok = load is not None and load.requests > 0 and not (
            load.wrong_matte or load.good_with_error or load.bad_without_error or load.transport_errors
            or load.not_live
        )  # fmt: skip
        return load_ok and not self.stop_failures and not self.processes_left and not self.shm_left

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"], data["answers_ok"] = self.ok, self.answers_ok
        return data


def _check_stop(result: SoakResult, server: Server, what: str) -> None:
    check = stop_server(server)
    if check.exit_code != 0 or check.killed:
        result.stop_failures.append(f"{what}: exit code {check.exit_code}{' (killed)' if check.killed else ''}")
    result.processes_left += len(check.processes_left)
    result.shm_left.extend(check.shm_left)


def soak(onnx: Path, cycles: int, duration_s: float, clients: int, workdir: Path, threads: int = 1,
         max_batch: int = 8, say=print) -> SoakResult:  # fmt: skip
    """Run both phases; see the module docstring."""
    began = time.monotonic()
    good = good_payloads()
    bad = bad_payloads(good)
    with OnnxRuntimeBackend(onnx, threads=threads) as backend:
        predictor = MattePredictor(backend, onnx_normalization(onnx), max_batch=max_batch)
        expected = [predictor.alphas_from_images([decode_image(p)])[0] for p in good]
    result = SoakResult(duration_s=duration_s)
    workdir.mkdir(parents=True, exist_ok=True)
    for cycle in range(1, cycles + 1):
        server = start_server(onnx, workdir / f"serve-{cycle}.log", threads, max_batch)
        try:
            result.start_s.append(wait_ready(server))
            import tritonclient.http as http

            client = http.InferenceServerClient(server.url, network_timeout=REQUEST_TIMEOUT_S)
            try:
                alpha, error = infer(client, http, good[cycle % len(good)])
            finally:
                client.close()
            reference = expected[cycle % len(good)]
            if error or alpha is None or np.abs(alpha.astype(int) - reference).max() > 1:
                result.stop_failures.append(f"cycle {cycle}: first answer wrong ({error or 'matte differs'})")
        finally:
            _check_stop(result, server, f"cycle {cycle}")
        result.cycles = cycle
        say(f"cycle {cycle}/{cycles}: ready in {result.start_s[-1]:.1f} s, stopped; "
            f"processes left {result.processes_left}, /dev/shm left {len(result.shm_left)}")  # fmt: skip
    server = start_server(onnx, workdir / "serve-load.log", threads, max_batch)
    try:
        result.start_s.append(wait_ready(server))
        say(f"load: {clients} clients for {duration_s:.0f} s, one request in {BAD_EVERY} bad")
        result.load = load_phase(server, good, expected, bad, clients, duration_s)
    finally:
        _check_stop(result, server, "load server")
    result.wall_s = time.monotonic() - began
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX model to serve (e.g. from mopt export)")
    parser.add_argument("--cycles", type=int, default=20, help="start/stop cycles before the load phase")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of mixed load")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the server")
    parser.add_argument("--workdir", type=Path, default=Path("reports/serve-soak"), help="server logs go here")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.cycles < 0 or args.duration <= 0 or args.clients < 1:
        parser.error("--cycles must be >= 0, --duration > 0 and --clients >= 1")
    result = soak(args.onnx, args.cycles, args.duration, args.clients, args.workdir, args.threads)
    load = result.load
    print(f"restarts: {result.cycles} start/stop cycles (+1 for the load), median ready in "
          f"{float(np.median(result.start_s)):.1f} s")  # fmt: skip
    if load is not None:
        print(f"requests: {load.requests} in {result.duration_s:.0f} s ({load.requests / result.duration_s:.1f}/s): "
              f"{load.good_ok} mattes right, {load.bad_ok} errors returned for bad input; wrong {load.wrong_matte}, "
              f"good refused {load.good_with_error}, bad accepted {load.bad_without_error}, "
              f"transport errors {load.transport_errors}; not live {load.not_live}, not ready {load.not_ready} "
              f"of {load.ready_checks} checks {load.not_ready_models or ''}")
        for example in load.examples:
            print(f"  {example}")
    print(f"leaks: {result.processes_left} processes, {len(result.shm_left)} /dev/shm segments; "
          f"stop failures {len(result.stop_failures)} {result.stop_failures[:3]}")  # fmt: skip
    print("PASS" if result.ok else "FAIL")
    if args.json:
        write_json(args.json, result.to_dict())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
