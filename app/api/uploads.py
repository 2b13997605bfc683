"""Streaming form parsing for the two upload routes: every limit is enforced while the body arrives.

FastAPI's own File/Form parameters spool the whole body to disk before the route runs, so a limit checked in
the route costs the full upload first. Here the route's dependencies (session, settings, the caller) are
resolved first, then the body is read from `request.stream()` in bounded batches: the Content-Length is
checked before anything is read, a running count stops the read as soon as the route's limit is passed,
and each part goes straight to where it belongs (the dataset archive to its destination file, /predict
images to memory), each part bounded on its own.

The readers are synchronous and must be called from a sync route (FastAPI runs those in a worker thread):
parsing and file writes happen in that thread, and only the socket reads hop to the event loop.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio.from_thread
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect

from app.config import Settings
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.schemas import MAX_VERSION
from app.services.prediction import ImageUpload

BATCH_BYTES = 256 * 1024  # read per hop to the event loop; the most a limit can be overshot by (plus one message)
FORM_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and the small fields around a dataset archive
FIELD_MAX_BYTES = 4096  # one small (non-file) form field
PART_HEADERS_MAX_BYTES = 16 * 1024  # all headers of one part
URLENCODED_MAX_BYTES = 64 * 1024  # a form without files

M = TypeVar("M", bound=BaseModel)


# ---- the form fields besides the files, validated as FastAPI's Form() parameters were; documented by hand
# (openapi_extra) since the routes declare no body parameters


class DatasetFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    skip_invalid: bool = False


class PredictFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    top_k: int = Field(default=5, ge=1, le=1000)


def _multipart_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


DATASET_UPLOAD_OPENAPI = _multipart_body(
    {
        "file": {"type": "string", "format": "binary", "description": "zip (ImageFolder or CIFAR python) or tar.gz"},
        "name": {"type": "string", "maxLength": 200, "description": "Defaults to the archive's file name"},
        "skip_invalid": {
            "type": "boolean",
            "default": False,
            "description": "Leave unreadable images out instead of refusing",
        },
    },
    required=["file"],
)

PREDICT_OPENAPI = _multipart_body(
    {
        "files": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "description": "One or more images (repeat the field)",
        },
        "model": {"type": "string", "description": "Registered model name (the default model if left out)"},
        "version": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_VERSION,
            "description": "A specific version instead of the serving one",
        },
        "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
    },
    required=["files"],
)

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")  # /predict bodies that are one image, no form

# /predict takes the form, or one image as the whole body with the other fields as query parameters.
PREDICT_OPENAPI["requestBody"]["content"].update(
    {kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_IMAGE_TYPES}
)
PREDICT_OPENAPI["requestBody"]["description"] = (
    "A multipart/form-data form with one or more `files`, or one image as the whole body (`Content-Type: "
    "image/jpeg`, `image/png` or `image/webp`) with `model`, `version` and `top_k` as query parameters."
)
PREDICT_OPENAPI["parameters"] = [
    {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}, "description": "Raw body only"},
    {
        "name": "version",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
        "description": "Raw body only",
    },
    {
        "name": "top_k",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
        "description": "Raw body only",
    },
]

# ---- what the parsed forms hold


@dataclass
class DatasetForm:
    path: Path  # the archive, written under settings.uploads_dir; ingesting it removes it
    filename: str | None
    name: str | None
    skip_invalid: bool


@dataclass
class PredictForm:
    images: list[ImageUpload]
    model: str | None
    version: int | None
    top_k: int


# ---- where the bytes of one part go


class _Sink(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


OpenPart = Callable[[str, str | None], _Sink]  # (field name, file name) -> where the part's bytes go


class _TextField:
    def __init__(self, name: str) -> None:
        self.name = name
        self.buf = bytearray()
        self.value: str | None = None

    def write(self, data: bytes) -> None:
        if len(self.buf) + len(data) > FIELD_MAX_BYTES:
            raise InvalidInput(f"the form field `{self.name}` is longer than {FIELD_MAX_BYTES} bytes")
        self.buf += data

    def close(self) -> None:
        try:
            self.value = self.buf.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"the form field `{self.name}` is not UTF-8 text") from None


class _MemoryFile:
    def __init__(self, filename: str | None, limit: int) -> None:
        self.filename = filename
        self.limit = limit
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.buf) + len(data) > self.limit:
            raise PayloadTooLarge(f"{(self.filename or '(unnamed)')[:100]} is larger than {self.limit:,} bytes")
        self.buf += data

    def close(self) -> None:
        pass


class _DiskFile:
    """A part written straight to path; never more than limit bytes reach the disk."""

    def __init__(self, path: Path, filename: str | None, limit: int) -> None:
        self.path = path
        self.filename = filename
        self.limit = limit
        self.size = 0
        self.complete = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self.out = path.open("wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the upload is larger than the limit of {self.limit:,} bytes")
        self.out.write(data)

    def close(self) -> None:
        self.out.close()
        self.complete = True

    def discard(self) -> None:
        self.out.close()
        self.path.unlink(missing_ok=True)


@dataclass
class _TextFields(Generic[M]):
    """The small fields of a form, each given at most once, names checked against the fields model."""

    model: type[M]
    files: tuple[str, ...]
    fields: dict[str, _TextField] = field(default_factory=dict)

    def open(self, name: str) -> _TextField:
        if name not in self.model.model_fields:
            expected = ", ".join((*self.files, *self.model.model_fields))
            raise InvalidInput(f"unknown form field {name[:100]!r}; this route takes {expected}")
        if name in self.fields:
            raise InvalidInput(f"the form field `{name}` is given more than once")
        self.fields[name] = sink = _TextField(name)
        return sink

    def validated(self) -> M:
        # An empty field counts as not sent, as with FastAPI's Form() parameters.
        values = {k: f.value for k, f in self.fields.items() if f.value}
        try:
            return self.model.model_validate(values)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


# ---- reading the body


async def _next_batch(stream: AsyncIterator[bytes], want: int) -> bytes | None:
    """Up to about `want` bytes from the stream (whole messages), None at its end."""
    parts: list[bytes] = []
    size = 0
    while size < want:
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            break
        if chunk:
            parts.append(chunk)
            size += len(chunk)
    return b"".join(parts) if parts else None


class _Body:
    """The request body, read from a worker thread in batches and counted against limit."""

    def __init__(self, request: Request, limit: int, too_large: str) -> None:
        self.limit = limit
        self.too_large = too_large
        self.received = 0
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidInput("the Content-Length header is not a number") from None
            if size > limit:
                raise PayloadTooLarge(too_large)
        self._stream = request.stream()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            want = min(BATCH_BYTES, self.limit - self.received + 1)
            try:
                batch = anyio.from_thread.run(_next_batch, self._stream, want)
            except ClientDisconnect:
                raise InvalidInput("the client disconnected before the body was complete") from None
            if batch is None:
                return
            self.received += len(batch)
            if self.received > self.limit:
                raise PayloadTooLarge(self.too_large)
            yield batch


def _parse_multipart(body: _Body, boundary: bytes, open_part: OpenPart) -> None:
    headers: dict[bytes, bytes] = {}
    name_buf = bytearray()
    value_buf = bytearray()
    header_bytes = 0
    sink: _Sink | None = None

    def on_part_begin() -> None:
        nonlocal header_bytes
        headers.clear()
        header_bytes = 0

    def on_header_data(buf: bytearray) -> Callable[[bytes, int, int], None]:
        def collect(data: bytes, start: int, end: int) -> None:
            nonlocal header_bytes
            header_bytes += end - start
            if header_bytes > PART_HEADERS_MAX_BYTES:
                raise InvalidInput(f"the headers of a multipart part are longer than {PART_HEADERS_MAX_BYTES} bytes")
            buf.extend(data[start:end])

        return collect

    def on_header_end() -> None:
        headers[bytes(name_buf).strip().lower()] = bytes(value_buf).strip()
        name_buf.clear()
        value_buf.clear()

    def on_headers_finished() -> None:
        nonlocal sink
        disposition, params = parse_options_header(headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidInput("a multipart part has no `Content-Disposition: form-data; name=...` header")
        try:
            name = params[b"name"].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("a multipart field name is not UTF-8") from None
        filename = params[b"filename"].decode("utf-8", "replace") if b"filename" in params else None
        sink = open_part(name, filename)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        assert sink is not None  # the parser calls on_headers_finished first
        sink.write(data[start:end])

    def on_part_end() -> None:
        nonlocal sink
        if sink is not None:
            sink.close()
            sink = None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_data(name_buf),
            "on_header_value": on_header_data(value_buf),
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    for chunk in body:
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidInput(f"the multipart body is malformed: {str(exc)[:200]}") from None
    parser.finalize()
    if parser.state != MultipartState.END:
        raise InvalidInput("the multipart body ended before its closing boundary")


def _parse_urlencoded(body: _Body, open_part: OpenPart) -> None:
    data = b"".join(body)
    try:
        pairs = urllib.parse.parse_qsl(data.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the form body is not valid application/x-www-form-urlencoded") from None
    for name, value in pairs:
        sink = open_part(name, None)
        sink.write(value.encode("utf-8"))
        sink.close()


def _read_form(request: Request, limit: int, too_large: str, open_part: OpenPart) -> None:
    """Feed every part of the request's form to open_part's sinks, enforcing limit on the whole body."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary or len(boundary) > 200:
            raise InvalidInput("the multipart/form-data Content-Type has no valid boundary")
        _parse_multipart(_Body(request, limit, too_large), boundary, open_part)
    elif content_type == b"application/x-www-form-urlencoded":
        limit = min(limit, URLENCODED_MAX_BYTES)
        _parse_urlencoded(_Body(request, limit, f"a form without files is larger than {limit} bytes"), open_part)
    elif content_type == b"" and request.headers.get("content-length") in (None, "0"):
        pass  # no body, no fields: the caller says which one is missing
    else:
        raise UnsupportedMediaType("send the form as multipart/form-data")


def read_dataset_form(request: Request, settings: Settings) -> DatasetForm:
    """The dataset upload form; its `file` part is written under uploads_dir as it arrives (removed on any error)."""
    dest = settings.uploads_dir / f"{uuid.uuid4()}.upload"
    text = _TextFields(DatasetFields, files=("file",))
    archive: list[_DiskFile] = []

    def open_part(name: str, filename: str | None) -> _Sink:
        if name != "file":
            return text.open(name)
        if archive:
            raise InvalidInput("send one archive per upload in the multipart field `file`")
        archive.append(_DiskFile(dest, filename, settings.max_upload_bytes))
        return archive[0]

    too_large = f"the upload is larger than the limit of {settings.max_upload_bytes:,} bytes"
    try:
        _read_form(request, settings.max_upload_bytes + FORM_OVERHEAD_BYTES, too_large, open_part)
        if not archive or not archive[0].complete:
            raise InvalidInput("send the dataset archive as the multipart field `file`")
        fields = text.validated()
    except BaseException:
        for part in archive:
            part.discard()
        raise
    return DatasetForm(path=dest, filename=archive[0].filename, name=fields.name, skip_invalid=fields.skip_invalid)


def read_predict_form(request: Request, settings: Settings) -> PredictForm:
    """The /predict form: its `files` parts in memory, each and all of them together bounded."""
    text = _TextFields(PredictFields, files=("files",))
    images: list[_MemoryFile] = []

    def open_part(name: str, filename: str | None) -> _Sink:
        if name != "files":
            return text.open(name)
        if len(images) >= settings.max_predict_images:
            raise PayloadTooLarge(f"at most {settings.max_predict_images} images per request")
        images.append(_MemoryFile(filename, settings.max_predict_image_bytes))
        return images[-1]

    limit = settings.max_predict_request_bytes
    _read_form(request, limit, f"the request is larger than the limit of {limit:,} bytes", open_part)
    fields = text.validated()
    return PredictForm(
        images=[ImageUpload(f.filename, bytes(f.buf)) for f in images],
        model=fields.model,
        version=fields.version,
        top_k=fields.top_k,
    )


def read_predict_request(request: Request, settings: Settings) -> PredictForm:
    """/predict's input: one image as the whole body (image/jpeg, png, webp; fields in the query) or the form."""
    content_type, _ = parse_options_header(request.headers.get("content-type"))
    kind = content_type.decode("latin-1").lower()
    if kind in RAW_IMAGE_TYPES:
        return _read_raw_image(request, settings)
    if kind.startswith("image/"):
        raise UnsupportedMediaType(
            f"send the image as {', '.join(RAW_IMAGE_TYPES)} or in a multipart/form-data form; not {kind[:100]}"
        )
    return read_predict_form(request, settings)


def _read_raw_image(request: Request, settings: Settings) -> PredictForm:
    query = request.query_params
    unknown = sorted(set(query) - set(PredictFields.model_fields))
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0][:100]!r}; this route takes model, version, top_k")
    try:
        fields = PredictFields.model_validate({k: v for k, v in query.items() if v})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in errors]) from None
    limit = settings.max_predict_image_bytes
    image = _MemoryFile(None, limit)
    for chunk in _Body(request, limit, f"the image is larger than {limit:,} bytes"):
        image.write(chunk)
    return PredictForm(
        images=[ImageUpload(None, bytes(image.buf))],
        model=fields.model,
        version=fields.version,
        top_k=fields.top_k,
    )
