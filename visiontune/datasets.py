"""client.datasets: upload (a folder is zipped on the fly), list, get, delete."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from app.schemas import DatasetOut, Page
from visiontune.archive import ARCHIVE_SUFFIXES, zip_imagefolder
from visiontune.errors import ClientError
from visiontune.transport import UPLOAD_READ_TIMEOUT

if TYPE_CHECKING:
    from visiontune.transport import Transport

ProgressCallback = Callable[[int, int], None]  # (bytes sent, total bytes)


class _ProgressFile(io.FileIO):
    """A file whose reads report how far the upload got."""

    def __init__(self, path: Path, on_progress: ProgressCallback) -> None:
        super().__init__(path, "rb")
        self.total = path.stat().st_size
        self.on_progress = on_progress

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.on_progress(self.tell(), self.total)
        return data or b""


class Datasets:
    def __init__(self, transport: Transport) -> None:
        self._http = transport

    def upload(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        skip_invalid: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> DatasetOut:
        """Upload a folder in ImageFolder layout (zipped here first), or a .zip / .tar / .tar.gz archive.
        on_progress(sent, total) is called as the bytes go out."""
        path = Path(path)
        made: Path | None = None
        if path.is_dir():
            made = archive = zip_imagefolder(path)
            filename = f"{path.resolve().name}.zip"
        elif path.is_file():
            if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
                raise ClientError(f"{path}: upload a folder, or a {', '.join(ARCHIVE_SUFFIXES)} archive")
            archive, filename = path, path.name
        else:
            raise ClientError(f"{path}: no such file or folder")
        if name is None and made is not None:
            name = path.resolve().name  # an archive's name defaults to its file name on the server
        fields = {"name": name or "", "skip_invalid": "true" if skip_invalid else ""}
        try:
            with _ProgressFile(archive, on_progress or (lambda sent, total: None)) as f:
                content_type = "application/zip" if filename.endswith(".zip") else "application/x-tar"
                response = self._http.request(
                    "POST",
                    "/datasets",
                    files={"file": (filename, f, content_type)},
                    data={k: v for k, v in fields.items() if v},
                    timeout=httpx.Timeout(self._http.timeout, read=UPLOAD_READ_TIMEOUT),
                )
        finally:
            if made is not None:
                made.unlink(missing_ok=True)
        return self._http.parse(DatasetOut, response)

    def list(self, limit: int = 50, offset: int = 0) -> Page[DatasetOut]:
        """The project's datasets, newest first."""
        return self._http.get_as(Page[DatasetOut], "/datasets", params={"limit": limit, "offset": offset})

    def get(self, dataset_id: str | uuid.UUID) -> DatasetOut:
        return self._http.get_as(DatasetOut, f"/datasets/{dataset_id}")

    def delete(self, dataset_id: str | uuid.UUID) -> None:
        """Delete a dataset and its files (409 while a queued or running job uses it)."""
        self._http.request("DELETE", f"/datasets/{dataset_id}")
