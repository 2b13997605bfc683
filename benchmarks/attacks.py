"""Attacks from the access-control issue against a real `visiontune api` process: the answer, the time, the
server's peak memory growth (RSS, sampled every 10 ms) and what was left on disk, for each.

    python benchmarks/attacks.py            # prints a table, writes benchmarks/results/attacks.json

The server runs on SQLite with the default limits; the baseline row is a small valid upload.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.auth import new_key  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from tests.factories import color_images_zip  # noqa: E402
from tests.processes import free_port, python, start, stop, wait_http  # noqa: E402

MiB = 1024**2


def png_bomb() -> bytes:
    """A 1-bit PNG of 18,900 × 18,900 pixels: about 43 KB on the wire, 357 Mpx decoded."""
    buf = io.BytesIO()
    Image.new("1", (18_900, 18_900)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def zip_of_zeros(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("cls/zeros.png", "w", force_zip64=True) as f:
            chunk = b"\x00" * MiB
            for _ in range(size // MiB):
                f.write(chunk)
    return buf.getvalue()


def zip_many_entries(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"c{i % 2}/{i}.png", b"x")
    return buf.getvalue()


def tar_long_name(claimed: int) -> bytes:
    """A gzip'd tar whose GNU long-name ('L') header claims `claimed` bytes of name."""

    def header(name: bytes, size: int, kind: bytes) -> bytes:
        h = bytearray(512)
        h[0 : len(name)] = name
        h[100:108] = b"0000644\x00"
        h[108:116] = h[116:124] = b"0000000\x00"
        h[124:136] = f"{size:011o}\x00".encode()
        h[136:148] = b"00000000000\x00"
        h[156:157] = kind
        h[257:263] = b"ustar "
        h[263:265] = b" \x00"
        h[148:156] = b" " * 8
        h[148:156] = f"{sum(h):06o}\x00 ".encode()
        return bytes(h)

    raw = header(b"././@LongLink", claimed, b"L") + b"a" * (1 * MiB)
    return gzip.compress(raw, compresslevel=9)


def big_json(size: int) -> bytes:
    return b'{"dataset_id": "' + b"x" * size + b'"}'


class Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.key = new_key()
        db = f"sqlite:///{workdir / 'vt.db'}"
        upgrade(db)
        self.data = workdir / "data"
        env = {
            "VISIONTUNE_DATA_DIR": str(self.data),
            "VISIONTUNE_DATABASE_URL": db,
            "VISIONTUNE_ADMIN_KEY": self.key,
            "VISIONTUNE_BROKER_URL": os.environ.get("VISIONTUNE_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
            "VISIONTUNE_RATE_LIMIT_WRITE": "100000/minute",
            "VISIONTUNE_RATE_LIMIT_PREDICT": "100000/minute",
        }
        self.port = free_port()
        self.log = workdir / "api.log"
        self.proc = start(python("-m", "launcher.cli", "api", "--port", str(self.port)), env, self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.base}/health", self.proc, self.log)
        self.ps = psutil.Process(self.proc.pid)

    def disk(self) -> int:
        return sum(f.stat().st_size for f in self.data.rglob("*") if f.is_file())

    def measure(self, send: Callable[[httpx.Client], httpx.Response]) -> dict:
        before, peak = self.ps.memory_info().rss, [0]
        disk_before = self.disk()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], self.ps.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start_t = time.perf_counter()
        with httpx.Client(base_url=self.base, timeout=600, headers={"Authorization": f"Bearer {self.key}"}) as c:
            r = send(c)
        seconds = time.perf_counter() - start_t
        done.set()
        sampler.join()
        try:
            message = r.json().get("error", {}).get("message", "")
        except ValueError:
            message = r.text[:120]
        return {
            "status": r.status_code,
            "seconds": round(seconds, 3),
            "peak_rss_growth_mb": round(max(0, peak[0] - before) / MiB, 1),
            "disk_left_bytes": self.disk() - disk_before,
            "message": message[:160],
            "response_bytes": len(r.content),
        }


def attacks(tmp: Path) -> list[tuple[str, Callable[[httpx.Client], httpx.Response]]]:
    bomb = png_bomb()
    zeros = zip_of_zeros(1024 * MiB)
    many = zip_many_entries(100_000)
    longname = tar_long_name(1024 * MiB)
    nul = b"\x00" * (64 * MiB)
    small = color_images_zip(tmp / "small.zip", {"a": 10, "b": 10}, size=16).read_bytes()

    def upload(data: bytes, name: str = "d.zip") -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post("/datasets", files={"file": (name, data, "application/octet-stream")})

    def stream_upload(c: httpx.Client) -> httpx.Response:  # 6 GiB announced, sent without Content-Length
        def body():
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.zip"\r\n\r\nPK\x03\x04'
            chunk = b"\x00" * MiB
            for _ in range(6 * 1024):
                yield chunk

        return c.post("/datasets", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})

    job = str(uuid.uuid4())
    dataset: dict[str, str] = {}

    def baseline(c: httpx.Client) -> httpx.Response:
        r = upload(small)(c)
        dataset["id"] = r.json()["id"]
        return r

    def submit(**fields: object) -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post("/jobs", json={"dataset_id": dataset["id"], **fields})

    return [
        ("baseline: a valid 20-image upload", baseline),
        ("no key: cancel a job", lambda c: c.post(f"/jobs/{job}/cancel", headers={"Authorization": ""})),
        (
            "no key: promote a version",
            lambda c: c.post("/models/default/versions/1/promote", headers={"Authorization": ""}),
        ),
        (
            f"PNG bomb to /predict ({len(bomb) // 1024} KB, 357 Mpx)",
            lambda c: c.post("/predict", files={"files": ("b.png", bomb, "image/png")}),
        ),
        (
            "two PNG bombs in one /predict",
            lambda c: c.post(
                "/predict", files=[("files", ("a.png", bomb, "image/png")), ("files", ("b.png", bomb, "image/png"))]
            ),
        ),
        (f"zip of zeros ({len(zeros) // 1024} KB -> 1 GiB)", upload(zeros)),
        ("zip of 100,000 one-byte entries", upload(many)),
        ("tar.gz whose GNU long name claims 1 GiB", upload(longname, "d.tar.gz")),
        ("64 MiB of NUL bytes as a dataset", upload(nul, "d.tar.gz")),
        ("6 GiB streamed upload without Content-Length", stream_upload),
        (
            "64 MiB JSON body to POST /jobs",
            lambda c: c.post("/jobs", content=big_json(64 * MiB), headers={"Content-Type": "application/json"}),
        ),
        ("weights: /etc/shadow", submit(weights="/etc/shadow")),
        ("weights: a missing file", submit(weights="/etc/no-such-file.pt")),
        ("offset=2^63 on GET /jobs", lambda c: c.get("/jobs", params={"offset": 2**63})),
        ("epochs 1000, image_size 1024, batch 4096", submit(epochs=1000, image_size=1024, batch_size=4096)),
        ('"epochs": true', submit(epochs=True)),
    ]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = Server(tmp)
        rows = []
        try:
            for label, send in attacks(tmp):
                row = {"attack": label, **server.measure(send)}
                rows.append(row)
                print(
                    f"{label[:52]:52}  {row['status']}  {row['seconds']:7.2f} s  {row['peak_rss_growth_mb']:7.1f} MB  "
                    f"disk {row['disk_left_bytes']:>9}  {row['message'][:70]}",
                    flush=True,
                )
            alive = server.proc.poll() is None
        finally:
            stop(server.proc)
    out = REPO / "benchmarks" / "results" / "attacks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "server_alive_after": alive}, indent=1))
    print(f"\nserver alive after every attack: {alive}; wrote {out}")
    bad = [r for r in rows[1:] if r["status"] < 400 or r["status"] >= 500 or r["peak_rss_growth_mb"] > 200]
    return 1 if bad or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
