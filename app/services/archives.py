"""Safe unpacking of uploaded dataset archives (zip, tar, tar.gz).

The type comes from magic bytes alone, so nothing else is ever handed to a decompressor. While unpacking, the
entries, the bytes written and the compression ratio are counted against limits; names are checked (no escape,
no NUL, bounded lengths), links and special files are refused, and only images and CIFAR batch files are written.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from app.config import Settings
from app.errors import InvalidDataset, PayloadTooLarge, UnsupportedMediaType
from app.ml.data import IMAGE_EXTENSIONS, is_hidden

CHUNK = 1024 * 1024
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
SHOWN_NAME_CHARS = 100
# The ratio limit applies once this much is unpacked, so small archives of very compressible files are fine.
RATIO_FLOOR_BYTES = 1024 * 1024
# A zip's central directory is read whole by zipfile: 128 MiB holds 200,000 entries with ~600-byte names.
MAX_ZIP_DIRECTORY_BYTES = 128 * 1024**2
# tar: GNU long names ('L'/'K') and pax headers ('x'/'g') are read whole by tarfile; a real one is under 1 KiB.
MAX_TAR_EXTENSION_BYTES = 64 * 1024
MAX_TAR_EXTENSION_CHAIN = 8
# extract_archive writes the entries it left out here (a hidden name, which no archive entry can be written as).
SKIPPED_REPORT = ".visiontune-skipped.json"
MAX_REPORTED_SKIPS = 1000
CIFAR_FILES = {"batches.meta", "test_batch"}
QUIET_SKIPS = {"readme.html"}
NOT_AN_IMAGE = "not an image file (by extension)"
DAMAGED = "the archive is damaged"
NOT_AN_ARCHIVE = (
    "the upload is not a dataset archive: expected a .zip (ImageFolder layout or cifar-10-batches-py) "
    "or a .tar.gz of cifar-10-batches-py"
)
# What reading a damaged archive raises (zipfile, tarfile, gzip, zlib, bz2 and lzma members, struct parsing).
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    struct.error,
    ValueError,
    NotImplementedError,
    UnicodeError,
)


def shown(name: str) -> str:
    """An archive member name as quoted in messages and logs: repr'd, at most SHOWN_NAME_CHARS characters."""
    return repr(name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "...")


def _default(field: str) -> Any:
    return Settings.model_fields[field].default


def archive_kind(path: Path) -> str:
    """'zip', 'tar.gz' or 'tar' from magic bytes only; 415 for anything else, without trying a decompressor."""
    with path.open("rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if zipfile.is_zipfile(path):  # reads only the end of central directory record
            return "zip"
        raise UnsupportedMediaType(NOT_AN_ARCHIVE)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                first = gz.read(512)
        except (OSError, EOFError, zlib.error):
            raise InvalidDataset(DAMAGED) from None
        if first[257:262] == b"ustar":
            return "tar.gz"
        raise UnsupportedMediaType(NOT_AN_ARCHIVE)
    if head[257:262] == b"ustar":
        return "tar"
    raise UnsupportedMediaType(NOT_AN_ARCHIVE)


class _Budget:
    """Counts entries and unpacked bytes against the limits, as they happen."""

    def __init__(self, archive_bytes: int, max_bytes: int, max_entries: int, max_ratio: float) -> None:
        self.archive_bytes = max(1, archive_bytes)
        self.max_bytes, self.max_entries, self.max_ratio = max_bytes, max_entries, max_ratio
        self.entries = 0
        self.unpacked = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise PayloadTooLarge(f"the archive holds more than {self.max_entries:,} entries, the limit")

    def check(self, total: int) -> None:
        """Refuse when `total` unpacked bytes would exceed the size or ratio limit."""
        if total > self.max_bytes:
            raise PayloadTooLarge(f"the archive unpacks to more than {self.max_bytes:,} bytes, the limit")
        if total > RATIO_FLOOR_BYTES and total > self.max_ratio * self.archive_bytes:
            raise PayloadTooLarge(
                f"the archive unpacks to more than {self.max_ratio:g} times its size "
                f"({self.archive_bytes:,} bytes), the limit for compressed uploads"
            )

    def add(self, n: int) -> None:
        self.unpacked += n
        self.check(self.unpacked)


class _Layout:
    """Every path the archive names, so a file and a folder of one name, or a duplicate, is refused."""

    def __init__(self) -> None:
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = set()

    def _parents(self, parts: tuple[str, ...], name: str) -> None:
        # Deepest first, stopping at a known folder: its own parents were checked when it was added.
        for i in range(len(parts) - 1, 0, -1):
            parent = parts[:i]
            if parent in self.dirs:
                return
            if parent in self.files:
                raise InvalidDataset(f"archive member {shown(name)} lies inside {shown('/'.join(parent))}, a file")
            self.dirs.add(parent)

    def add_dir(self, parts: tuple[str, ...], name: str) -> None:
        if parts in self.files:
            raise InvalidDataset(f"archive member {shown(name)} is both a file and a folder")
        self._parents(parts, name)
        self.dirs.add(parts)

    def add_file(self, parts: tuple[str, ...], name: str) -> None:
        if parts in self.files:
            raise InvalidDataset(f"archive member {shown(name)} appears twice")
        if parts in self.dirs:
            raise InvalidDataset(f"archive member {shown(name)} is both a file and a folder")
        self._parents(parts, name)
        self.files.add(parts)


def _checked_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name; 422 for NULs, escapes and over-long names."""
    if "\x00" in name:
        raise InvalidDataset(f"archive member {shown(name)} has a NUL byte in its name")
    name_slashed = name.replace("\\", "/")
    try:
        size = len(name_slashed.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        raise InvalidDataset(f"archive member {shown(name)} has a name that is not valid text") from None
    if size > MAX_NAME_BYTES:
        raise InvalidDataset(f"archive member {shown(name)} has a name longer than {MAX_NAME_BYTES} bytes")
    pure = PurePosixPath(name_slashed)
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise InvalidDataset(f"archive member {shown(name)} has an unsafe path")
    for part in pure.parts:
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise InvalidDataset(
                f"archive member {shown(name)} has a path component longer than {MAX_COMPONENT_BYTES} bytes"
            )
    return pure.parts


# No image format fits in fewer bytes (the smallest valid GIF is 26): such entries are never written to disk.
MIN_IMAGE_BYTES = 20


def _keep(parts: tuple[str, ...], size: int | None = None) -> str | None:
    """None when a file is kept (an image or a CIFAR batch), else why it is left out ('' for silently)."""
    if any(is_hidden(p) for p in parts):
        return ""
    base = parts[-1]
    if base in CIFAR_FILES or base.startswith("data_batch_"):
        return None
    if PurePosixPath(base).suffix.lower() in IMAGE_EXTENSIONS:
        return "too small to be an image" if size is not None and size < MIN_IMAGE_BYTES else None
    return "" if base.lower() in QUIET_SKIPS else NOT_AN_IMAGE


class _Writer:
    """Writes kept files under dest; on failure removes what it created."""

    def __init__(self, dest: Path, budget: _Budget) -> None:
        self.dest = dest
        self.budget = budget
        self.created_dest = not dest.exists()
        self.top_level: set[str] = set()
        self.skipped: list[dict[str, str]] = []
        self.skipped_total = 0

    def skip(self, parts: tuple[str, ...], reason: str) -> None:
        if reason:
            self.skipped_total += 1
            if len(self.skipped) < MAX_REPORTED_SKIPS:
                self.skipped.append({"file": "/".join(parts), "reason": reason})

    def write(self, parts: tuple[str, ...], chunks: Iterator[bytes]) -> None:
        target = self.dest.joinpath(*parts)
        self.top_level.add(parts[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:  # exclusive: never through or over anything already there
            for chunk in chunks:
                self.budget.add(len(chunk))
                out.write(chunk)

    def finish(self) -> list[dict[str, str]]:
        if self.skipped:
            (self.dest / SKIPPED_REPORT).write_text(json.dumps(self.skipped))
        return self.skipped

    def discard(self) -> None:
        if self.created_dest:
            shutil.rmtree(self.dest, ignore_errors=True)
            return
        for name in self.top_level | {SKIPPED_REPORT}:
            path = self.dest / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _read_chunks(src: IO[bytes]) -> Iterator[bytes]:
    """src in chunks; a decompression or CRC failure is 422 'the archive is damaged', with no internals."""
    while True:
        try:
            chunk = src.read(CHUNK)
        except _READ_ERRORS:
            raise InvalidDataset(DAMAGED) from None
        if not chunk:
            return
        yield chunk


def _zip_directory_entries(path: Path, limit: int) -> int:
    """How many records the central directory really holds (counted, not the declared total), up to limit + 1.

    zipfile trusts neither the declared count nor checks it, and reads the whole directory into memory, so its
    size and record count are bounded here before a ZipFile is made.
    """
    with path.open("rb") as f:
        size = f.seek(0, 2)
        tail_len = min(size, 22 + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(tail):
            raise InvalidDataset(DAMAGED)
        (cd_size,) = struct.unpack_from("<L", tail, pos + 12)
        end = size - tail_len + pos
        if pos >= 20 and tail[pos - 20 : pos - 16] == b"PK\x06\x07":  # zip64 locator, then its 56-byte record
            f.seek(max(0, end - 20 - 56))
            record = f.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                (cd_size,) = struct.unpack_from("<Q", record, 40)
                end = end - 20 - 56
        if cd_size > MAX_ZIP_DIRECTORY_BYTES:
            raise PayloadTooLarge(
                f"the archive's central directory is {cd_size:,} bytes, more than the {MAX_ZIP_DIRECTORY_BYTES:,} "
                "allowed"
            )
        start = end - cd_size
        if start < 0:
            raise InvalidDataset(DAMAGED)
        f.seek(start)
        directory = f.read(cd_size)
    count = 0
    offset = 0
    while offset + 46 <= len(directory) and directory[offset : offset + 4] == b"PK\x01\x02":
        count += 1
        if count > limit:
            break
        n, m, k = struct.unpack_from("<HHH", directory, offset + 28)
        offset += 46 + n + m + k
    return count


def _extract_zip(path: Path, writer: _Writer, budget: _Budget) -> None:
    if _zip_directory_entries(path, budget.max_entries) > budget.max_entries:
        raise PayloadTooLarge(f"the archive holds more than {budget.max_entries:,} entries, the limit")
    layout = _Layout()
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS:
        raise InvalidDataset(DAMAGED) from None
    with zf:
        infos = zf.infolist()
        # The declared sizes refuse an honest bomb before anything is written; the real bytes are counted anyway.
        budget.check(sum(i.file_size for i in infos if not i.is_dir() and _keep(_checked_parts(i.filename)) is None))
        for info in infos:
            budget.entry()
            name = info.filename
            parts = _checked_parts(name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                what = "a symbolic link" if kind == stat.S_IFLNK else "a device, fifo or socket"
                raise InvalidDataset(f"archive member {shown(name)} is {what}, not a file")
            if info.is_dir() or kind == stat.S_IFDIR:
                if parts:
                    layout.add_dir(parts, name)
                continue
            if not parts:
                raise InvalidDataset(f"archive member {shown(name)} has an unsafe path")
            layout.add_file(parts, name)
            reason = _keep(parts, info.file_size)
            if reason is not None:
                writer.skip(parts, reason)
                continue
            if info.flag_bits & 0x1:
                raise InvalidDataset(f"archive member {shown(name)} is encrypted")
            try:
                src = zf.open(info)
            except NotImplementedError:
                raise InvalidDataset(f"archive member {shown(name)} uses an unsupported compression method") from None
            except _READ_ERRORS:
                raise InvalidDataset(DAMAGED) from None
            with src:
                writer.write(parts, _read_chunks(src))


_TAR_EXTENSION_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _GuardedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses, before tarfile reads them, extension headers larger than MAX_TAR_EXTENSION_BYTES
    (tarfile reads a GNU long name or a pax header whole, whatever size it claims), chains of them (tarfile
    recurses once per header) and sparse files (whose maps tarfile reads without bound)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise InvalidDataset(f"archive member {shown(self.name)} is a sparse file, which is not accepted")
        if self.size < 0:  # a base-256 size can be negative, which would make tarfile seek backwards
            raise InvalidDataset(DAMAGED)
        if self.type not in _TAR_EXTENSION_TYPES:
            return super()._proc_member(tarfile_)  # type: ignore[misc]
        if self.size > MAX_TAR_EXTENSION_BYTES:
            raise InvalidDataset(
                f"the archive has a tar extended header of {self.size:,} bytes; at most "
                f"{MAX_TAR_EXTENSION_BYTES:,} are accepted"
            )
        depth = getattr(tarfile_, "_visiontune_chain", 0)
        if depth >= MAX_TAR_EXTENSION_CHAIN:
            raise InvalidDataset(f"the archive has more than {MAX_TAR_EXTENSION_CHAIN} tar extended headers in a row")
        tarfile_._visiontune_chain = depth + 1  # type: ignore[attr-defined]
        try:
            return super()._proc_member(tarfile_)  # type: ignore[misc]
        finally:
            tarfile_._visiontune_chain = depth  # type: ignore[attr-defined]

    def _refuse_sparse(self, *_args: Any) -> None:
        raise InvalidDataset("the archive holds a sparse file, which is not accepted")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


def _next_member(tf: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        member = tf.next()
    except _READ_ERRORS:
        raise InvalidDataset(DAMAGED) from None
    # tarfile keeps every member it read (an attribute its stubs leave out); nothing here needs them again
    tf.members.clear()  # type: ignore[attr-defined]
    return member


def _extract_tar(path: Path, compressed: bool, writer: _Writer, budget: _Budget) -> None:
    layout = _Layout()
    with path.open("rb") as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
        try:
            tf = tarfile.TarFile(fileobj=stream, mode="r", tarinfo=_GuardedTarInfo)
        except _READ_ERRORS:
            raise InvalidDataset(DAMAGED) from None
        with tf:
            while (member := _next_member(tf)) is not None:
                budget.entry()
                name = member.name
                parts = _checked_parts(name)
                if member.isdir():
                    if parts:
                        layout.add_dir(parts, name)
                    continue
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                    what = "a link" if member.issym() or member.islnk() else "a device, fifo or other special file"
                    raise InvalidDataset(f"archive member {shown(name)} is {what}, not a file")
                if not parts:
                    raise InvalidDataset(f"archive member {shown(name)} has an unsafe path")
                layout.add_file(parts, name)
                budget.check(budget.unpacked + member.size)  # refuse a declared size before reading it
                reason = _keep(parts, member.size)
                if reason is not None:
                    writer.skip(parts, reason)
                    budget.add(member.size)  # skipping still decompresses it
                    continue
                try:
                    src = tf.extractfile(member)
                except _READ_ERRORS:
                    raise InvalidDataset(DAMAGED) from None
                if src is not None:
                    with src:
                        writer.write(parts, _read_chunks(src))


def extract_archive(
    path: Path,
    dest: Path,
    max_bytes: int,
    *,
    max_entries: int = _default("max_archive_entries"),
    max_ratio: float = _default("max_compression_ratio"),
) -> list[dict[str, str]]:
    """Unpack path into dest, keeping only images and CIFAR batch files; returns the files left out.

    415 for anything but a zip, tar or tar.gz (by magic bytes); 413 past max_entries entries, max_bytes unpacked
    or max_ratio x the archive's size (counted while unpacking); 422 for unsafe or conflicting names, links,
    devices and damaged data. The files left out are also written to dest/SKIPPED_REPORT. On any refusal what
    was written is removed (dest too when this call created it).
    """
    kind = archive_kind(path)
    budget = _Budget(path.stat().st_size, max_bytes, max_entries, max_ratio)
    writer = _Writer(dest, budget)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            _extract_zip(path, writer, budget)
        else:
            _extract_tar(path, kind == "tar.gz", writer, budget)
        return writer.finish()
    except BaseException:
        writer.discard()
        raise


def read_skipped_report(directory: Path) -> list[dict[str, str]]:
    """The files extract_archive left out of directory (removing its report), or [] when there is none."""
    report = directory / SKIPPED_REPORT
    if report.is_symlink() or not report.is_file():
        return []
    try:
        skipped = json.loads(report.read_text())
    finally:
        report.unlink(missing_ok=True)
    return [s for s in skipped if isinstance(s, dict)] if isinstance(skipped, list) else []


def save_stream(src: BinaryIO, dest: Path, max_bytes: int) -> int:
    """Copy an upload to dest, refusing more than max_bytes; returns the size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the upload is larger than the limit of {max_bytes:,} bytes")
            out.write(chunk)
    return size


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
