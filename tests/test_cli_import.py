"""Importing the CLI (what ``mopt --help`` does) loads no heavy library: the commands import them when they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy", "onnx", "onnxruntime", "polygraphy", "architectures", "openvino", "tritonclient",
         "pytriton", "ray", "PIL")


def test_importing_the_cli_loads_no_heavy_module() -> None:
    # A fresh interpreter: this test process has imported most of these already.
    code = (
        "import json, sys\n"
        "import optimize.cli.main\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_every_command_is_still_registered() -> None:
    from optimize.cli.main import app

    names = {info.name for info in app.registered_commands} | {group.name for group in app.registered_groups}
    names |= {cmd.name for group in app.registered_groups for cmd in group.typer_instance.registered_commands}
    for command in ("info", "import", "train", "export", "simplify", "compare", "bench", "pipeline",
                    "convert-precision", "quantize", "build-engine", "matte", "serve", "bench-serve", "debug",
                    "deploy", "precision", "triton"):
        assert command in names, command
