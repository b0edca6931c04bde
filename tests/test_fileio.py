import os
import stat

import pytest

from optimize.fileio import atomic_output, file_sha256, write_json


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


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "b.json"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_old_file_on_error(tmp_path):
    target = write_json(tmp_path / "c.json", {"v": 1})
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        tmp.write_text("{")
        raise KeyboardInterrupt
    assert target.read_text().strip().startswith("{\n")
    assert len(file_sha256(target)) == 64
