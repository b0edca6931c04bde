import hashlib
import os
import stat

import pytest

from optimize.fileio import atomic_output, file_sha256, write_json, write_text


def test_atomic_output_renames_on_success_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt"
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert list(target.parent.iterdir()) == [target]


def test_the_final_file_is_the_temporary_one_renamed(tmp_path):
    """The file under the final name is the very file that was written (same inode): it was renamed into place,
    never copied there, so no reader ever sees it half-written."""
    target = tmp_path / "a.bin"
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"x" * 100_000)
        written = os.stat(tmp).st_ino
    assert os.stat(target).st_ino == written
    assert target.read_bytes() == b"x" * 100_000


def test_a_reader_of_the_old_file_keeps_the_old_content(tmp_path):
    """Replacing a file swaps the name: a reader that opened the old file reads it whole, not a mix."""
    target = write_text(tmp_path / "report.json", "old " * 1000)
    with open(target) as reader:
        with atomic_output(target) as tmp:
            tmp.write_text("new " * 10)
        assert reader.read() == "old " * 1000
    assert target.read_text() == "new " * 10


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "b.json"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_nothing_at_the_final_path(tmp_path, monkeypatch):
    """The content reaches the final name only through os.replace: when that fails, there is no file there."""

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", failing_replace)
    target = tmp_path / "c.json"
    with pytest.raises(OSError, match="rename failed"):
        write_json(target, {"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_old_file_on_error(tmp_path):
    target = write_json(tmp_path / "c.json", {"v": 1})
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert target.read_bytes() == before == b'{\n  "v": 1\n}\n'
    assert list(tmp_path.iterdir()) == [target]


def test_file_sha256_is_the_sha256_of_the_whole_file(tmp_path):
    # Larger than the 1 MiB read chunk, and not a multiple of it: every chunk and the tail count.
    data = bytes(range(256)) * 5000 + b"tail"
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1])
    assert file_sha256(path) != hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_write_json_keeps_the_order_it_was_given(tmp_path):
    """Reports put the verdict first: keys are written in the order given, not sorted."""
    path = write_json(tmp_path / "r.json", {"passed": False, "candidates": [{"name": "x"}], "inputs": {}})
    expected = '{\n  "passed": false,\n  "candidates": [\n    {\n      "name": "x"\n    }\n  ],\n  "inputs": {}\n}\n'
    assert path.read_text() == expected
