"""What `mopt serve` and `mopt bench-serve` tell the user: which model runs, where Triton's log goes, progress."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optimize.deps import is_available
from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.serve import ServeOptions, ServeStats, check_ports_free

REPO = Path(__file__).resolve().parents[1]
MOPT = [sys.executable, "-m", "optimize.cli.main"]
TRITON_LOG_LINE = re.compile(r"^[IWE]\d{4} |^Error:")  # glog lines ("E1201 10:57:26 ...") and DCGM's "Error:"


def test_serve_names_the_model_file_first(tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from optimize.cli import serve as serve_cli

    monkeypatch.setattr("optimize.serve.check_ports_free", lambda *args: None)
    monkeypatch.setattr("optimize.serve.serve_model", lambda *args, **kwargs: ServeStats())
    result = CliRunner().invoke(serve_cli.app, ["--onnx", str(tiny_onnx)])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first == f"model: {tiny_onnx} (sha256 {file_sha256(tiny_onnx)[:12]}, cvunet-tiny, fp32)", first


def test_serve_a_file_that_is_no_model_says_so(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# not a model\n")
    done = subprocess.run([*MOPT, "serve", "--onnx", "README.md"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mopt: error: README.md is not a readable ONNX model"), lines
    assert "--checkpoint" not in done.stderr  # serve has no such option


def test_triton_log_goes_to_a_file_named_by_port() -> None:
    assert ServeOptions(port=8123).triton_log_file().name == "mopt-serve-8123.log"
    assert ServeOptions(log_file=Path("x.log")).triton_log_file() == Path("x.log")


def _free_port_block(count: int = 3) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        try:
            check_ports_free("127.0.0.1", {f"p{i}": base + i for i in range(count)})
        except MoptError:
            continue
        return base
    raise RuntimeError("no block of free loopback ports")


@pytest.mark.serve
@pytest.mark.slow
@pytest.mark.skipif(not is_available("pytriton"), reason="nvidia-pytriton is not installed")
@pytest.mark.skipif(not is_available("tritonclient.http"), reason="tritonclient is not installed")
def test_serve_console_is_mopts_summary_and_bench_serve_shows_progress(tiny_onnx: Path, tmp_path: Path) -> None:
    port = _free_port_block()
    triton_log, console = tmp_path / "triton.log", tmp_path / "console.txt"
    command = [*MOPT, "serve", "--onnx", str(tiny_onnx), "--port", str(port), "--threads", "1",
               "--log-file", str(triton_log)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(console, "wb") as sink:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C" not in console.read_text() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "Ctrl-C" in console.read_text(), console.read_text()[-3000:]
        load = subprocess.run(
            [*MOPT, "bench-serve", "--url", f"127.0.0.1:{port}", "--concurrency", "1,2", "--requests", "4",
             "--count", "2", "--size", "64x64", "--warmup", "1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
        )
        assert load.returncode == 0, load.stdout + load.stderr
        progress = [line for line in load.stdout.splitlines() if line.startswith("concurrency ")]
        assert len(progress) == 4 and "req/s" in progress[1] and progress[2].startswith("concurrency 2:"), progress
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    text = console.read_text()
    assert server.returncode == 0, text[-3000:]
    lines = text.splitlines()
    assert lines[0].startswith(f"model: {tiny_onnx} (sha256 "), lines[0]
    assert f"Triton log {triton_log}" in text
    assert not [line for line in lines if TRITON_LOG_LINE.match(line)], text  # Triton's start-up is in the file
    assert "successfully loaded 'cvunet'" in triton_log.read_text()
