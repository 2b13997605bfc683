"""A folder in ImageFolder layout (`<class>/<image>`, optionally under train/ val/ test/) zipped for upload."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from visiontune.errors import ClientError

# What the server reads as images; other files (and hidden ones) would only be skipped there, so they stay here.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def image_files(folder: Path) -> list[Path]:
    """The images under folder (symlinked files followed, hidden names skipped), sorted."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        names = [f for f in sorted(files) if not _hidden(f) and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        found += [Path(root) / f for f in names]
    return found


def zip_imagefolder(folder: Path) -> Path:
    """Zip the images of folder into a temporary file (the caller deletes it). Images are stored as they are:
    they are compressed already. Refuses a folder with no class sub-folders."""
    images = image_files(folder)
    if not images:
        raise ClientError(f"{folder}: no images found (ImageFolder layout: <class>/<image>)")
    loose = [p for p in images if p.parent == folder]
    if loose:
        raise ClientError(
            f"{folder}: images must be in one folder per class (<class>/<image>), found {loose[0].name} at the top"
        )
    fd, name = tempfile.mkstemp(prefix=f"{folder.name or 'dataset'}-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_STORED) as zf:
            for path in images:
                zf.write(path, path.relative_to(folder).as_posix())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
