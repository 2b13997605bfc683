"""The HTTP layer every resource shares: one httpx.Client with the key, errors turned into APIError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from visiontune.config import normalize_url
from visiontune.errors import APIError, BadResponse, ClientError, ServerUnreachable

M = TypeVar("M")

UPLOAD_READ_TIMEOUT = 600.0  # the server checks every image of an archive before it answers


def error_from(response: httpx.Response) -> APIError:
    """The API's `{"error": {"code", "message"}}` body (or whatever came instead) as an APIError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return APIError(response.status_code, str(err.get("code", "error")), err["message"], err.get("details"))
    text = response.text.strip()[:200] or response.reason_phrase
    return APIError(response.status_code, "http_error", text)


class Transport:
    """Requests to one server with one key."""

    def __init__(self, url: str, key: str | None, timeout: float) -> None:
        self.url = url = normalize_url(url)  # ClientError for a URL no request could go to
        self.timeout = timeout
        headers = {"User-Agent": "visiontune-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; an error answer raises APIError, no answer ServerUnreachable."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{method} {self.url}{path}: {exc.__class__.__name__}: {exc}") from None
        except httpx.InvalidURL as exc:  # e.g. an id with characters no URL can hold
            raise ClientError(f"{method} {self.url}{path}: invalid URL: {exc}") from None
        if response.status_code >= 400:
            raise error_from(response)
        return response

    def get_as(self, model: type[M], path: str, **kwargs: Any) -> M:
        return self.parse(model, self.request("GET", path, **kwargs))

    @staticmethod
    def parse(model: type[M], response: httpx.Response) -> M:
        """The body validated as model (a pydantic model, or a type such as list[ModelOut]); BadResponse if it is
        not one (not JSON, or another shape)."""
        try:
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model.model_validate_json(response.content)
            return TypeAdapter(model).validate_json(response.content)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3]
            )
            raise BadResponse(
                f"{response.request.method} {response.request.url}: the answer (HTTP {response.status_code}) is not "
                f"what this client expects ({problems}); is that a visiontune server of a matching version?"
            ) from None

    @contextlib.contextmanager
    def open_stream(self, path: str, headers: dict[str, str], read_timeout: float) -> Iterator[httpx.Response]:
        """A streamed GET (for Server-Sent Events); an error answer raises APIError before anything is read."""
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from(response)
                yield response
        except httpx.ConnectError as exc:
            raise ServerUnreachable(f"GET {self.url}{path}: {exc}") from None
        except httpx.InvalidURL as exc:
            raise ClientError(f"GET {self.url}{path}: invalid URL: {exc}") from None
