"""Hostile dataset archives, images, CIFAR pickles and server paths: refused fast, bounded, with clean messages."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import resource
import stat
import struct
import tarfile
import time
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.errors import Forbidden, InvalidDataset, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.migrate import upgrade
from app.ml import data as ml_data
from app.ml.data import (
    LINK_OUTSIDE,
    DatasetFormatError,
    ImageTooLarge,
    UnreadableImage,
    check_image,
    decode_image,
    read_cifar_batch,
    read_cifar_meta,
)
from app.services import archives, prediction
from app.services.archives import SKIPPED_REPORT, extract_archive
from app.services.datasets import register_directory
from app.services.prediction import ImageUpload, decode_uploads
from tests.factories import CIFAR_DIR, png_bytes

MiB = 1024**2


# ---------------------------------------------------------------- builders of hostile inputs


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_header(name: bytes, size: int, typeflag: bytes = b"0", linkname: bytes = b"") -> bytes:
    """One raw 512-byte GNU tar header with a valid checksum."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157 : 157 + len(linkname)] = linkname
    h[257:265] = b"ustar  \0"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tar_member(name: bytes, data: bytes, typeflag: bytes = b"0") -> bytes:
    padding = b"\0" * (-len(data) % 512)
    return tar_header(name, len(data), typeflag) + data + padding


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def png_1bit(width: int, height: int) -> bytes:
    """A black 1-bit PNG written chunk by chunk: tiny on disk, width x height pixels when decoded."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """18,900 x 18,900 pixels (357 Mpx, 4.7 GB as the RGB /predict used to make) in about 43 KB."""
    data = png_1bit(18900, 18900)
    assert len(data) < 100_000
    return data


def small_png(w: int = 8, h: int = 8, value: int = 0) -> bytes:
    return png_bytes(np.full((h, w, 3), value, np.uint8))


def clean(message: str, *paths: Path) -> str:
    """The message, after asserting it reveals no server path and no object address."""
    assert "0x" not in message, message
    for p in paths:
        assert str(p) not in message, message
        assert str(p.resolve()) not in message, message
    assert "/tmp" not in message and "/work" not in message, message
    return message


def write(tmp_path: Path, data: bytes, name: str = "upload.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def leftovers(dest: Path) -> list[Path]:
    return sorted(dest.rglob("*")) if dest.exists() else []


@pytest.fixture
def unpacked(monkeypatch) -> list[int]:
    """The running total of bytes extract_archive counted as unpacked, as it counted them."""
    seen: list[int] = [0]
    original = archives._Budget.add

    def add(self, n):
        seen.append(self.unpacked + n)
        original(self, n)

    monkeypatch.setattr(archives._Budget, "add", add)
    return seen


def refuse(path: Path, dest: Path, error: type[Exception], max_bytes: int = 10**12, **limits) -> str:
    with pytest.raises(error) as info:
        extract_archive(path, dest, max_bytes, **limits)
    assert leftovers(dest) == []
    return clean(str(info.value), path, dest)


# ---------------------------------------------------------------- archive type by magic bytes only


def test_nul_bytes_are_refused_without_trying_any_decompressor(tmp_path, monkeypatch):
    def never(*_a, **_k):
        raise AssertionError("a decompressor was tried")

    for name in ("open", "is_tarfile"):
        monkeypatch.setattr(tarfile, name, never)
    for module, name in ((gzip, "open"), (gzip, "GzipFile"), (zipfile, "ZipFile")):
        monkeypatch.setattr(module, name, never)
    path = tmp_path / "nuls.bin"
    with path.open("wb") as f:
        f.truncate(64 * MiB)  # 64 MiB of NUL bytes (sparse on disk)
    started = time.perf_counter()
    message = refuse(path, tmp_path / "dest", UnsupportedMediaType)
    assert time.perf_counter() - started < 2  # generous: it reads 512 bytes
    assert "not a dataset archive" in message


def test_gzip_that_is_not_a_tar_and_other_types_are_415(tmp_path):
    for data in (
        gzip.compress(b"\0" * MiB, 1),
        gzip.compress(zip_bytes({"a/1.png": small_png()})),
        b"BZh91AY&SY" + b"\0" * 600,
        b"\xfd7zXZ\0" + b"\0" * 600,
        b"PK\x03\x04" + b"\0" * 600,
        small_png(),
    ):
        assert "not a dataset archive" in refuse(write(tmp_path, data), tmp_path / "dest", UnsupportedMediaType)


# ---------------------------------------------------------------- size, ratio and entry limits


def test_honest_zip_bomb_is_refused_from_its_declared_sizes(tmp_path, unpacked):
    path = write(tmp_path, zip_bytes({"a/zeros.png": b"\0" * (32 * MiB), "b/1.png": small_png()}))
    assert path.stat().st_size < 100_000
    message = refuse(path, tmp_path / "dest", PayloadTooLarge)
    assert "200 times its size" in message
    assert max(unpacked) == 0  # refused before a byte was written


def test_zip_size_limit(tmp_path):
    members = {f"a/{i}.png": os.urandom(300_000) for i in range(4)}
    path = write(tmp_path, zip_bytes(members, zipfile.ZIP_STORED))
    message = refuse(path, tmp_path / "dest", PayloadTooLarge, max_bytes=1_000_000)
    assert "more than 1,000,000 bytes" in message


def test_forged_small_zip_sizes_do_not_buy_more_output(tmp_path, unpacked):
    real = b"\0" * (4 * MiB)
    data = bytearray(zip_bytes({"a/zeros.png": real}))
    # Claim 100 bytes in the local header (offset 22) and in the central directory record (offset 24).
    struct.pack_into("<L", data, 22, 100)
    cd = data.index(b"PK\x01\x02")
    struct.pack_into("<L", data, cd + 24, 100)
    message = refuse(write(tmp_path, bytes(data)), tmp_path / "dest", InvalidDataset)
    assert message == "the archive is damaged"
    assert max(unpacked) <= 100


def test_tar_gz_of_zeros_is_stopped_while_unpacking(tmp_path, unpacked):
    path = write(tmp_path, tar_bytes([(f"a/{i}.png", b"\0" * MiB) for i in range(20)] + [("b/1.png", small_png())]))
    size = path.stat().st_size
    assert size < 100_000
    message = refuse(path, tmp_path / "dest", PayloadTooLarge)
    assert "times its size" in message
    # Stopped at the first member past ratio x archive size (or the 1 MiB floor), not at 20 MiB.
    assert max(unpacked) <= max(200 * size, archives.RATIO_FLOOR_BYTES) + archives.CHUNK


def test_tar_declared_size_over_the_limit_is_refused_before_reading(tmp_path, unpacked):
    path = write(tmp_path, tar_bytes([("a/1.png", os.urandom(200_000)), ("b/1.png", os.urandom(200_000))]))
    refuse(path, tmp_path / "dest", PayloadTooLarge, max_bytes=300_000)
    assert max(unpacked) <= 200_000


def test_entry_count_is_limited_in_zip_and_tar(tmp_path):
    members = {f"c{i % 2}/{i}.png": b"x" for i in range(150)}
    for data in (zip_bytes(members), tar_bytes(list(members.items()))):
        message = refuse(write(tmp_path, data), tmp_path / "dest", PayloadTooLarge, max_entries=100)
        assert "more than 100 entries" in message


def test_zip_entry_count_is_counted_not_taken_from_the_end_record(tmp_path):
    data = bytearray(zip_bytes({f"c/{i}.png": b"x" for i in range(150)}))
    eocd = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 1, 1)  # declare a single entry
    message = refuse(write(tmp_path, bytes(data)), tmp_path / "dest", PayloadTooLarge, max_entries=100)
    assert "more than 100 entries" in message


# ---------------------------------------------------------------- tar extension headers


@pytest.mark.parametrize("typeflag", [b"L", b"K", b"x", b"g"])
def test_tar_extension_header_claiming_a_gigabyte_is_refused_before_it_is_read(tmp_path, typeflag):
    body = tar_header(b"././@LongLink", 1 << 30, typeflag) + b"a" * (32 * MiB)  # what tarfile would read whole
    path = write(tmp_path, gzip.compress(body, 9))
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        message = refuse(path, tmp_path / "dest", InvalidDataset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "1,073,741,824 bytes" in message and "extended header" in message
    assert peak < 16 * MiB


def test_chained_tar_extension_headers_do_not_recurse(tmp_path):
    body = b"".join(tar_member(b"././@LongLink", b"a/%d.png\0" % i, b"L") for i in range(3000))
    path = write(tmp_path, gzip.compress(body + tar_member(b"a/1.png", b"x") + b"\0" * 1024))
    assert "in a row" in refuse(path, tmp_path / "dest", InvalidDataset)


def test_a_real_gnu_long_name_still_works(tmp_path):
    long_name = "a/" + "n" * 200 + ".png"
    content = b"img" * 10  # not decoded here, but long enough to be an image
    body = tar_member(b"././@LongLink", long_name.encode() + b"\0", b"L") + tar_member(b"ignored", content)
    path = write(tmp_path, body + b"\0" * 1024)
    assert extract_archive(path, tmp_path / "dest", 10**9) == []
    assert (tmp_path / "dest" / long_name).read_bytes() == content


# ---------------------------------------------------------------- names, links and conflicts


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def zip_with(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names this builds on purpose
        with zipfile.ZipFile(buf, "w") as zf:
            for name, body in entries:
                zf.writestr(name, body)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([("a", b"x"), ("a/b.png", b"y")], "'a/b.png' lies inside 'a'"),
        ([("a/", b""), ("a", b"x")], "'a' is both a file and a folder"),
        ([("a/b.png", b"y"), ("a", b"x")], "'a' is both a file and a folder"),
        ([("a/1.png", b"x"), ("a/1.png", b"y")], "'a/1.png' appears twice"),
        ([("a/./1.png", b"x"), ("a//1.png", b"y")], "appears twice"),
        ([(symlink_info("link"), b"/etc"), ("link/child.png", b"y")], "'link' is a symbolic link"),
        ([("../evil/1.png", b"x")], "unsafe path"),
        ([("/abs/1.png", b"x")], "unsafe path"),
        ([("C:/x/1.png", b"x")], "unsafe path"),
        ([("a/" + "n" * 300 + ".png", b"x")], "component longer than 255 bytes"),
        ([("/".join(["d" * 200] * 6) + "/1.png", b"x")], "longer than 1024 bytes"),
    ],
)
def test_zip_member_problems_are_422_naming_the_member(tmp_path, entries, expected):
    message = refuse(write(tmp_path, zip_with(entries)), tmp_path / "dest", InvalidDataset)
    assert expected in message
    assert len(message) < 300  # names are quoted truncated


def tar_info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([tar_info("link", tarfile.SYMTYPE, "/etc"), ("link/child.png", b"y")], "'link' is a link"),
        ([("a/1.png", b"x"), tar_info("a/2.png", tarfile.LNKTYPE, "a/1.png")], "'a/2.png' is a link"),
        ([tar_info("a/fifo.png", tarfile.FIFOTYPE)], "'a/fifo.png' is a device, fifo"),
        ([tar_info("a/dev.png", tarfile.CHRTYPE)], "'a/dev.png' is a device, fifo"),
        ([tar_info("a", tarfile.DIRTYPE), ("a", b"x")], "'a' is both a file and a folder"),
        ([("a", b"x"), ("a/b.png", b"y")], "'a/b.png' lies inside 'a'"),
        ([("a/1.png", b"x"), ("a/1.png", b"y")], "'a/1.png' appears twice"),
        ([("../1.png", b"x")], "unsafe path"),
    ],
)
def test_tar_member_problems_are_422_naming_the_member(tmp_path, members, expected):
    assert expected in refuse(write(tmp_path, tar_bytes(members)), tmp_path / "dest", InvalidDataset)


def test_nul_in_a_pax_name_is_refused(tmp_path):
    record = "path=a/x\0y.png\n"
    pax = f"{len(record) + 3} {record}".encode()
    body = tar_member(b"PaxHeader", pax, b"x") + tar_member(b"a/z.png", b"img") + b"\0" * 1024
    assert "NUL" in refuse(write(tmp_path, body), tmp_path / "dest", InvalidDataset)


def test_damaged_archives_are_422_without_internals(tmp_path):
    good_zip = zip_bytes({"a/1.png": os.urandom(5000) * 3, "b/1.png": small_png()})
    start = good_zip.index(b"a/1.png") + 20
    broken_zip = good_zip[:start] + bytes(b ^ 0x55 for b in good_zip[start : start + 500]) + good_zip[start + 500 :]
    good_tgz = tar_bytes([("a/1.png", os.urandom(100_000)), ("b/1.png", small_png())])
    for data in (
        broken_zip,
        good_tgz[: len(good_tgz) // 2],
        good_tgz[:10] + b"\xff" * 200,
        tar_bytes([("a/1.png", os.urandom(100_000))], gz=False)[:20_000],
    ):
        assert refuse(write(tmp_path, data), tmp_path / "dest", InvalidDataset) == "the archive is damaged"


def test_only_images_and_cifar_files_are_written_and_the_rest_reported(tmp_path):
    data = zip_bytes(
        {
            "a/1.png": small_png(),
            "a/notes.txt": b"hello",
            "b/2.JPG": b"jpeg" * 8,
            "b/3.png": b"tiny",
            "cifar-10-batches-py/data_batch_1": b"p",
            "cifar-10-batches-py/readme.html": b"<html>",
            "run.sh": b"#!/bin/sh",
            ".hidden/x.png": b"x",
            "__MACOSX/a/._1.png": b"x",
        }
    )
    dest = tmp_path / "dest"
    skipped = extract_archive(write(tmp_path, data), dest, 10**9)
    assert skipped == [
        {"file": "a/notes.txt", "reason": "not an image file (by extension)"},
        {"file": "b/3.png", "reason": "too small to be an image"},
        {"file": "run.sh", "reason": "not an image file (by extension)"},
    ]
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == [SKIPPED_REPORT, "a/1.png", "b/2.JPG", "cifar-10-batches-py/data_batch_1"]


def test_refusal_leaves_an_existing_dest_as_it_was(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    data = zip_with([("a/1.png", small_png()), ("a/1.png", b"again")])
    with pytest.raises(InvalidDataset):
        extract_archive(write(tmp_path, data), dest, 10**9)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------- images


def test_pillow_limit_is_its_real_default():
    assert Image.MAX_IMAGE_PIXELS == 89_478_485 == ml_data.DEFAULT_MAX_IMAGE_PIXELS


def test_png_bomb_is_refused_from_its_header(tmp_path, png_bomb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode_image(io.BytesIO(png_bomb), max_pixels=40_000_000)
    assert time.perf_counter() - started < 5
    assert "more than 40,000,000 pixels" in str(info.value)
    path = write(tmp_path, png_bomb, "bomb.png")
    reason = check_image(path)
    assert reason is not None and "more than" in clean(reason, path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 * 1024


def test_pillow_bomb_warning_is_an_error(tmp_path):
    data = png_1bit(10000, 10000)  # 100 Mpx: over Pillow's limit, under twice it (where Pillow only warns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLarge):
            decode_image(io.BytesIO(data), max_pixels=10**9)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_unreadable_images_have_short_reasons_without_addresses_or_paths(tmp_path):
    png = small_png(64, 64, 7)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"\0" * 100
    cases = {
        b"hello": "not a JPEG, PNG, BMP, GIF, WebP or TIFF image",
        eps: "not a JPEG, PNG",
        png[:60]: "PNG: truncated data",
        jpeg.getvalue()[: len(jpeg.getvalue()) // 2]: "JPEG: truncated data",
    }
    for data, expected in cases.items():
        with pytest.raises(UnreadableImage) as info:
            decode_image(io.BytesIO(data))
        assert expected in clean(str(info.value))
        path = write(tmp_path, data, "x.png")
        reason = check_image(path)
        assert reason is not None and expected in clean(reason, path)


def test_only_the_first_frame_is_decoded_and_large_images_are_shrunk():
    buf = io.BytesIO()
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (20, 10), (0, 0, 255))
    red.save(buf, "GIF", save_all=True, append_images=[blue] * 5)
    img = decode_image(io.BytesIO(buf.getvalue()))
    assert img.size == (20, 10) and img.getpixel((0, 0)) == (255, 0, 0)
    wide = io.BytesIO()
    Image.new("RGB", (3000, 1000), (0, 255, 0)).save(wide, "JPEG")
    assert decode_image(io.BytesIO(wide.getvalue()), max_side=256).size == (768, 256)
    panorama = io.BytesIO()
    Image.new("L", (8000, 100)).save(panorama, "PNG")
    assert decode_image(io.BytesIO(panorama.getvalue()), max_side=256).size == (1024, 13)


# ---------------------------------------------------------------- /predict decoding


def test_predict_checks_every_header_before_decoding_any(monkeypatch, png_bomb):
    decoded: list[object] = []
    real = prediction.decode_image
    monkeypatch.setattr(prediction, "decode_image", lambda *a, **k: decoded.append(a) or real(*a, **k))
    uploads = [ImageUpload("ok.png", small_png()), ImageUpload("bomb.png", png_bomb)]
    with pytest.raises(PayloadTooLarge) as info:
        decode_uploads(uploads, 64, 20 * MiB)
    assert "bomb.png has more than 40,000,000 pixels" in clean(str(info.value))
    monkeypatch.setattr(ml_data.Image, "MAX_IMAGE_PIXELS", None)  # past Pillow's own check, ours still holds
    with pytest.raises(PayloadTooLarge) as info:
        decode_uploads([ImageUpload("bomb.png", png_bomb)], 64, 20 * MiB)
    assert "bomb.png is 18900x18900 = 357,210,000 pixels; at most 40,000,000" in str(info.value)
    many = [ImageUpload(f"{i}.png", small_png(100, 100)) for i in range(3)]
    with pytest.raises(PayloadTooLarge) as info:
        decode_uploads(many, 64, 20 * MiB, max_request_pixels=25_000)
    assert "more than 25,000 pixels together" in str(info.value)
    assert decoded == []


def test_predict_decodes_one_at_a_time_into_bounded_images():
    big = io.BytesIO()
    Image.new("RGB", (4000, 3000), (1, 2, 3)).save(big, "PNG")
    images = decode_uploads([ImageUpload("big.png", big.getvalue()), ImageUpload("s.png", small_png())], 64, 20 * MiB)
    assert [im.size for im in images] == [(1365, 1024), (8, 8)]
    with pytest.raises(UnsupportedMediaType) as info:
        decode_uploads([ImageUpload("notes.txt", b"hello")], 64, 20 * MiB)
    assert clean(str(info.value)).startswith("notes.txt is not a readable image (")
    with pytest.raises(PayloadTooLarge):
        decode_uploads([ImageUpload("n" * 5000, small_png(10, 10))], 64, 20 * MiB, max_pixels=50)


# ---------------------------------------------------------------- CIFAR pickles


def cifar_file(tmp_path: Path, data: bytes, name: str = "data_batch_1") -> Path:
    return write(tmp_path, data, name)


def test_hostile_cifar_pickles_are_format_errors(tmp_path, monkeypatch):
    class Reduce:
        def __init__(self, func, args):
            self.func, self.args = func, args

        def __reduce__(self):
            return self.func, self.args

    import codecs

    from numpy._core.multiarray import _reconstruct

    cases = {
        b"\x80\x06N.": "unsupported pickle protocol: 6",
        b"\x80\x02": "truncated data",
        b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b".": "not a dict",
        pickle.dumps({b"data": Reduce(_reconstruct, (np.ndarray, (10**12,), b"b"))}, 2): "larger than the file",
        pickle.dumps({b"data": Reduce(np.ndarray, ((10**12,),))}, 2): "not a valid pickle",
        pickle.dumps({b"data": Reduce(codecs.encode, (b"x" * 10, "zlib"))}, 2): "codec",
        b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b".": "not a dict",
    }
    for raw, expected in cases.items():
        path = cifar_file(tmp_path, raw)
        with pytest.raises(DatasetFormatError) as info:
            read_cifar_batch(path, 10)
        message = clean(str(info.value), path)
        assert expected in message and len(message) < 200, message
    sparse = tmp_path / "data_batch_2"
    with sparse.open("wb") as f:
        f.truncate(300 * MiB)
    with pytest.raises(DatasetFormatError, match="data_batch_2 is 314,572,800 bytes, more than"):
        read_cifar_batch(sparse, 10)
    monkeypatch.setattr(ml_data, "MAX_PICKLE_OPCODES", 1000)
    with pytest.raises(DatasetFormatError, match="more pickle opcodes"):
        read_cifar_batch(cifar_file(tmp_path, pickle.dumps({b"labels": list(range(5000))}, 2)), 10)


def test_cifar_batch_contents_are_checked_before_conversion(tmp_path):
    cases = {
        b"data": "data is not a uint8 array",
    }
    for data, expected in [*cases.items(), (np.zeros((2, 3072), np.float64), "data is not a uint8 array")]:
        path = cifar_file(tmp_path, pickle.dumps({b"data": data, b"labels": [0]}, 2))
        with pytest.raises(DatasetFormatError, match=expected):
            read_cifar_batch(path, 10)
    arr = np.zeros((2, 3072), np.uint8)
    for labels in ([0, "x"], [[0] * 10**3, 1], [0, 1, 2], [0, 10**30]):
        path = cifar_file(tmp_path, pickle.dumps({b"data": arr, b"labels": labels}, 2))
        with pytest.raises(DatasetFormatError):
            read_cifar_batch(path, 10)


def test_cifar_label_names_must_be_utf8(tmp_path):
    cifar_file(tmp_path, pickle.dumps({b"label_names": [b"cat", b"\xff\xfedog"]}, 2), "batches.meta")
    with pytest.raises(DatasetFormatError, match="label name 1 is not valid UTF-8"):
        read_cifar_meta(tmp_path)


def test_mutated_cifar_pickles_fail_only_as_format_errors(tmp_path):
    meta = (CIFAR_DIR / "batches.meta").read_bytes()
    small = pickle.dumps({b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [0, 1]}, 2)
    rng = np.random.default_rng(0)
    for original, name in ((meta, "batches.meta"), (small, "data_batch_1")):
        for _ in range(150):
            data = bytearray(original)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[pos] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                data = data[: int(rng.integers(1, len(data)))]
            cifar_file(tmp_path, bytes(data), name)
            try:
                read_cifar_meta(tmp_path) if name == "batches.meta" else read_cifar_batch(tmp_path / name, 10)
            except DatasetFormatError as exc:
                clean(str(exc), tmp_path)


# ---------------------------------------------------------------- registering server directories


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'visiontune.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def server(tmp_path) -> Settings:
    root = tmp_path / "root"
    root.mkdir()
    return Settings(data_dir=tmp_path / "data", dataset_root=root, database_url="sqlite://")


def images(folder: Path, count: int, value: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}.png").write_bytes(small_png(value=value + i))


def register(sessions, settings: Settings, path: str, skip_invalid: bool = False):
    with sessions() as session:
        dataset = register_directory(session, settings, path, None, skip_invalid)
        session.rollback()
        return dataset


def test_register_path_problems_are_422_without_the_root(sessions, server):
    root = server.dataset_root
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    cases = [
        ("cifar\x00/etc", InvalidInput, "contains a NUL byte"),
        ("a/" * 2100, InvalidInput, "longer than 4096 characters"),
        ("x" * 300, InvalidInput, "component longer than 255 bytes"),
        ("loop1/inside", InvalidInput, "symbolic link loop"),
        ("bad\ud800name", InvalidInput, "not a valid path"),
        ("/etc", Forbidden, "outside the dataset root"),
        ("../", Forbidden, "outside the dataset root"),
        ("missing", InvalidInput, "not a directory"),
    ]
    for path, error, expected in cases:
        with pytest.raises(error) as info:
            register(sessions, server, path)
        message = clean(str(info.value), root)
        assert expected in message and len(message) < 250, message
        assert repr(path[:20])[:-1] in message or expected.startswith("longer")


def test_registering_the_root_never_follows_links_out_of_it(sessions, server, tmp_path):
    root = server.dataset_root
    outside = tmp_path / "outside"
    images(outside / "secret", 3, 100)
    (outside / "secret.png").write_bytes(small_png(value=9))
    images(root / "a", 2)
    images(root / "b", 2, 50)
    (root / "b" / "leak.png").symlink_to(outside / "secret.png")
    (root / "b" / "fine.png").symlink_to(root / "a" / "0.png")  # a link that stays inside is indexed
    (root / "c").symlink_to(outside / "secret")
    (root / "a" / "deep").mkdir()
    (root / "a" / "deep" / "up").symlink_to(root / "a")  # a loop inside the root: listed once, no hang
    os.mkfifo(root / "b" / "pipe.png")  # opening it would block forever
    ds = register(sessions, server, str(root))
    assert ds.class_names == ["a", "b"]
    assert ds.split_counts == {"train": {"a": 2, "b": 3}}
    reasons = {f["file"]: f["reason"] for f in ds.invalid_files}
    assert reasons["b/leak.png"] == LINK_OUTSIDE and reasons["c"] == LINK_OUTSIDE
    assert reasons["b/pipe.png"] == "not a regular file"
    manifest = ml_data.read_manifest(Path(ds.path))
    indexed = [rel for rows in manifest["samples"].values() for rel, _ in rows]
    assert "b/leak.png" not in indexed and not any(r.startswith("c/") for r in indexed)
    assert all(not Path(f["file"]).is_absolute() for f in ds.invalid_files)


def test_registered_cifar_batches_must_stay_inside_the_root(sessions, server, tmp_path):
    root = server.dataset_root
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("batches.meta", "data_batch_1"):
        (cifar / name).write_bytes((CIFAR_DIR / name).read_bytes())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "data_batch_2").write_bytes((CIFAR_DIR / "data_batch_2").read_bytes())
    (cifar / "data_batch_2").symlink_to(tmp_path / "elsewhere" / "data_batch_2")
    ds = register(sessions, server, "cifar")
    assert ds.format == "cifar10" and sum(ds.split_counts["train"].values()) == 1017
    (cifar / "batches.meta").unlink()
    (cifar / "batches.meta").symlink_to(CIFAR_DIR / "batches.meta")  # outside the root: not a CIFAR folder
    with pytest.raises(InvalidDataset):
        register(sessions, server, "cifar")


# ---------------------------------------------------------------- over HTTP


def error(r, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    return body["error"]["message"]


def cifar_zip(meta: bytes) -> bytes:
    batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, 2)
    return zip_bytes({"cifar-10-batches-py/batches.meta": meta, "cifar-10-batches-py/data_batch_1": batch})


def test_bombs_over_http_are_4xx_json_and_leave_nothing(client, settings, png_bomb):
    bombs = [
        (b"\0" * MiB, 415, "not a dataset archive"),
        (zip_bytes({"a/zeros.png": b"\0" * (32 * MiB), "b/1.png": small_png()}), 413, "times its size"),
        (gzip.compress(tar_header(b"././@LongLink", 1 << 30, b"L") + b"a" * MiB), 422, "extended header"),
        (zip_with([("a", b"x"), ("a/b.png", b"y")]), 422, "lies inside"),
        (zip_with([(symlink_info("a/l.png"), b"/etc/passwd"), ("b/1.png", b"x")]), 422, "symbolic link"),
        (zip_bytes({"a/" + "n" * 300 + ".png": b"x"}), 422, "longer than 255 bytes"),
        (cifar_zip(b"\x80\x06N."), 422, "unsupported pickle protocol"),
        (cifar_zip(pickle.dumps({b"label_names": [b"\xff", b"b"]}, 2)), 422, "not valid UTF-8"),
        (
            zip_bytes({"a/1.png": png_1bit(10000, 10000), "a/2.png": small_png(), "b/1.png": small_png()}),
            422,
            "more than 89,478,485",
        ),
    ]
    for data, status, expected in bombs:
        r = client.post("/datasets", files={"file": ("d.zip", io.BytesIO(data), "application/zip")})
        assert expected in clean(error(r, status), settings.data_dir), r.text
    assert leftovers(settings.datasets_dir) == [] and leftovers(settings.uploads_dir) == []
    r = client.post("/predict", files=[("files", ("bomb.png", io.BytesIO(png_bomb), "image/png"))])
    assert "bomb.png has more than 40,000,000 pixels" in error(r, 413)


def test_register_over_http_hides_the_root(client, settings):
    settings.dataset_root.mkdir(parents=True, exist_ok=True)
    for path, status in (("x\x00y", 422), ("/etc", 403), ("../..", 403)):
        r = client.post("/datasets/register", json={"path": path})
        clean(error(r, status), settings.dataset_root)
