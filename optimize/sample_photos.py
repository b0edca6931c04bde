"""Real photos of people that every mopt checkout has, for tests, recipes and benchmarks.

``grace_hopper.jpg`` ships with matplotlib (a base dependency). The others are committed under
``tests/data/photos/`` with their licences in ``LICENSES.md`` there: they are found beside the source tree
(a clone or an editable install), and are absent from a wheel install, where only grace_hopper remains.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from optimize.errors import MoptError
from optimize.images import IMAGE_SUFFIXES

PHOTOS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"


def matplotlib_grace_hopper() -> Path:
    """Path of matplotlib's ``sample_data/grace_hopper.jpg`` (a 512 x 600 portrait)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise MoptError(f"matplotlib's sample photo {path} is missing; reinstall matplotlib (pip install matplotlib)")
    return path


def sample_photo_paths() -> list[Path]:
    """Every bundled real photo: matplotlib's grace_hopper first, then the committed ones, sorted by name."""
    committed = (
        sorted(p for p in PHOTOS_DIR.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if PHOTOS_DIR.is_dir() else []
    )
    return [matplotlib_grace_hopper(), *committed]


def sample_photo_folder(folder: str | Path) -> Path:
    """Copy the bundled photos into ``folder`` (created if needed), for commands that take ``--images DIR``.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for path in sample_photo_paths():
        target = folder / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    return folder
