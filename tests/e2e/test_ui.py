"""The /ui dashboard in headless Chromium (Selenium) against the embedded `visiontune run`: a real API, Redis,
worker and reaper. Sign in, upload a dataset through the drop zone, start a job from the generated form, watch
its progress bar move and its curves fill over SSE, open a confusion-matrix cell and see its thumbnails, promote
a version, classify an image; then every page at a phone's width with nothing overflowing sideways. Any browser
console error fails the test. Screenshots go to the test's tmp dir and, with VISIONTUNE_SCREENSHOTS=dir, there."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.auth import new_key
from tests.factories import cifar_imagefolder_zip
from tests.processes import REPO, bearer, embedded_server

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if os.environ.get("CI"):  # .ci/run installs them: a missing browser there is a broken set-up, not a skip
        pytest.fail("chromium or chromium-driver is missing although .ci/run installs them", pytrace=False)
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (.ci/run installs them)", allow_module_level=True
    )

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CLASSES = ("airplane", "automobile", "cat", "dog")
PAGES = ("datasets", "new", "jobs", "compare", "models", "predict")
DESKTOP, PHONE = (1280, 800), (390, 844)


def wait_for(what: str, check: Callable[[], Any], deadline_s: float = 60, interval: float = 0.1) -> Any:
    """Poll check() until it returns something truthy (exceptions of a changing page count as not yet)."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (NoSuchElementException, StaleElementReferenceException) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Browser:
    """A headless Chromium session that fails on console errors and saves screenshots."""

    def __init__(self, driver: WebDriver, shots: list[Path]) -> None:
        self.driver = driver
        self.shots = shots
        self.errors: list[dict[str, Any]] = []

    def console_errors(self) -> list[dict[str, Any]]:
        self.errors += [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
        return self.errors

    def check_console(self, where: str, forbidden: tuple[str, ...] = ()) -> None:
        """No console errors, except Chromium's network log of the 403 answers expected (path and query)."""
        errors = [e for e in self.console_errors() if not expected_403(e, forbidden)]
        assert not errors, f"browser console errors on {where}: {errors}"

    def css(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def visible(self, selector: str, deadline_s: float = 30) -> WebElement:
        return wait_for(selector, lambda: next((e for e in self.all(selector) if e.is_displayed()), None), deadline_s)

    def go(self, route: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", route)

    def field(self, label: str) -> WebElement:
        """The form control a <label> with exactly this text is for (every control has one)."""
        found = wait_for(
            f"a label {label!r}",
            lambda: [e for e in self.all("label") if (e.get_attribute("textContent") or "").strip() == label],
            30,
        )
        return self.driver.find_element(By.ID, found[0].get_attribute("for"))

    def screenshot(self, name: str) -> None:
        """A PNG of the window."""
        for folder in self.shots:
            folder.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(folder / f"{name}.png"))

    def screenshot_of(self, name: str, selector: str) -> None:
        """A PNG of one element (scrolled into view)."""
        element = self.css(selector)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", element)
        for folder in self.shots:
            folder.mkdir(parents=True, exist_ok=True)
            element.screenshot(str(folder / f"{name}.png"))

    def overflow(self) -> int:
        """How far the page is wider than the window (0: nothing overflows sideways)."""
        return int(
            self.driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
        )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, str]]:
    key = new_key()
    env = {
        "VISIONTUNE_ADMIN_KEY": key,
        "VISIONTUNE_RATE_LIMIT_PREDICT": "1000000/minute",
        "VISIONTUNE_RATE_LIMIT_WRITE": "100000/minute",
        # progress events 5×/s instead of 1×/s: a few seconds of training still draws a step-loss curve
        "VISIONTUNE_EVENTS_PROGRESS_INTERVAL_SECONDS": "0.2",
    }
    with embedded_server(tmp_path, env) as url:
        yield url, key


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*DESKTOP)
    shots = [tmp_path / "screenshots"]
    if os.environ.get("VISIONTUNE_SCREENSHOTS"):
        shots.append(Path(os.environ["VISIONTUNE_SCREENSHOTS"]))
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()


def test_dashboard_end_to_end(service: tuple[str, str], browser: Browser, tmp_path: Path) -> None:
    base, key = service
    b = browser
    archive = tmp_path / "pets.zip"
    heldout = cifar_imagefolder_zip(archive, classes=CLASSES, train_per_class=40, test_per_class=10)["heldout"]
    image = tmp_path / "probe.png"
    image.write_bytes(heldout[0][0])

    # The page, its scripts and the one pinned library file need no key; nothing else of node_modules is served.
    page = httpx.get(f"{base}/ui/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "img-src 'self' data: blob:;" in csp and "unsafe" not in csp
    vendor = httpx.get(f"{base}/ui/vendor/chart.umd.min.js")
    if (REPO / "app" / "ui" / "node_modules" / "chart.js" / "package.json").exists():
        assert vendor.status_code == 200 and vendor.headers["content-type"].startswith("text/javascript")
    else:
        assert vendor.status_code == 404 and "make install" in vendor.json()["error"]["message"]
    assert httpx.get(f"{base}/ui/vendor/package.json").status_code == 404
    assert httpx.get(f"{base}/ui/static/app.js").headers["content-type"].startswith("text/javascript")

    # Sign in: the key goes into sessionStorage only.
    b.driver.get(f"{base}/ui/")
    b.field("API key").send_keys(key)
    b.css("form.signin button[type=submit]").click()
    b.visible("#nav")
    assert b.driver.execute_script("return sessionStorage.getItem('visiontune.apiKey')") == key
    assert key not in b.driver.current_url and not b.driver.get_cookies()
    b.check_console("sign-in")

    # Upload through the drop zone's file input, with a progress bar.
    b.go("#/datasets")
    b.field("Name").send_keys("pets")
    b.css("#dataset-drop input[type=file]").send_keys(str(archive))
    done = b.visible(".form-status .ok", deadline_s=60)
    assert "200 images in 4 classes" in done.text, done.text
    assert b.css("#dataset-drop + .progress progress").get_attribute("value") == "1000"
    dataset_id = done.find_element(By.TAG_NAME, "a").get_attribute("href").rsplit("/", 1)[1]
    wait_for("the list", lambda: "pets" in b.css("main table").text)
    # The dataset's classes with counts and thumbnails (blob: URLs of images fetched with the key).
    b.go(f"#/datasets/{dataset_id}")
    wait_for("class thumbnails", lambda: len([i for i in b.all(".class-card img") if image_loaded(b, i)]) >= 8)
    assert [e.text.split()[0] for e in b.all(".class-card h3")] == list(CLASSES)
    b.screenshot("dataset")
    b.check_console("the datasets pages")

    # A job from the form generated from the schema: a preset first, then tiny settings.
    b.go(f"#/new?dataset={dataset_id}")
    preset = Select(b.field("Preset"))
    preset.select_by_visible_text("best accuracy: LP-FT partial")
    assert Select(b.field("Strategy")).first_selected_option.text == "partial"
    assert b.field("Probe Epochs").get_attribute("value") == "5"
    preset.select_by_visible_text("defaults")
    # EfficientNet-Lite0 ships its ImageNet weights (offline); at 64 px three epochs of 120 images take seconds.
    settings = {"Model Name": "pets", "Arch": "efficientnet_lite0", "Weights": "imagenet", "Epochs": "3"}
    settings |= {"Batch Size": "8", "Learning Rate": "0.001", "Image Size": "64"}
    for label, value in settings.items():
        control = b.field(label)
        control.clear()
        control.send_keys(value)
    Select(b.field("Strategy")).select_by_value("partial")
    b.css("#job-form details summary").click()
    for label, value in {"Val Fraction": "0.25", "Num Workers": "0"}.items():
        control = b.field(label)
        control.clear()
        control.send_keys(value)
    # The estimate follows the form: 3 epochs of the 160 training images less the 25% held out.
    wait_for("the estimate", lambda: "3 epochs × 120 images" in b.css(".estimate").text, deadline_s=30)
    b.driver.execute_script("window.scrollTo(0, 0)")
    b.screenshot("new-job")
    b.css("#job-form button[type=submit]").click()
    wait_for("the job page", lambda: "#/jobs/" in b.driver.current_url)
    job_id = b.driver.current_url.rsplit("/", 1)[1]

    # The progress bar moves and curve points arrive over SSE while the job runs.
    seen: list[int] = []

    def finished() -> bool:
        value = int(b.css("#job-progress progress").get_attribute("value"))
        if not seen or seen[-1] != value:
            seen.append(value)
        return "succeeded" in b.css("h1 .badge").text

    wait_for("the job to succeed", finished, deadline_s=180, interval=0.05)
    assert seen[-1] == 1000 and any(0 < v < 1000 for v in seen), seen
    assert seen == sorted(seen), seen
    points = b.css("#curve-points").text
    assert points.startswith("3 epochs") and "0 step points" not in points, points
    wait_for("the results", lambda: b.all("#confusion .cell"))
    assert len(b.all("#per-class tbody tr")) == len(CLASSES)
    before_after = b.css("#before-after tbody tr").text  # accuracy: before, after, change
    assert before_after.startswith("Accuracy") and "—" not in before_after, before_after
    b.driver.execute_script("window.scrollTo(0, 0)")
    b.screenshot("job")

    # A confusion-matrix cell opens that (true, predicted) pair's validation images.
    cells = b.all("#confusion .cell")
    counts = [int(c.get_attribute("data-count")) for c in cells]
    off = [
        c
        for c, n in zip(cells, counts, strict=True)
        if n and c.get_attribute("data-true") != c.get_attribute("data-predicted")
    ]
    cell = off[0] if off else cells[counts.index(max(counts))]
    expected = int(cell.get_attribute("data-count"))
    b.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    cell.click()
    wait_for(
        "the cell's thumbnails",
        lambda: len([i for i in b.all("#cell-images img") if image_loaded(b, i)]) == min(expected, 24),
    )
    assert f"{expected} image" in b.css("#cell-images h3").text
    b.screenshot_of("confusion", "#confusion-card")
    b.check_console("the job page")

    # Compare overlays the job's curves.
    b.go(f"#/compare?ids={job_id}")
    wait_for("the comparison", lambda: job_id[:8] in b.css("main .card table").text)
    b.go("#/jobs")
    wait_for("the jobs list", lambda: "succeeded" in b.css("main table").text)
    b.screenshot("jobs")

    # Promote the version (a pin): the model page says so and marks it pinned.
    b.go("#/models/pets")
    b.visible("button.promote").click()
    assert "v1 is pinned" in b.visible("#model-status .ok").text
    wait_for("the pin", lambda: "pinned" in b.css("main table").text)
    # An export of the version, made and verified by the worker, with its verification report.
    b.css("button[aria-label='exports of v1']").click()
    Select(b.field("Format")).select_by_value("onnx")
    b.visible(".card.inset button").click()
    wait_for("the export to be verified", lambda: verified(b), deadline_s=120, interval=0.5)
    report = b.css(".export table").text
    assert "val" in report and "yes" in report, report
    exports = httpx.get(f"{base}/models/pets/versions/1/exports", headers=bearer(key)).json()
    assert f"sha256 {exports[0]['sha256']}" in b.css(".export").text  # the file's hash, as GET .../exports gives it
    b.screenshot("models")
    b.check_console("the models page")

    # Classify an image: its top-k as bars.
    b.go("#/predict")
    Select(b.field("Model")).select_by_value("pets")
    b.css("#predict-drop input[type=file]").send_keys(str(image))
    bars = wait_for("the top-k bars", lambda: b.all("#predictions .bar"))
    assert len(bars) == 3 and all(bar.text.split()[0] in CLASSES for bar in bars)
    b.screenshot("predict")
    b.check_console("the predict page")

    # Every page at a phone's width: nothing wider than the window.
    b.driver.set_window_size(*PHONE)
    for route in (*PAGES, f"jobs/{job_id}", f"datasets/{dataset_id}", "models/pets"):
        b.go(f"#/{route}")
        wait_for(f"#/{route} to render", lambda: b.all("main h1"))
        b.driver.execute_script("return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        assert b.overflow() <= 0, f"#/{route} overflows by {b.overflow()} px at {PHONE}"
    b.go(f"#/jobs/{job_id}")
    wait_for("the job page", lambda: b.all("#confusion"))
    b.screenshot("job-phone")
    b.check_console("the pages at a phone's width")

    # A hash that is not valid percent-encoding, or that smuggles another path into an id, is "no page": no
    # request, no unhandled error.
    b.driver.execute_script("performance.clearResourceTimings()")
    for route in ("#/jobs/%E0", f"#/datasets/..%2Fjobs%2F{job_id}", "#/models/a%2Fb"):
        b.go(route)
        wait_for(route, lambda: f"No page at {route}." in b.css("main .error").text)  # noqa: B023
    fetched = b.driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert not [u for u in fetched if "/jobs/" in u or "/datasets/" in u or "/models/" in u], fetched
    b.check_console("malformed routes")

    # Sign out: the key is gone from the tab.
    b.css("#signout").click()
    b.visible("form.signin")
    assert b.driver.execute_script("return sessionStorage.length") == 0
    b.check_console("sign-out")

    # A predict-only key signs in (the probe's 403 means a valid key without the read scope) and lands on Predict,
    # where a text field takes the model name it may not list; the pages it cannot read say which scope it lacks.
    made = httpx.post(f"{base}/keys", json={"name": "kiosk", "scopes": ["predict"]}, headers=bearer(key))
    assert made.status_code == 201, made.text
    b.driver.set_window_size(*DESKTOP)
    b.field("API key").send_keys(made.json()["key"])
    b.css("form.signin button[type=submit]").click()
    wait_for("the predict page", lambda: b.driver.current_url.endswith("#/predict") and b.all("#predict-drop"))
    model = b.field("Model")
    assert model.tag_name == "input" and model.get_attribute("type") == "text"
    model.send_keys("pets")
    b.css("#predict-drop input[type=file]").send_keys(str(image))
    bars = wait_for("the top-k bars of the predict key", lambda: b.all("#predictions .bar"))
    assert len(bars) == 3 and all(bar.text.split()[0] in CLASSES for bar in bars)
    b.go("#/jobs")
    denied = b.visible("main .error.forbidden").text
    assert "lacks the 'read' scope" in denied and "Sign out" in denied, denied
    b.check_console("a predict-only key", forbidden=("/datasets?limit=1", "/models", "/jobs?limit=30"))


def expected_403(entry: dict[str, Any], paths: tuple[str, ...]) -> bool:
    """Whether a console entry is Chromium's network log ("<url> - Failed to load resource: the server responded
    with a status of 403 (Forbidden)") of a 403 answer to one of these paths (with their query)."""
    url, _, text = str(entry.get("message", "")).partition(" - ")
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    return entry.get("source") == "network" and "status of 403" in text and target in paths


def verified(b: Browser) -> bool:
    """Reopen the exports panel (it is read when opened) until the export is verified."""
    text = " ".join(e.text for e in b.all(".export h4"))
    if "verified" in text:
        return True
    assert "failed" not in text and "rejected" not in text, b.css(".exports").text
    b.css("button[aria-label='exports of v1']").click()
    return False


def image_loaded(b: Browser, img: WebElement) -> bool:
    return bool(
        b.driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        and (img.get_attribute("src") or "").startswith("blob:")
    )
