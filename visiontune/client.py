"""Client: the visiontune HTTP API from Python, with the API's own pydantic models as typed results."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from app.schemas import PredictResponse
from visiontune import config
from visiontune.datasets import Datasets
from visiontune.jobs import Jobs
from visiontune.models import Models
from visiontune.transport import Transport

ImageInput = str | Path | tuple[str, bytes]


class Client:
    """The visiontune API at `url` with API key `key` (defaults: VISIONTUNE_URL / VISIONTUNE_KEY, then the login
    `visiontune login` saved). Resources: `datasets`, `jobs`, `models`; `predict(...)`. Close it, or use `with`."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0) -> None:
        login = config.resolve(url, key)
        self.url = login.url
        self.transport = Transport(login.url, login.key, timeout)
        self.datasets = Datasets(self.transport)
        self.jobs = Jobs(self.transport)
        self.models = Models(self.transport)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    # ---- prediction

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        model: str | None = None,
        *,
        version: int | None = None,
        top_k: int = 5,
    ) -> PredictResponse:
        """Top-k labels per image from the serving version of `model` (`name` or `name@alias`; the default model
        if None). Images are paths or (file name, bytes) pairs."""
        single = isinstance(images, str | Path) or (isinstance(images, tuple) and isinstance(images[-1], bytes))
        items: list[ImageInput] = [images] if single else list(images)  # type: ignore[list-item,arg-type]
        files = []
        for item in items:
            if isinstance(item, tuple):
                name, data = item
            else:
                name, data = Path(item).name, Path(item).read_bytes()
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            files.append(("files", (name, data, kind)))
        fields: dict[str, str] = {"top_k": str(top_k)}
        if model is not None:
            fields["model"] = model
        if version is not None:
            fields["version"] = str(version)
        response = self.transport.request("POST", "/predict", files=files, data=fields)
        return self.transport.parse(PredictResponse, response)
