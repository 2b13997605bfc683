"""Safe unpacking of uploaded dataset archives (zip, tar, tar.gz): no path escapes, no size bombs."""

from __future__ import annotations

import gzip
import lzma
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from app.errors import InvalidDataset, PayloadTooLarge, UnsupportedMediaType

CHUNK = 1024 * 1024


def archive_kind(path: Path) -> str:
    """'zip' or 'tar' by content (not by file name); 415 for anything else."""
    with path.open("rb") as f:
        head = f.read(8)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    raise UnsupportedMediaType(
        "the upload is not a dataset archive: expected a .zip (ImageFolder layout or cifar-10-batches-py) "
        "or a .tar.gz of cifar-10-batches-py"
    )


def _safe_target(root: Path, name: str) -> Path | None:
    """Where member `name` goes under root; None for directories; 422 for names that escape root."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise InvalidDataset(f"archive member {name!r} has an unsafe path")
    if not pure.parts:
        return None
    return root.joinpath(*pure.parts)


def _copy_limited(src: BinaryIO, dst: Path, budget: list[int], limit: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("wb") as out:
        while chunk := src.read(CHUNK):
            budget[0] += len(chunk)
            if budget[0] > limit:
                raise PayloadTooLarge(f"the archive unpacks to more than {limit} bytes")
            out.write(chunk)


def extract_archive(path: Path, dest: Path, max_bytes: int) -> None:
    """Unpack path into dest, refusing unsafe names, links, devices and more than max_bytes of content."""
    kind = archive_kind(path)
    dest.mkdir(parents=True, exist_ok=True)
    budget = [0]
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    target = _safe_target(dest, info.filename)
                    if target is None or info.is_dir():
                        continue
                    with zf.open(info) as src:
                        _copy_limited(src, target, budget, max_bytes)
        else:
            with tarfile.open(path, mode="r:*") as tf:
                for member in tf:
                    target = _safe_target(dest, member.name)
                    if target is None or member.isdir():
                        continue
                    if not member.isfile():
                        raise InvalidDataset(f"archive member {member.name!r} is a link or device, not a file")
                    src = tf.extractfile(member)
                    if src is not None:
                        _copy_limited(src, target, budget, max_bytes)
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        lzma.LZMAError,
    ) as exc:
        raise InvalidDataset(f"the archive is damaged: {exc}") from exc


def save_stream(src: BinaryIO, dest: Path, max_bytes: int) -> int:
    """Copy an upload to dest, refusing more than max_bytes; returns the size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the upload is larger than the limit of {max_bytes} bytes")
            out.write(chunk)
    return size


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
