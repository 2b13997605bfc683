"""Serving: decode the uploaded images, pick the version, answer with the cached model."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from sqlalchemy.orm import Session

from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.ml.data import DatasetFormatError, decode_image
from app.ml.predictor import LoadedModel, ModelCache
from app.models import Checkpoint, ModelVersion
from app.services.registry import resolve_version


@dataclass
class ImageUpload:
    filename: str | None
    data: bytes


def decode_uploads(uploads: list[ImageUpload], max_images: int, max_bytes: int) -> list[Image.Image]:
    """PIL images for every upload; 422 when there are none, 413/415 naming the offending file."""
    if not uploads:
        raise InvalidInput("send at least one image as the multipart field `files`")
    if len(uploads) > max_images:
        raise PayloadTooLarge(f"at most {max_images} images per request; got {len(uploads)}")
    images = []
    for up in uploads:
        name = up.filename or "(unnamed)"
        if not up.data:
            raise InvalidInput(f"{name} is empty")
        if len(up.data) > max_bytes:
            raise PayloadTooLarge(f"{name} is larger than {max_bytes} bytes")
        try:
            images.append(decode_image(io.BytesIO(up.data)))
        except DatasetFormatError as exc:
            raise UnsupportedMediaType(f"{name} is not a readable image: {exc}") from exc
    return images


def select_model(
    session: Session, cache: ModelCache, name: str | None, version: int | None, device: str
) -> tuple[ModelVersion, LoadedModel]:
    """The version to serve and its loaded weights (loaded once per checkpoint, then reused)."""
    chosen = resolve_version(session, name, version)
    checkpoint = session.get(Checkpoint, chosen.checkpoint_id)
    assert checkpoint is not None  # FK
    path, digest = checkpoint.path, checkpoint.sha256
    loaded = cache.get(str(checkpoint.id), lambda: LoadedModel.from_file(Path(path), digest, device))
    return chosen, loaded
