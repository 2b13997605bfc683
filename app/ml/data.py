"""Reading labelled images: ImageFolder trees and CIFAR-10 python batches, splits and torch datasets."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
MANIFEST = "manifest.json"
# Pillow's own default limit. Pillow merely warns between 1x and 2x of MAX_IMAGE_PIXELS and raises only above 2x,
# so the limit is checked here from the header (and the warning is turned into an error) before anything is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
# What Pillow may parse: the formats of IMAGE_EXTENSIONS (its JPEG opener also yields "MPO", multi-picture JPEGs).
# Everything else it could open (EPS through Ghostscript, PSD, ICNS, ...) is refused as not an image.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
LINK_OUTSIDE = "link leads outside the dataset root"


class DatasetFormatError(ValueError):
    """The files do not form a usable labelled image dataset; the message says why."""


class UnreadableImage(DatasetFormatError):
    """An image Pillow cannot decode; `reason` is short and holds no path or object address."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not a readable image ({reason})")
        self.reason = reason


class ImageTooLarge(DatasetFormatError):
    """An image whose header declares more pixels than allowed; nothing of it was decoded."""

    def __init__(self, size: tuple[int, int] | None, limit: int) -> None:
        self.size, self.limit = size, limit
        if size is None:
            super().__init__(f"the image has more than {limit:,} pixels, the limit")
        else:
            w, h = size
            super().__init__(f"the image is {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,}")
        self.reason = str(self)


def is_hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX" or part.startswith("._")


def _safe_text(text: str) -> bool:
    """Whether an exception's text may be shown: short, printable, no path and no object address."""
    return len(text) <= 80 and text.isprintable() and not any(s in text for s in ("0x", "/", "\\", "<", ">"))


def _image_failure(exc: BaseException, fmt: str | None) -> str:
    """A short reason for a decode failure, e.g. 'PNG: truncated data'; never Pillow's text with an address."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a JPEG, PNG, BMP, GIF, WebP or TIFF image"
    text = str(exc)
    if isinstance(exc, MemoryError):
        reason = "too large to decode"
    elif "truncated" in text.lower():
        reason = "truncated data"
    elif _safe_text(text) and text:
        reason = text
    else:
        reason = "damaged data"
    return f"{fmt}: {reason}" if fmt else reason


@contextmanager
def _open_image(source: Path | bytes | Any, max_pixels: int) -> Iterator[Image.Image]:
    """The image with only its header parsed, once its pixel count is known to be within max_pixels.

    The header check here is what enforces the limit (warnings.catch_warnings is process-global state, so under
    concurrent requests Pillow's DecompressionBombWarning-as-error is a second line only).
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source, formats=IMAGE_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLarge(None, min(max_pixels, DEFAULT_MAX_IMAGE_PIXELS)) from None
        except Exception as exc:  # hostile headers fail in many ways (OSError, SyntaxError, struct.error, ...)
            raise UnreadableImage(_image_failure(exc, None)) from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise UnreadableImage(f"{img.format}: empty image")
            if width * height > max_pixels:
                raise ImageTooLarge((width, height), max_pixels)
            yield img


def image_dimensions(source: Path | bytes | Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the header alone; ImageTooLarge or UnreadableImage without decoding any pixel."""
    with _open_image(source, max_pixels) as img:
        return img.size


def decode_image(
    source: Path | bytes | Any,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_side: int | None = None,
    *,
    draft_side: int | None = None,
) -> Image.Image:
    """Decode the first frame of an image as RGB, refusing more than max_pixels from its header.

    With max_side, the result is shrunk so its shorter side is at most max_side and its longer side at most
    4 x max_side (JPEGs are decoded at reduced scale). draft_side (at most max_side) lets a JPEG decode at a scale
    down to the one that still covers draft_side x draft_side. Raises ImageTooLarge / UnreadableImage
    (DatasetFormatError).
    Animated GIF/WebP/PNG and multi-page TIFF: only the first frame is ever decoded (nothing seeks).
    """
    with _open_image(source, max_pixels) as img:
        fmt = img.format
        try:
            if (draft_side or max_side) and fmt in ("JPEG", "MPO"):
                side = min(n for n in (draft_side, max_side) if n)
                img.draft("RGB", (side, side))
            img.load()
            rgb = img.convert("RGB")
        except DatasetFormatError:
            raise
        except Exception as exc:  # a damaged stream fails as OSError, SyntaxError, ValueError, struct.error, ...
            raise UnreadableImage(_image_failure(exc, fmt)) from None
    if max_side:
        scale = min(max_side / min(rgb.size), 4 * max_side / max(rgb.size))
        if scale < 1:
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return rgb


def check_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """None when path decodes as an image within max_pixels, else a short reason (JPEGs decode at reduced scale)."""
    try:
        with _open_image(path, max_pixels) as img:
            fmt = img.format
            try:
                if fmt in ("JPEG", "MPO"):
                    img.draft("RGB", (64, 64))
                img.load()
            except DatasetFormatError:
                raise
            except Exception as exc:
                raise UnreadableImage(_image_failure(exc, fmt)) from None
    except UnreadableImage as exc:
        return exc.reason
    except ImageTooLarge as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- CIFAR-10 python batches


def find_cifar_dir(root: Path, within: Path | None = None) -> Path | None:
    """The folder under root holding CIFAR-10 python batches (batches.meta + data/test batches).

    Only files and folders that resolve inside `within` (default: root) count; links leading out are not followed.
    """
    tree = _Tree(root, within)
    candidates: list[Path] = []
    for directory, files in tree.walk(root):
        names = {f.name for f in files}
        if "batches.meta" in names and ("test_batch" in names or "data_batch_1" in names):
            candidates.append(directory)
    if root in candidates:
        return root
    return min(candidates, default=None)


# CIFAR batches are pickles, and uploads are untrusted: only numpy array reconstruction may be referenced.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
}


# A CIFAR-10 batch is about 31 MB and batches.meta a few hundred bytes; a real batch pickles in ~50k opcodes
# (CIFAR-100's 50,000-image train file in ~250k). Bounding the file and its opcodes bounds what loading can allocate.
MAX_PICKLE_BYTES = 256 * 1024**2
MAX_META_BYTES = 1024**2
MAX_PICKLE_OPCODES = 2_000_000
MAX_CLASSES = 1000
MAX_LABEL_NAME_CHARS = 255
# Stands in for numpy.ndarray inside the unpickler: it can be passed to _reconstruct but not called to allocate.
_NDARRAY = object()


def _reconstruct_guarded(real: Callable[..., Any]) -> Callable[..., Any]:
    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not _NDARRAY or not isinstance(shape, tuple) or len(shape) > 8:
            raise DatasetFormatError("the CIFAR batch builds something other than a numpy array")
        count = 1
        for dim in shape:
            if not isinstance(dim, int) or dim < 0:
                raise DatasetFormatError("the CIFAR batch holds an array with an invalid shape")
            count *= dim
        if count * max(1, np.dtype(dtype).itemsize) > MAX_PICKLE_BYTES:
            raise DatasetFormatError("the CIFAR batch declares an array larger than the file")
        return real(np.ndarray, shape, dtype)

    return reconstruct


def _encode_guarded(real: Callable[..., Any]) -> Callable[..., Any]:
    def encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> Any:
        if encoding not in ("latin1", "latin-1"):
            raise DatasetFormatError("the CIFAR batch uses a codec a data file never needs")
        return real(obj, encoding, errors)

    return encode


class _CifarUnpickler(pickle._Unpickler):
    # The pure-Python unpickler: its memo is a dict, so a forged memo index cannot make it allocate (the C one
    # grows an array to the index), and it reads from a BytesIO, so a forged length cannot either.
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetFormatError(f"CIFAR batch references {module}.{name}, which a data file never needs")
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        found = super().find_class(module.replace("numpy.core.", "numpy._core."), name)
        if name == "_reconstruct":
            return _reconstruct_guarded(found)
        if name == "encode":
            return _encode_guarded(found)
        return found


def _pickle_failure(exc: BaseException) -> str:
    """A short reason a pickle did not load, without object reprs or addresses."""
    text = str(exc)
    if isinstance(exc, ValueError) and "unsupported pickle protocol" in text:
        return text
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large"
    if isinstance(exc, EOFError) or "truncated" in text or "exhausted" in text:
        return "truncated data"
    return "not a valid pickle"


def _unpickle(path: Path, max_bytes: int = MAX_PICKLE_BYTES) -> dict[str, Any]:
    """The dict a CIFAR pickle holds; every failure of a hostile file is a DatasetFormatError naming the file."""
    try:
        st = path.stat()
    except OSError:
        raise DatasetFormatError(f"{path.name} cannot be read") from None
    if not stat.S_ISREG(st.st_mode):
        raise DatasetFormatError(f"{path.name} is not a regular file")
    if st.st_size > max_bytes:
        raise DatasetFormatError(
            f"{path.name} is {st.st_size:,} bytes, more than the {max_bytes:,} a CIFAR file may have"
        )
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DatasetFormatError(f"{path.name} is more than the {max_bytes:,} bytes a CIFAR file may have")
    try:
        for count, _ in enumerate(pickletools.genops(data)):
            if count >= MAX_PICKLE_OPCODES:
                raise DatasetFormatError(f"{path.name} holds more pickle opcodes than a CIFAR file has")
        raw = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DatasetFormatError:
        raise
    except Exception as exc:  # hostile pickles fail in every way: ValueError, struct.error, UnicodeDecodeError...
        raise DatasetFormatError(f"{path.name} is not a readable CIFAR pickle ({_pickle_failure(exc)})") from None
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path.name} is not a CIFAR batch (not a dict)")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_cifar_meta(cifar_dir: Path) -> list[str]:
    """Class names from batches.meta; a name that is not valid UTF-8 is refused (DatasetFormatError), not guessed."""
    meta = _unpickle(cifar_dir / "batches.meta", MAX_META_BYTES)
    raw_names = meta.get("label_names")
    if not isinstance(raw_names, list | tuple):
        raise DatasetFormatError("batches.meta is unreadable: it has no list of label_names")
    if len(raw_names) > MAX_CLASSES:
        raise DatasetFormatError(f"batches.meta lists {len(raw_names)} classes; at most {MAX_CLASSES} are supported")
    names: list[str] = []
    for i, raw in enumerate(raw_names):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetFormatError(f"batches.meta: label name {i} is not valid UTF-8") from None
        if not isinstance(raw, str) or not raw or len(raw) > MAX_LABEL_NAME_CHARS or not raw.isprintable():
            raise DatasetFormatError(
                f"batches.meta: label name {i} is not a printable name of 1 to {MAX_LABEL_NAME_CHARS} characters"
            )
        names.append(raw)
    if len(names) < 2:
        raise DatasetFormatError("batches.meta lists fewer than 2 classes")
    return names


def _labels_array(labels: Any, name: str) -> np.ndarray:
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if isinstance(labels, list) and all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in labels):
        try:
            return np.asarray(labels, dtype=np.int64)
        except OverflowError:
            raise DatasetFormatError(f"{name}: labels outside the int64 range") from None
    raise DatasetFormatError(f"{name} is not a readable CIFAR batch: labels are not a list of integers")


def read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×32×32×3, labels int64 N) from one python batch file."""
    batch = _unpickle(path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DatasetFormatError(f"{path.name} is not a readable CIFAR batch: data is not a uint8 array")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(f"{path.name}: expected N×3072 pixels and N labels, got {data.shape}")
    labels = _labels_array(batch.get("labels", batch.get("fine_labels")), path.name)
    if len(labels) != len(data):
        raise DatasetFormatError(f"{path.name}: expected N×3072 pixels and N labels, got {data.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(f"{path.name}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def cifar_split_files(cifar_dir: Path, within: Path | None = None) -> dict[str, list[str]]:
    """Batch file names per split: data_batch_* train, test_batch test (only files resolving inside `within`)."""
    names = {f.name for f in _Tree(cifar_dir, within or cifar_dir).children(cifar_dir)[1]}
    splits = {"train": sorted(n for n in names if n.startswith("data_batch_"))}
    if "test_batch" in names:
        splits["test"] = ["test_batch"]
    return splits


# ---------------------------------------------------------------- ImageFolder trees


@dataclass
class FolderScan:
    """What an ImageFolder tree holds: classes, samples per split, and what could not be used."""

    class_names: list[str]
    samples: dict[str, list[tuple[str, int]]]  # split -> [(path relative to root, label)]
    invalid: list[dict[str, str]] = field(default_factory=list)


# Reasons a file is left out of a dataset without making the upload or registration fail (unlike a bad image).
LEFT_OUT_REASONS = ("not an image file", LINK_OUTSIDE, "broken or looping link", "not a regular file", "cannot be")


class _Tree:
    """Lists a directory tree without leaving `within`.

    Links that lead outside `within`, broken or looping links, special files (fifos, devices, sockets) and
    unreadable entries are reported relative to root instead of followed; a directory reached twice (a link loop
    inside `within`) is listed once, so nothing hangs.
    """

    def __init__(self, root: Path, within: Path | None = None) -> None:
        self.root = root
        self.within = (within or root).resolve()
        self.invalid: list[dict[str, str]] = []
        self._reported: set[str] = set()

    def report(self, path: Path, reason: str) -> None:
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:
            rel = path.name
        if rel not in self._reported:
            self._reported.add(rel)
            self.invalid.append({"file": rel, "reason": reason})

    def children(self, directory: Path) -> tuple[list[Path], list[Path]]:
        """(sub-directories, regular files) of directory, sorted by name, hidden names left out."""
        dirs: list[Path] = []
        files: list[Path] = []
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            self.report(directory, "cannot be listed")
            return dirs, files
        for entry in entries:
            if is_hidden(entry.name):
                continue
            path = directory / entry.name
            try:
                if entry.is_symlink():
                    try:
                        real = path.resolve(strict=True)
                    except (OSError, RuntimeError):
                        self.report(path, "broken or looping link")
                        continue
                    if not real.is_relative_to(self.within):
                        self.report(path, LINK_OUTSIDE)
                        continue
                    mode = real.stat().st_mode
                else:
                    mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                self.report(path, "cannot be read")
                continue
            if stat.S_ISDIR(mode):
                dirs.append(path)
            elif stat.S_ISREG(mode):
                files.append(path)
            else:
                self.report(path, "not a regular file")
        return dirs, files

    def walk(self, top: Path) -> Iterator[tuple[Path, list[Path]]]:
        """(directory, its regular files) for top and every directory below it, each (device, inode) once."""
        seen: set[tuple[int, int]] = set()
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                st = directory.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs, files = self.children(directory)
            yield directory, files
            stack.extend(reversed(dirs))

    def files_under(self, top: Path) -> list[Path]:
        """Every regular file below top, sorted."""
        return sorted(f for _, files in self.walk(top) for f in files)


def content_root(root: Path, within: Path | None = None) -> Path:
    """Descend through single wrapper folders (e.g. a zip of `mydata/`) to where classes or splits start."""
    return _content_root(_Tree(root, within), root)


def _content_root(tree: _Tree, root: Path) -> Path:
    current = root
    seen = {root.resolve()}
    while True:
        dirs, files = tree.children(current)
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(dirs) == 1 and not images and dirs[0].name.lower() not in SPLIT_ALIASES:
            inner = tree.children(dirs[0])[0]
            real = dirs[0].resolve()
            if inner and real not in seen:
                seen.add(real)
                current = dirs[0]
                continue
        return current


def scan_imagefolder(
    root: Path, check: bool = True, within: Path | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> FolderScan:
    """Scan `<class>/<image>` or `<split>/<class>/<image>` under root; decode each image when check.

    Nothing outside `within` (default: root) is read: links leading out are reported in `invalid`, not followed.
    """
    tree = _Tree(root, within)
    base = _content_root(tree, root)
    top_dirs = {p.name: p for p in tree.children(base)[0]}
    split_dirs = {SPLIT_ALIASES[n.lower()]: p for n, p in top_dirs.items() if n.lower() in SPLIT_ALIASES}
    if split_dirs:
        if "train" not in split_dirs:
            raise DatasetFormatError(
                f"found split folders {sorted(split_dirs)} but no train/ folder with the training images"
            )
        others = sorted(set(top_dirs) - {n for n in top_dirs if n.lower() in SPLIT_ALIASES})
        if others:
            raise DatasetFormatError(f"folders {others} sit beside the split folders train/val/test")
    else:
        split_dirs = {"train": base}

    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, folder in split_dirs.items():
        classes = {p.name: p for p in tree.children(folder)[0]}
        per_split[split] = {name: tree.files_under(d) for name, d in classes.items()}

    class_names = sorted(per_split["train"])
    if not class_names:
        raise DatasetFormatError(
            "no class folders found: expected `<class>/<image>` (optionally under train/, val/, test/)"
        )
    for split, found in per_split.items():
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise DatasetFormatError(f"{split}/ has classes {extra} that train/ does not have")

    index = {name: i for i, name in enumerate(class_names)}
    samples: dict[str, list[tuple[str, int]]] = {}
    invalid: list[dict[str, str]] = []
    for split, found in per_split.items():
        rows: list[tuple[str, int]] = []
        for name, files in sorted(found.items()):
            for f in files:
                rel = str(f.relative_to(root))
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    invalid.append({"file": rel, "reason": "not an image file (by extension)"})
                    continue
                reason = check_image(f, max_pixels) if check else None
                if reason:
                    invalid.append({"file": rel, "reason": reason})
                    continue
                rows.append((rel, index[name]))
        if rows:
            samples[split] = rows
    invalid.extend(tree.invalid)
    if "train" not in samples:
        raise DatasetFormatError("the training split holds no readable images")
    present = {label for _, label in samples["train"]}
    if len(present) < 2:
        raise DatasetFormatError(
            f"a classifier needs at least 2 classes with images; found {len(present)} "
            f"({', '.join(class_names[i] for i in sorted(present))})"
        )
    return FolderScan(class_names=class_names, samples=samples, invalid=invalid)


# ---------------------------------------------------------------- manifests and sample sets


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest))


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


@dataclass
class SampleSet:
    """Images of one split: in-memory uint8 arrays (CIFAR) or files on disk.

    refs are the images' stable numbers within their dataset (see ref_offsets; 0..N-1 when not given): what the
    per-image validation predictions and the API's thumbnails name an image by.
    """

    labels: np.ndarray
    arrays: np.ndarray | None = None  # N×H×W×3 uint8
    paths: list[Path] | None = None
    decoded: list[np.ndarray] | None = None  # H×W×3 uint8 per image, when files were decoded once up front
    refs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if len(self.refs) == 0 and len(self.labels):
            self.refs = np.arange(len(self.labels), dtype=np.int64)
        elif len(self.refs) != len(self.labels):
            raise ValueError(f"{len(self.refs)} refs for {len(self.labels)} images")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> SampleSet:
        idx = np.asarray(indices, dtype=np.int64)
        return SampleSet(
            labels=self.labels[idx],
            arrays=None if self.arrays is None else self.arrays[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            decoded=None if self.decoded is None else [self.decoded[i] for i in idx],
            refs=self.refs[idx],
        )

    def decode_all(self, max_side: int, budget_bytes: int) -> SampleSet:
        """Decode every file once, shrunk so the shorter side is at most max_side; self if over budget."""
        if self.paths is None or self.decoded is not None:
            return self
        if len(self.paths) * max_side * max_side * 3 > budget_bytes:
            return self  # clearly too large: do not spend a decode pass finding out
        decoded: list[np.ndarray] = []
        used = 0
        for path in self.paths:
            img = decode_image(path)
            scale = max_side / min(img.size)
            if scale < 1:
                img = img.resize(
                    (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
                )
            array = np.array(img, dtype=np.uint8)  # a writable copy, as torch wants
            used += array.nbytes
            if used > budget_bytes:
                return self
            decoded.append(array)
        return SampleSet(labels=self.labels, paths=self.paths, decoded=decoded, refs=self.refs)

    def image(self, i: int) -> torch.Tensor:
        """Image i as a uint8 C×H×W tensor."""
        if self.arrays is not None:
            return torch.from_numpy(self.arrays[i]).permute(2, 0, 1)
        if self.decoded is not None:
            return torch.from_numpy(self.decoded[i]).permute(2, 0, 1)
        assert self.paths is not None
        img = decode_image(self.paths[i])
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def ref_offsets(sizes: dict[str, int]) -> dict[str, int]:
    """The ref of each split's first image: refs number a dataset's images split after split, in SPLIT_NAMES
    order (train, val, test), each split in its manifest's order, so ref = offset of the split + position in it.
    A stored dataset's manifest never changes, so neither do its refs."""
    offsets: dict[str, int] = {}
    start = 0
    for split in sorted(sizes, key=lambda s: (SPLIT_NAMES.index(s) if s in SPLIT_NAMES else len(SPLIT_NAMES), s)):
        offsets[split] = start
        start += sizes[split]
    return offsets


def manifest_root(dataset_dir: Path, manifest: dict[str, Any]) -> Path:
    """The folder the manifest's files are named relative to."""
    root = Path(manifest["root"])
    return root if root.is_absolute() else dataset_dir / root


def load_splits(dataset_dir: Path) -> tuple[list[str], dict[str, SampleSet]]:
    """Class names and the sample sets of every split a stored dataset has (each image with its ref)."""
    manifest = read_manifest(dataset_dir)
    root = manifest_root(dataset_dir, manifest)
    classes: list[str] = manifest["class_names"]
    splits: dict[str, SampleSet] = {}
    if manifest["format"] == "cifar10":
        for split, files in manifest["splits"].items():
            parts = [read_cifar_batch(root / f, len(classes)) for f in files]
            splits[split] = SampleSet(
                labels=np.concatenate([p[1] for p in parts]), arrays=np.concatenate([p[0] for p in parts])
            )
    else:
        for split, rows in manifest["samples"].items():
            splits[split] = SampleSet(
                labels=np.asarray([label for _, label in rows], dtype=np.int64),
                paths=[root / rel for rel, _ in rows],
            )
    offsets = ref_offsets({split: len(samples) for split, samples in splits.items()})
    for split, samples in splits.items():
        samples.refs = offsets[split] + np.arange(len(samples), dtype=np.int64)
    return classes, splits


def held_out(count: int, fraction: float) -> int:
    """How many of a class's `count` training images stratified_split holds out for validation."""
    if count < 2:
        return 0
    return min(max(int(round(count * fraction)), 1), count - 1)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with about `fraction` of each class in val (at least one where a class has 2+)."""
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = held_out(len(idx), fraction)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


class DeviceBatches:
    """A small, uniformly sized dataset held as one uint8 tensor on the training device.

    Batches are indexed, cropped/flipped (train) or resized (eval) there, so nothing crosses the bus per step.
    Yields float batches in [0, 255], which normalize_batch accepts like uint8 ones.
    """

    def __init__(
        self,
        samples: SampleSet,
        batch_size: int,
        image_size: int,
        device: torch.device,
        train: bool,
        augment: bool,
        seed: int,
    ) -> None:
        assert samples.arrays is not None
        self.images = torch.from_numpy(samples.arrays).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(samples.labels).to(device)
        self.batch_size, self.image_size = batch_size, image_size
        self.train, self.augment = train, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from app.ml.augment import random_resized_crop_batch, resize_batch

        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.images[idx].float()
            if self.train and self.augment:
                batch = random_resized_crop_batch(batch, self.image_size, self.generator)
            else:
                batch = resize_batch(batch, self.image_size)
            yield batch, self.labels[idx]


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """A SampleSet with a per-image transform producing uint8 C×S×S tensors."""

    def __init__(self, samples: SampleSet, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.samples.image(i)), int(self.samples.labels[i])
