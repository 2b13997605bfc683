"""The /ui dashboard's page and files: served without a key under their own strict CSP; only the pinned library
file of node_modules is reachable, and a missing one turns into an install hint instead of a broken script."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.api import ui


def test_page_needs_no_key_and_carries_a_strict_csp_with_blob_images(client):
    client.headers.pop("Authorization")  # the client fixture sends the admin key: not here
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "style-src 'self';" in csp and "img-src 'self' data: blob:;" in csp
    assert "unsafe" not in csp and "*" not in csp
    assert '<script type="module" src="/ui/static/app.js">' in page.text
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline for the CSP to refuse
    js = client.get("/ui/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/nothing.js").status_code == 404


@pytest.mark.skipif(not ui.VENDOR["chart.umd.min.js"].is_file(), reason="npm ci has not run in app/ui")
def test_the_installed_library_file_is_served_and_nothing_else_of_node_modules(client):
    page = client.get("/ui/")
    assert '<script src="/ui/vendor/chart.umd.min.js"></script>' in page.text
    assert 'data-vendor-missing=""' in page.text
    r = client.get("/ui/vendor/chart.umd.min.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert r.content == ui.VENDOR["chart.umd.min.js"].read_bytes()
    for path in ("/ui/vendor/package.json", "/ui/vendor/chart.js", "/ui/vendor/..%2F..%2Fpackage-lock.json"):
        assert client.get(path).status_code == 404, path
    assert client.get("/ui/static/../node_modules/chart.js/package.json").status_code == 404


def test_a_missing_library_becomes_an_install_hint(client, monkeypatch, tmp_path: Path):
    monkeypatch.setitem(ui.VENDOR, "chart.umd.min.js", tmp_path / "absent.js")
    page = client.get("/ui/")
    assert "/ui/vendor/" not in page.text
    assert 'data-vendor-missing="chart.umd.min.js"' in page.text and "make install" in page.text
    r = client.get("/ui/vendor/chart.umd.min.js")
    assert r.status_code == 404 and "make install" in r.json()["error"]["message"]
