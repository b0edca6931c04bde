"""The ``mopt`` entry point: assembles the per-command sub-apps and turns MoptError into one stderr line."""

from __future__ import annotations

import importlib
import sys

import typer

try:  # typer 0.2x vendors its own click (no click package is installed); older releases use click itself
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import UsageError

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


def _version(value: bool) -> None:
    if value:
        from optimize import __version__

        print(f"mopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Optimize U-Net image-matting models: export, simplify, build TensorRT engines, compare, bench, serve."""


def _usage_error_line(exc: UsageError) -> str:
    """Click's multi-line usage error as one line: what was wrong, and where to read more."""
    command = exc.ctx.command_path if exc.ctx is not None else "mopt"
    return f"{exc.format_message().strip().replace(chr(10), ' ')} (see `{command} --help`)"


def main() -> None:
    """Run the CLI; a MoptError or a usage error is a user mistake: one line on stderr, exit 1, no traceback."""
    try:
        code = app(standalone_mode=False, prog_name="mopt")
    except MoptError as exc:
        print(f"mopt: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except UsageError as exc:  # bad option value, unknown option, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # `mopt` or `mopt debug` alone: the help, not an error
            print(exc.format_message())
            sys.exit(0)
        print(f"mopt: error: {_usage_error_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        print("mopt: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
