"""/predict's use-cases: check and decode the uploaded images, and resolve which version (and backend) serves."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.ml.data import DatasetFormatError, ImageTooLarge, UnreadableImage, decode_image, image_dimensions
from app.models import Checkpoint, Export
from app.services.registry import resolve_target
from app.serving.onnx import BACKEND_OF_FORMAT
from app.serving.served import ServedVersion, choose_backend


@dataclass
class ImageUpload:
    filename: str | None
    data: bytes


def _setting(field: str) -> int:
    return int(Settings.model_fields[field].default)


# Decoded images are shrunk to this shorter side at once (the largest image_size a model is trained at), so a
# request holds at most one full-size decode at a time.
PREDICT_MAX_SIDE = 1024


def _shown(filename: str | None) -> str:
    name = filename or "(unnamed)"
    return name if len(name) <= 100 else name[:100] + "..."


def check_uploads(
    uploads: list[ImageUpload],
    max_images: int,
    max_bytes: int,
    *,
    max_pixels: int = _setting("max_predict_pixels"),
    max_request_pixels: int = _setting("max_predict_request_pixels"),
) -> None:
    """422 when there are no images, 413/415 naming the offending file: counts, sizes, and every header's pixel
    count (max_pixels per image, max_request_pixels together), before anything is decoded."""
    if not uploads:
        raise InvalidInput("send at least one image as the multipart field `files`")
    if len(uploads) > max_images:
        raise PayloadTooLarge(f"at most {max_images} images per request; got {len(uploads)}")
    total = 0
    for up in uploads:
        name = _shown(up.filename)
        if not up.data:
            raise InvalidInput(f"{name} is empty")
        if len(up.data) > max_bytes:
            raise PayloadTooLarge(f"{name} is larger than {max_bytes} bytes")
        try:
            width, height = image_dimensions(io.BytesIO(up.data), max_pixels)
        except ImageTooLarge as exc:
            raise _too_large(name, exc) from None
        except UnreadableImage as exc:
            raise UnsupportedMediaType(f"{name} is not a readable image ({exc.reason})") from None
        total += width * height
        if total > max_request_pixels:
            raise PayloadTooLarge(
                f"the images of this request have more than {max_request_pixels:,} pixels together, the limit"
            )


def decode_uploads(
    uploads: list[ImageUpload],
    max_images: int,
    max_bytes: int,
    *,
    max_pixels: int = _setting("max_predict_pixels"),
    max_request_pixels: int = _setting("max_predict_request_pixels"),
    max_side: int = PREDICT_MAX_SIDE,
    draft_side: int | None = None,
    checked: bool = False,
) -> list[Image.Image]:
    """PIL images for every upload, checked first (check_uploads), then decoded one at a time, each shrunk at once
    to a shorter side of at most max_side. With draft_side (the model's input size), a JPEG is decoded at the
    smallest of 1/2, 1/4, 1/8 scale that still covers draft_side on both sides (libjpeg's DCT scaling): a large
    photo decodes several times faster, and the model's own resize then takes it the rest of the way. checked: the
    caller ran check_uploads with these limits already (each header is then parsed once)."""
    if not checked:
        check_uploads(uploads, max_images, max_bytes, max_pixels=max_pixels, max_request_pixels=max_request_pixels)
    return [_decode_one(up, max_pixels, max_side, draft_side) for up in uploads]


def _too_large(name: str, exc: ImageTooLarge) -> PayloadTooLarge:
    if exc.size is None:
        return PayloadTooLarge(f"{name} has more than {exc.limit:,} pixels, the limit per image")
    w, h = exc.size
    return PayloadTooLarge(f"{name} is {w}x{h} = {w * h:,} pixels; at most {exc.limit:,} pixels per image are accepted")


def _decode_one(upload: ImageUpload, max_pixels: int, max_side: int, draft_side: int | None) -> Image.Image:
    try:
        return decode_image(io.BytesIO(upload.data), max_pixels, max_side, draft_side=draft_side)
    except ImageTooLarge as exc:
        raise _too_large(_shown(upload.filename), exc) from None
    except DatasetFormatError as exc:
        reason = getattr(exc, "reason", "damaged data")
        raise UnsupportedMediaType(f"{_shown(upload.filename)} is not a readable image ({reason})") from None


def resolve_served(
    session: Session, project: str, name: str | None, version: int | None, backend: str = "torch", device: str = "cpu"
) -> ServedVersion:
    """The project's version to serve (best, pinned, aliased or the one asked for), where its checkpoint is and
    the backend that answers for it."""
    chosen, asked = resolve_target(session, project, name, version)
    backend = asked or backend  # an alias or pin that names a backend wins over the server's default
    checkpoint = session.get(Checkpoint, chosen.checkpoint_id)
    assert checkpoint is not None  # FK
    export = None
    if backend != "torch":
        exports = list(session.scalars(select(Export).where(Export.job_id == chosen.job_id)))
        export = choose_backend(exports, backend, device)
    return ServedVersion(
        model_name=chosen.model_name,
        version=chosen.version,
        job_id=chosen.job_id,
        arch=chosen.arch,
        checkpoint_id=str(checkpoint.id),
        path=Path(checkpoint.path),
        sha256=checkpoint.sha256,
        backend=BACKEND_OF_FORMAT[export.format] if export else "torch",
        export_path=Path(export.path) if export and export.path else None,
        export_sha256=export.sha256 if export else None,
        export_meta=dict(export.meta or {}) if export else None,
    )
