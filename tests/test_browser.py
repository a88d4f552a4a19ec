"""The try-it page (GET /) end to end: Debian's headless Chromium, driven by Playwright, against real uvicorn.

Screenshots go to tests/output/browser/ (git-ignored); LSMSEG_UPDATE_DOCS_SCREENSHOT=1 also rewrites the
README's docs/browser-page.png.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from service_server import REPO_ROOT, ServiceProcess

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# As root, in a sandbox with no outside network: no sandbox, no GPU, and no background calls home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OUTPUT = REPO_ROOT / "tests" / "output" / "browser"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "browser-page.png"
API_KEY = "browser-test-key"
MAX_IMAGE_PIXELS = 500_000  # small, so that a 413 needs no big upload
SETTINGS = {"max_image_pixels": MAX_IMAGE_PIXELS, "torch_threads": 1}  # two servers share the cores
CLASSES = ["sky", "grass", "red ball", "yellow box"]
WIDTH, HEIGHT = 160, 120
WAIT_MS = 60_000  # a segmentation on two busy cores, with the page's round trip

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = sync_api.expect


# Fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Playwright gives every launch a fresh, empty profile directory of its own.
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """One open service and one that wants API_KEY, started side by side (each start takes ~10 s).
    Vocabularies stay in memory: nothing is shared with other tests' Redis."""
    folder = tmp_path_factory.mktemp("browser-service")
    services = (
        ServiceProcess(folder / "open.log", **SETTINGS),
        ServiceProcess(folder / "keyed.log", **SETTINGS, api_key=API_KEY),
    )
    try:
        with ThreadPoolExecutor(len(services)) as pool:
            for started in [pool.submit(service.start) for service in services]:
                started.result()
        yield services
    finally:
        for service in services:
            service.stop()


@pytest.fixture(scope="module")
def server(servers: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return servers[0]


@pytest.fixture(scope="module")
def keyed_server(servers: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return servers[1]


@pytest.fixture
def page(browser: Any, server: ServiceProcess) -> Iterator[Any]:
    with _open(browser, server) as opened:
        yield opened


@contextmanager
def _open(browser: Any, server: ServiceProcess, **context_options: Any) -> Iterator[Any]:
    """The page, loaded in a new browser context (its own sessionStorage); it must fetch nothing elsewhere."""
    context = browser.new_context(**context_options)
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        foreign: list[str] = []
        page.on("request", lambda request: _note_foreign(request.url, server.url, foreign))
        page.goto(server.url + "/")
        expect(page.locator("#model-status")).not_to_have_text("Checking the service…")
        yield page
        assert foreign == [], f"the page fetched from elsewhere: {foreign}"  # it must work offline
    finally:
        context.close()


def _note_foreign(url: str, own: str, foreign: list[str]) -> None:
    if not url.startswith((own + "/", "data:", "blob:")):
        foreign.append(url)


@pytest.fixture(scope="module")
def shapes_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A drawn scene: sky over grass, a red ball and a yellow box."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (120, 180, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 70, WIDTH, HEIGHT), fill=(60, 150, 60))
    draw.ellipse((20, 50, 60, 90), fill=(210, 30, 30))
    draw.rectangle((100, 40, 145, 85), fill=(240, 210, 40))
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    image.save(path)
    return path


def _screenshot(page: Any, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _segment(page: Any, image: Path, classes: str | None = None) -> dict[str, Any]:
    """Choose the image, type the classes (unless a vocabulary is picked), press Segment; the API's answer."""
    page.set_input_files("#image", str(image))
    if classes is not None:
        page.fill("#classes", classes)
    with page.expect_response(lambda response: response.url.endswith("/segment")) as answer:
        page.click("#segment-button")
    body = answer.value.json()
    assert answer.value.status == 200, body
    expect(page.locator("#result")).to_be_visible()
    return body


def _legend(page: Any) -> list[str]:
    return page.locator("#legend tbody th").all_inner_texts()


def _decode_png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def _direct_segment(server: ServiceProcess, image: Path, classes: list[str]) -> dict[str, Any]:
    files = {"image": (image.name, image.read_bytes(), "image/png")}
    fields = {"classes": json.dumps(classes), "overlay": "true"}
    response = httpx.post(f"{server.url}/segment", files=files, data=fields, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


# The page ---------------------------------------------------------------------------------------------------
def test_page_is_served_with_its_assets_and_a_strict_policy(server):
    response = httpx.get(server.url + "/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for asset in ("/static/page.js", "/static/page.css"):
        assert asset in response.text
        assert httpx.get(server.url + asset).status_code == 200
    missing = httpx.get(server.url + "/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "/" not in httpx.get(server.url + "/openapi.json").json()["paths"]


def test_segment_shows_the_overlay_legend_and_timings(page, server, shapes_png):
    model = httpx.get(server.url + "/readyz").json()["model"]["name"]  # tiny, or the demo checkpoint's
    expect(page.locator("#model-status")).to_contain_text(f"Model {model}")
    body = _segment(page, shapes_png, " sky, grass ,red ball,, yellow box ")
    assert body["classes"] == CLASSES  # trimmed, empty names dropped

    by_area = sorted(body["segments"], key=lambda segment: -segment["area"])
    assert _legend(page) == [segment["class"] for segment in by_area]
    direct = _direct_segment(server, shapes_png, CLASSES)  # the same request, not through the page
    assert {s["class"]: s["area"] for s in direct["segments"]} == {s["class"]: s["area"] for s in by_area}

    rows = page.locator("#legend tbody tr")
    pixels = WIDTH * HEIGHT
    for row, segment in zip(rows.all(), by_area, strict=True):
        cells = row.locator("td").all_inner_texts()
        assert cells == [f"{100 * segment['area'] / pixels:.1f} %", f"{segment['score']:.2f}"]
        red, green, blue = (int(segment["colour"][i : i + 2], 16) for i in (1, 3, 5))
        swatch = row.locator(".swatch").evaluate("element => getComputedStyle(element).backgroundColor")
        assert swatch == f"rgb({red}, {green}, {blue})"

    # The legend's colours are the overlay's: overlay = round((image + colour) / 2) on each class's pixels.
    image = np.asarray(Image.open(shapes_png)).astype(int)
    overlay = _decode_png(body["overlay"]["data"]).astype(int)
    labels = _decode_png(body["label_map"]["data"])
    for segment in by_area:
        colour = np.array([int(segment["colour"][i : i + 2], 16) for i in (1, 3, 5)])
        where = labels == segment["index"]
        assert np.abs(2 * overlay[where] - image[where] - colour).max() <= 1

    natural = page.eval_on_selector("#overlay", "image => [image.naturalWidth, image.naturalHeight]")
    assert natural == [WIDTH, HEIGHT]
    stages = page.locator("#timings tbody th").all_inner_texts()
    assert "total" in stages and set(stages) == set(body["timings_ms"])
    expect(page.locator("#error")).to_be_hidden()

    page.uncheck("#show-overlay")  # the plain image, for comparison
    assert page.eval_on_selector("#overlay", "image => image.src").startswith("blob:")
    page.check("#show-overlay")
    assert page.eval_on_selector("#overlay", "image => image.src").startswith("data:image/png")
    _screenshot(page, "segment-desktop.png")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no classes", ["Something in the request is not valid", "the class list is empty"]),
        ("not an image", ["not an image the service reads", "PNG, JPEG or WebP"]),
        ("too many pixels", ["The image is too large", "pixels"]),
        ("no image", ["Choose an image first."]),
    ],
)
def test_errors_are_shown_in_words(page, shapes_png, tmp_path, case, expected):
    files = {
        "no classes": shapes_png,
        "not an image": tmp_path / "notes.png",
        "too many pixels": tmp_path / "big.png",
    }
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("RGB", (1000, 600), "white").save(tmp_path / "big.png")  # 600,000 pixels > the limit
    if case in files:
        page.set_input_files("#image", str(files[case]))
    page.fill("#classes", "" if case == "no classes" else "cat, dog")
    page.click("#segment-button")
    error = page.locator("#error")
    expect(error).to_be_visible()
    for text in expected:
        expect(error).to_contain_text(text)
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#segment-button")).to_be_enabled()
    if case == "no classes":
        _screenshot(page, "error.png")


def test_busy_while_running_then_a_503_says_not_ready(page, shapes_png):
    held: list[Any] = []
    page.route("**/segment", lambda route: held.append(route))  # hold the request: the page waits
    page.set_input_files("#image", str(shapes_png))
    page.fill("#classes", "cat")
    page.click("#segment-button")
    button = page.locator("#segment-button")
    expect(button).to_be_disabled()
    expect(button).to_have_text("Segmenting…")
    expect(page.locator("#progress")).to_be_visible()
    assert len(held) == 1
    error = {"error": {"code": "not_ready", "message": "the model is still loading; retry shortly"}}
    held[0].fulfill(status=503, json=error, headers={"Retry-After": "5"})
    expect(page.locator("#error")).to_contain_text("not ready or is busy right now. Try again in 5 s.")
    expect(page.locator("#error")).to_contain_text("the model is still loading")
    expect(button).to_be_enabled()
    expect(page.locator("#progress")).to_be_hidden()


def test_register_a_vocabulary_and_segment_with_it(page, server, shapes_png):
    page.fill("#vocab-name", "garden")
    page.fill("#vocab-classes", "tree, flower, fence")
    page.press("#vocab-classes", "Enter")  # the keyboard submits the form
    expect(page.locator("#vocab-message")).to_contain_text("Registered garden (3 classes)")
    expect(page.locator("#vocab-select")).to_have_value("garden")
    expect(page.locator("#classes")).to_be_disabled()  # the vocabulary replaces typed names
    listed = httpx.get(server.url + "/vocab").json()["vocabularies"]
    assert any(vocab["name"] == "garden" and vocab["num_classes"] == 3 for vocab in listed)

    body = _segment(page, shapes_png)
    assert body["classes"] == ["tree", "flower", "fence"]
    assert set(_legend(page)) == {segment["class"] for segment in body["segments"]}

    page.fill("#vocab-classes", "tree, bush")  # the same name for other classes: 409
    page.click("#vocab-button")
    expect(page.locator("#vocab-message")).to_contain_text("already taken")
    page.fill("#vocab-name", "")
    page.fill("#vocab-classes", "")
    page.click("#vocab-button")
    expect(page.locator("#vocab-message")).to_contain_text("not valid")


def test_api_key_is_asked_for_then_sent(browser, keyed_server, shapes_png):
    with _open(browser, keyed_server) as page:
        _key_flow(page, shapes_png)
    with _open(browser, keyed_server) as fresh:  # a new session starts without the key
        expect(fresh.locator("#api-key")).to_have_value("")


def _key_flow(page: Any, shapes_png: Path) -> None:
    expect(page.locator("#vocab-status")).to_contain_text("needs an API key")
    page.set_input_files("#image", str(shapes_png))
    page.fill("#classes", "cat, dog")
    page.click("#segment-button")
    expect(page.locator("#error")).to_contain_text("needs an API key")
    expect(page.locator("#error")).to_contain_text("Authorization: Bearer")

    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Tab")  # change: the vocabulary list reloads with the key
    expect(page.locator("#vocab-status")).to_be_empty()
    with page.expect_response(lambda response: response.url.endswith("/segment")) as answer:
        page.click("#segment-button")
    assert answer.value.status == 200
    assert answer.value.request.headers["authorization"] == f"Bearer {API_KEY}"
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('lsmseg.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    page.reload()  # kept for this tab's session
    expect(page.locator("#api-key")).to_have_value(API_KEY)


def test_phone_width_has_no_horizontal_overflow(browser, server, shapes_png):
    with _open(browser, server, viewport={"width": 375, "height": 740}) as page:
        long_name = "a-very-long-class-name-without-spaces-that-could-push-the-legend-wider-than-a-phone"
        _segment(page, shapes_png, f"sky, grass, {long_name}")
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1] == 375
        assert page.eval_on_selector("#overlay", "image => image.getBoundingClientRect().right") <= 375
        _screenshot(page, "segment-phone.png")


def test_keyboard_reaches_every_control_and_focus_is_visible(page):
    order = []
    for _ in range(12):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id || document.activeElement.tagName")
        order.append(focused)
        if focused == "segment-button":
            outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline == "solid"  # the focus ring shows
    controls = ["image", "vocab-select", "classes", "segment-button", "vocab-name", "vocab-button", "api-key"]
    assert "api-key" in order, order
    first_round = order[: order.index("api-key") + 1]  # Tab wraps around after the last control
    assert [focused for focused in first_round if focused in controls] == controls, order


def test_an_image_can_be_dropped_on_the_page(page, shapes_png):
    drop = page.evaluate_handle(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        base64.b64encode(shapes_png.read_bytes()).decode("ascii"),
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
    expect(page.locator("#preview")).to_be_visible()
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    page.fill("#classes", "sky, grass")
    with page.expect_response(lambda response: response.url.endswith("/segment")) as answer:
        page.click("#segment-button")
    assert answer.value.status == 200
    expect(page.locator("#legend tbody tr").first).to_be_visible()


def test_an_example_is_one_click_and_the_page_says_what_the_model_knows(page, server):
    examples = httpx.get(server.url + "/static/examples/examples.json").json()["examples"]
    assert len(examples) == 3
    buttons = page.locator("#example-list button.example")
    expect(buttons).to_have_count(len(examples))
    first = examples[0]
    with page.expect_response(lambda response: response.url.endswith("/segment")) as answer:
        buttons.first.click()
    body = answer.value.json()
    assert answer.value.status == 200, body
    assert body["classes"] == first["classes"]
    assert page.input_value("#classes") == ", ".join(first["classes"])
    expect(page.locator("#result")).to_be_visible()
    image = httpx.get(f"{server.url}/static/examples/{first['file']}").content
    assert (body["width"], body["height"]) == Image.open(io.BytesIO(image)).size
    expect(page.locator("#legend tbody tr")).to_have_count(len(body["segments"]))
    shot = _screenshot(page, "example-desktop.png")
    if os.environ.get("LSMSEG_UPDATE_DOCS_SCREENSHOT"):  # the README's picture, in 64 colours
        Image.open(shot).convert("RGB").quantize(colors=64).save(DOCS_SCREENSHOT, optimize=True)
    # The demo checkpoint knows synthetic scenes; the page says so and how to get a model of real photos.
    domain = httpx.get(server.url + "/readyz").json()["model"]["domain"]
    notice = page.locator("#model-notice")
    if domain is None:  # the random tiny fallback (no demo checkpoint): its status line says RANDOM instead
        expect(notice).to_be_hidden()
        return
    expect(notice).to_contain_text(domain)
    expect(page.locator("#real-photos-hint")).to_be_visible()
    expect(page.locator("#real-photos-hint")).to_contain_text("lsmseg-import catseg")
