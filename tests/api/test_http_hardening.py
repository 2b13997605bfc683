"""The HTTP layer refuses oversize bodies while reading them, never echoes big input, sets security headers,
guards state-changing requests against CSRF, answers CORS only when configured, and serves /docs offline."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import psutil
import pytest
from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from app.api.middleware import HTML_CSP, install_middleware
from app.api.uploads import BATCH_BYTES
from app.auth import new_key
from app.config import Settings
from app.main import create_app
from app.migrate import upgrade
from tests.conftest import REDIS_URL
from tests.factories import color_images_zip, png_bytes
from tests.processes import bearer, free_port, python, start, stop, wait_http

MiB = 1024**2
CHUNK = 64 * 1024
BOUNDARY = "visiontune-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

Client = tuple[TestClient, Settings]


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """TestClients on fresh SQLite databases with some settings changed; each sends its admin key."""
    with ExitStack() as stack:

        def make(**overrides: object) -> Client:
            name = uuid.uuid4().hex[:8]
            url = f"sqlite:///{tmp_path / f'{name}.db'}"
            upgrade(url)
            settings = Settings(
                data_dir=tmp_path / f"data-{name}",
                database_url=url,
                broker_url=f"{REDIS_URL}/0",
                admin_key=new_key(),
                rate_limit_write="100000/minute",
                rate_limit_predict="100000/minute",
                **overrides,  # type: ignore[arg-type]
            )
            app = create_app(settings, enqueue=lambda _id: None)
            client = TestClient(app, raise_server_exceptions=False, headers=bearer(settings.admin_key or ""))
            return stack.enter_context(client), settings

        yield make


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    return body["error"]


def multipart(parts: Iterable[tuple[str, str | None, Iterable[bytes]]], close: bool = True) -> Iterator[bytes]:
    """A multipart/form-data body (boundary BOUNDARY) as a stream: (field, file name, chunks) per part."""
    for name, filename, chunks in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        yield f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        yield from chunks
        yield b"\r\n"
    if close:
        yield f"--{BOUNDARY}--\r\n".encode()


def zeros(total: int) -> Iterator[bytes]:
    for offset in range(0, total, CHUNK):
        yield bytes(min(CHUNK, total - offset))


class Sent:
    status = 0
    headers: dict[str, str]
    body = b""
    pulled = 0  # request body bytes the app took from receive()

    def json(self) -> dict:
        return json.loads(self.body)


def asgi_request(
    client: TestClient, method: str, path: str, headers: dict[str, str | None], body: Iterable[bytes]
) -> Sent:
    """One request straight through the app's ASGI interface, each body chunk its own message, counting how much
    of the body the app pulled (TestClient itself reads a streamed body whole before the app sees any of it).
    The client's default headers are sent too, less those given as None."""
    out = Sent()
    chunks = iter(body)

    async def receive() -> dict:
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        out.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {**client.headers, **headers}.items() if v is not None
        ],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }
    assert client.portal is not None, "use the client inside its `with` block"
    client.portal.call(client.app, scope, receive, send)
    return out


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def stored_bytes(path: Path) -> int:
    """Bytes in the files under path (ones removed while it looks count as 0)."""
    total = 0
    for p in files_under(path):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


# ---- size limits, enforced while reading


def test_oversize_upload_is_refused_after_reading_about_the_limit(make_client):
    client, settings = make_client(max_upload_bytes=1 * MiB)
    body = multipart([("name", None, [b"big"]), ("file", "big.zip", zeros(16 * MiB))])
    r = asgi_request(client, "POST", "/datasets", {"content-type": MULTIPART}, body)
    assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert "larger than the limit" in r.json()["error"]["message"]
    assert r.pulled <= settings.max_upload_bytes + BATCH_BYTES + CHUNK  # not the 16 MiB sent
    assert files_under(settings.uploads_dir) == [] and files_under(settings.datasets_dir) == []


def test_declared_oversize_upload_is_refused_before_reading(make_client):
    client, settings = make_client(max_upload_bytes=1 * MiB)
    headers = {"content-type": MULTIPART, "content-length": str(10 * 1024**3)}
    r = asgi_request(client, "POST", "/datasets", headers, multipart([("file", "x.zip", zeros(2 * MiB))]))
    assert r.status == 413 and r.pulled == 0
    # The same through TestClient's transport.
    small = b"".join(multipart([("file", "x.zip", [b"PK"])]))
    r2 = client.post("/datasets", content=small, headers={**headers, "content-length": str(2 * MiB)})
    assert "larger than the limit" in error(r2, 413)["message"]
    assert files_under(settings.uploads_dir) == []


def test_a_bad_key_is_refused_before_the_body_is_read(make_client):
    client, _ = make_client(max_upload_bytes=64 * MiB)
    headers = {"content-type": MULTIPART, "authorization": "Bearer vt_not_a_key"}
    r = asgi_request(client, "POST", "/datasets", headers, multipart([("file", "x.zip", zeros(8 * MiB))]))
    assert r.status == 401 and r.pulled == 0
    r = asgi_request(client, "POST", "/predict", headers, multipart([("files", "a.png", zeros(MiB))]))
    assert r.status == 401 and r.pulled == 0


def test_predict_limits(make_client):
    client, settings = make_client(max_predict_request_bytes=256 * 1024, max_predict_image_bytes=100_000)
    body = multipart([("files", f"{i}.png", zeros(90_000)) for i in range(40)])
    r = asgi_request(client, "POST", "/predict", {"content-type": MULTIPART}, body)
    assert r.status == 413 and "larger than the limit" in r.json()["error"]["message"]
    assert r.pulled <= settings.max_predict_request_bytes + CHUNK
    # One image over its own limit, named.
    r = asgi_request(
        client, "POST", "/predict", {"content-type": MULTIPART}, multipart([("files", "big.png", zeros(200_000))])
    )
    assert r.status == 413 and "big.png is larger than 100,000 bytes" in r.json()["error"]["message"]
    # Declared too large: refused before reading.
    headers = {"content-type": MULTIPART, "content-length": str(settings.max_predict_request_bytes + 1)}
    r = asgi_request(client, "POST", "/predict", headers, zeros(MiB))
    assert r.status == 413 and r.pulled == 0
    # More images than allowed.
    client, settings = make_client(max_predict_images=2)
    tiny = png_bytes(np.zeros((4, 4, 3), np.uint8))
    files = [("files", (f"{i}.png", io.BytesIO(tiny), "image/png")) for i in range(3)]
    assert "at most 2 images" in error(client.post("/predict", files=files), 413)["message"]


def test_json_bodies_are_capped(make_client):
    client, settings = make_client(max_json_bytes=64 * 1024)
    big = {"dataset_id": str(uuid.uuid4()), "model_name": "x" * (128 * 1024)}
    err = error(client.post("/jobs", json=big), 413)
    assert err["code"] == "payload_too_large" and "65,536" in err["message"]
    # Chunked, so no Content-Length: the running count stops it.
    r = asgi_request(client, "POST", "/jobs", {"content-type": "application/json"}, zeros(4 * MiB))
    assert r.status == 413 and r.pulled <= settings.max_json_bytes + CHUNK
    # Under the cap the route answers as before.
    assert error(client.post("/jobs", json={"dataset_id": str(uuid.uuid4())}), 422)


# ---- 422s stay small


def test_a_big_wrong_typed_json_gets_a_small_422(make_client):
    client, _ = make_client()
    for body in (
        {"dataset_id": str(uuid.uuid4()), "epochs": "9" * 900_000},
        {"dataset_id": str(uuid.uuid4()), "k" * 900_000: 1},
        {"dataset_id": ["x" * 30] * 25_000},
        [{"dataset_id": 1}] * 40_000,
    ):
        r = client.post("/jobs", json=body)
        error(r, 422)
        assert len(r.content) < 4096, len(r.content)
        assert "9" * 20 not in r.text and "x" * 20 not in r.text  # values are never echoed,
        assert not re.search(r"(.)\1{120}", r.text)  # and names (locations) only clipped
    broken = b'{"dataset_id": "' + b"z" * 900_000  # not JSON: never closed
    r = client.post("/jobs", content=broken, headers={"content-type": "application/json"})
    error(r, 422)
    assert len(r.content) < 4096 and "zzzzzzzzzz" not in r.text


# ---- the multipart parsing keeps the old contract


def test_upload_form_errors(client, settings, tmp_path):
    archive = color_images_zip(tmp_path / "ok.zip", {"a": 3, "b": 3}).read_bytes()
    ok = {"file": ("ok.zip", archive, "application/zip")}
    r = client.post("/datasets", files=ok, data={"name": "fine", "skip_invalid": "true"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "fine"
    assert "unknown form field 'nmae'" in error(client.post("/datasets", files=ok, data={"nmae": "x"}), 422)["message"]
    assert "name" in error(client.post("/datasets", files=ok, data={"name": "n" * 201}), 422)["message"]
    assert "skip_invalid" in error(client.post("/datasets", files=ok, data={"skip_invalid": "maybe"}), 422)["message"]
    two = [("file", ("a.zip", archive)), ("file", ("b.zip", archive))]
    assert "one archive" in error(client.post("/datasets", files=two), 422)["message"]
    assert error(client.post("/datasets", json={"file": "x"}), 415)["code"] == "unsupported_media_type"
    assert error(client.post("/datasets", content=b"x", headers={"content-type": "text/plain"}), 415)
    truncated = b"".join(multipart([("file", "a.zip", [archive])], close=False))[:-100]
    assert (
        "multipart"
        in error(client.post("/datasets", content=truncated, headers={"content-type": MULTIPART}), 422)["message"]
    )
    no_boundary = {"content-type": "multipart/form-data"}
    assert "boundary" in error(client.post("/datasets", content=b"--x\r\n", headers=no_boundary), 422)["message"]
    garbage = {"content-type": MULTIPART}
    assert error(client.post("/datasets", content=b"no multipart here at all " * 10, headers=garbage), 422)
    assert files_under(settings.uploads_dir) == []


def test_predict_form_errors(client):
    good = [("files", ("ok.png", io.BytesIO(png_bytes(np.zeros((8, 8, 3), np.uint8))), "image/png"))]
    assert "top_k" in error(client.post("/predict", files=good, data={"top_k": "1001"}), 422)["message"]
    assert "version" in error(client.post("/predict", files=good, data={"version": str(2**63)}), 422)["message"]
    assert "version" in error(client.post("/predict", files=good, data={"version": "0"}), 422)["message"]
    assert (
        "unknown form field 'file'" in error(client.post("/predict", files={"file": ("a.png", b"x")}), 422)["message"]
    )
    assert error(client.post("/predict", content=b"{}", headers={"content-type": "application/json"}), 415)


def test_openapi_documents_the_upload_forms(client):
    spec = client.get("/openapi.json").json()
    upload = spec["paths"]["/datasets"]["post"]["requestBody"]
    schema = upload["content"]["multipart/form-data"]["schema"]
    assert upload["required"] and schema["required"] == ["file"]
    assert set(schema["properties"]) == {"file", "name", "skip_invalid"}
    predict = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert predict["required"] == ["files"] and set(predict["properties"]) == {"files", "model", "version", "top_k"}
    assert predict["properties"]["top_k"]["maximum"] == 1000


# ---- headers


def test_security_headers_on_every_kind_of_response(make_client):
    client, _ = make_client()
    for r in (client.get("/health"), client.get("/no/such/route"), client.get("/docs"), client.get("/openapi.json")):
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-frame-options"] == "DENY"
    assert client.get("/health").headers["cache-control"] == "no-store"
    assert client.get("/docs").headers["content-security-policy"] == HTML_CSP
    assert "content-security-policy" not in client.get("/health").headers


def test_artifact_pngs_are_attachments():
    app = FastAPI()
    job_id = uuid.uuid4()

    @app.get("/jobs/{job_id}/curves.png")
    def curves(job_id: uuid.UUID) -> Response:
        return Response(png_bytes(np.zeros((2, 2, 3), np.uint8)), media_type="image/png")

    install_middleware(app, Settings(data_dir=Path("/nonexistent")))
    with TestClient(app) as client:
        r = client.get(f"/jobs/{job_id}/curves.png")
    assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-curves.png"'


def test_docs_are_served_offline_under_the_csp(make_client):
    client, _ = make_client()
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = re.findall(r'(?:src|href|data-openapi-url)="([^"]*)"', r.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "http:" not in r.text and "https:" not in r.text
    # No inline script: every <script> loads a file (script-src 'self' would block inline code).
    assert re.findall(r"<script[^>]*>(.*?)</script>", r.text, re.S) == [""] * r.text.count("<script")
    expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        kind = next((v for k, v in expected.items() if url.endswith(k)), "json")
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "SwaggerUIBundle" in client.get("/docs-static/swagger-init.js").text
    assert client.get("/redoc").status_code == 404


# ---- CORS and CSRF


def test_cors_only_for_configured_origins(make_client):
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    client, _ = make_client()
    r = client.options("/jobs", headers={**preflight, "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "https://ui.example"}).headers

    client, _ = make_client(cors_origins=["https://ui.example"])
    r = client.options("/jobs", headers={**preflight, "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://ui.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "POST" in r.headers["access-control-allow-methods"]
    r = client.get("/health", headers={"Origin": "https://ui.example"})
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    other = client.options("/jobs", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_state_changing_requests_need_an_authorization_header(make_client):
    for overrides in ({}, {"auth": "off"}):
        client, _ = make_client(**overrides)
        routes = [("POST", "/jobs"), ("POST", "/datasets"), ("POST", "/predict"), ("DELETE", f"/jobs/{uuid.uuid4()}")]
        for method, path in [*routes, ("PUT", "/jobs"), ("PATCH", "/jobs")]:
            for anonymous in ({"authorization": None}, {"authorization": " "}):
                r = asgi_request(client, method, path, anonymous, zeros(MiB))
                assert r.status == 401 and r.pulled == 0, (method, path, r.status)
                assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
                assert r.headers["x-content-type-options"] == "nosniff"
        assert asgi_request(client, "GET", "/health", {"authorization": None}, []).status == 200


# ---- a real server


def test_real_server_streams_a_big_upload_without_storing_it(tmp_path):
    """64 MiB sent to a uvicorn process that accepts 8 MiB: 413, at most ~8 MiB ever on its disk, little memory."""
    port = free_port()
    key = new_key()
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(url)
    data_dir = tmp_path / "data"
    env = {
        "VISIONTUNE_DATA_DIR": str(data_dir),
        "VISIONTUNE_DATABASE_URL": url,
        "VISIONTUNE_BROKER_URL": f"{REDIS_URL}/0",
        "VISIONTUNE_ADMIN_KEY": key,
        "VISIONTUNE_MAX_UPLOAD_BYTES": str(8 * MiB),
    }
    log = tmp_path / "api.log"
    api = start(python("-m", "launcher.cli", "api", "--port", str(port)), env, log)
    try:
        import httpx

        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", api, log)
        proc = psutil.Process(api.pid)
        baseline = proc.memory_info().rss
        peak = {"disk": 0, "rss": baseline}

        def measured(chunks: Iterable[bytes]) -> Iterator[bytes]:
            # Sampled as the client sends each chunk, i.e. all along the upload.
            for chunk in chunks:
                peak["disk"] = max(peak["disk"], stored_bytes(data_dir / "uploads"))
                peak["rss"] = max(peak["rss"], proc.memory_info().rss)
                yield chunk

        body = measured(multipart([("file", "big.zip", zeros(64 * MiB))]))
        headers = {**bearer(key), "content-type": MULTIPART}
        r = httpx.post(f"{base}/datasets", content=body, headers=headers, timeout=120)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"
        assert peak["disk"] <= 8 * MiB
        assert files_under(data_dir / "uploads") == []
        assert peak["rss"] - baseline < 200 * MiB, (peak["rss"] - baseline) / MiB
        # A declared oversize body is refused from its Content-Length, and the server is still fine.
        whole = b"".join(multipart([("file", "x.zip", zeros(64 * MiB))]))
        r = httpx.post(f"{base}/datasets", content=whole, headers=headers, timeout=120)
        assert r.status_code == 413, r.text
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    finally:
        stop(api)
