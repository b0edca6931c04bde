"""The ``mopt`` entry point: assembles the per-command sub-apps and turns MoptError into one stderr line."""

from __future__ import annotations

import importlib
import sys

import typer

from optimize.errors import MoptError

# Each module defines ``app`` (a Typer with one command, merged into the top level) or, where it also
# defines ``GROUP``, a group of commands under that name (``mopt debug precision``, ``mopt deploy triton``).
COMMAND_MODULES = [
    "info",
    "import_model",
    "train",
    "export",
    "simplify",
    "compare",
    "bench",
    "pipeline",
    "convert_precision",
    "quantize",
    "debug",
    "build_engine",
    "matte",
    "serve",
    "deploy",
    "bench_serve",
]

app = typer.Typer(
    name="mopt",
    help="Optimize U-Net image-matting models: export, simplify, build TensorRT engines, compare, bench, serve.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Help texts show defaults as "[engines/<name>.onnx]"; Rich markup would swallow the brackets.
    rich_markup_mode=None,
)

for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"optimize.cli.{_name}")
    app.add_typer(_module.app, name=getattr(_module, "GROUP", None))


def main() -> None:
    """Run the CLI; a MoptError is a user mistake: one line on stderr, exit 1, no traceback."""
    try:
        app()
    except MoptError as exc:
        print(f"mopt: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("mopt: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
