"""One error format: usage errors (Click's) come out as the same one `mopt: error:` line and exit 1."""

import subprocess
import sys

import pytest

MOPT = [sys.executable, "-m", "optimize.cli.main"]


def run_mopt(*args, cwd):
    return subprocess.run([*MOPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bench", "--batch", "0"], "--batch"),
        (["matte", "in", "-o", "out", "--output", "rbga"], "rbga"),
        (["compare", "--count", "0"], "--count"),
        (["export"], "Missing argument"),
        (["nosuch"], "nosuch"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(tmp_path, args, needle):
    result = run_mopt(*args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("mopt: error: ") and needle in lines[0], result.stderr
    assert "Usage:" not in result.stderr and "Traceback" not in result.stderr


def test_version_and_bare_help_exit_0(tmp_path):
    version = run_mopt("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("mopt ")
    bare = run_mopt(cwd=tmp_path)
    assert bare.returncode == 0 and "Commands" in bare.stdout
