"""The page at ``/``: how the router serves it (plain HTTP), and what a person sees and does in it
(Playwright driving Debian's chromium, against a real router on loopback with tiny models).

The browser tests are plain (synchronous) test functions, not trio ones: Playwright's sync API
runs its own event loop in a greenlet and blocks the calling thread, so under pytest-trio's
``trio_mode`` a synchronous test (which trio_mode leaves alone) is the one place it is neither
nested in trio's loop nor hopping threads; the router runs as a subprocess (tests/processes.py),
so the test needs no loop of its own. Every wait is bounded by Playwright's timeouts.

Each test saves a screenshot of the state it reached under its ``tmp_path``; docs/page.png is
one of them (``test_load_button_turns_the_status_loaded_without_a_reload``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from router.edge.page import FILES, SECURITY_HEADERS
from tests.processes import RouterProcess, running_router
from tests.tiny_models import write_tiny_llama

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("LLAMA_ROUTER_CHROMIUM", "/usr/bin/chromium"))
SET_UP = "run the test set-up, `bash scripts/bootstrap.sh test` (it installs both)"
WAIT_MS = 60_000  # the longest any state may take to show (a load on a busy machine)
API_KEY = "page-test-key"


# ---- how the router serves the page (no browser) -----------------------------------------------


@pytest.fixture
def two_models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    write_tiny_llama(folder / "tiny.gguf")
    write_tiny_llama(folder / "other.gguf", seed=1)
    return folder


def test_every_file_the_package_ships_is_served_and_nothing_else() -> None:
    shipped = {
        path.name
        for path in (Path(__file__).parents[1] / "router" / "web").iterdir()
        if path.is_file()
    }
    assert set(FILES) == shipped
    assert {"index.html", "app.js", "app.css"} <= shipped


def test_the_page_needs_no_key_but_the_models_do(two_models: Path) -> None:
    with running_router(two_models, "--spares", "0", "--api-key", API_KEY) as router:
        for path in ("/", "/web/app.js", "/web/app.css"):
            answer = httpx.get(router.base_url + path, timeout=10)
            assert answer.status_code == 200, path
            for name, value in SECURITY_HEADERS.items():
                assert answer.headers[name] == value
        assert "default-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]
        assert (
            httpx.get(router.base_url + "/", timeout=10)
            .headers["Content-Type"]
            .startswith("text/html")
        )
        script = httpx.get(router.base_url + "/web/app.js", timeout=10)
        assert script.headers["Content-Type"].startswith("text/javascript")
        assert script.content == FILES["app.js"].content
        assert httpx.get(router.base_url + "/models", timeout=10).status_code == 401
        assert httpx.get(router.base_url + "/web/missing.js", timeout=10).status_code == 404
        # A page's path with another method is another route's (forwarded to a model): keyed.
        for path in ("/web/app.js", "/", "/web/index.html"):
            sent = httpx.post(router.base_url + path, json={"model": "tiny"}, timeout=10)
            assert sent.status_code == 401, path
        listed = httpx.get(
            router.base_url + "/models", headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert {entry["status"]["value"] for entry in listed.json()["data"]} == {"unloaded"}


def test_the_page_keeps_the_host_check(two_models: Path) -> None:
    with running_router(two_models, "--spares", "0") as router:
        for path in ("/", "/web/app.js"):
            rebound = httpx.get(router.base_url + path, headers={"Host": "evil.example"})
            assert rebound.status_code == 403, path
            assert "DNS rebinding" in rebound.json()["error"]["message"]


def _raw_get(base_url: str, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (no client normalizes its dots or escapes)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        connection.sendall(request.encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_no_path_leaves_the_page_folder(tmp_path: Path) -> None:
    empty = tmp_path / "none"  # no model: a request that is forwarded has nowhere to go
    empty.mkdir()
    secret_file = Path(__file__).parents[1] / "router" / "edge" / "page.py"
    marker = b"def register_page"
    assert marker in secret_file.read_bytes()
    with running_router(empty, "--spares", "0") as router:
        assert _raw_get(router.base_url, "/web/app.js")[0] == 200
        for target in (
            "/web/../edge/page.py",
            "/web/..%2fedge%2fpage.py",
            "/web/%2e%2e/edge/page.py",
            "/web/%2e%2e%2fedge%2fpage.py",
            "/web/..%5cedge%5cpage.py",
            "/web/page.py",
            "/web/",
            "/web/.",
            "/web/..",
            "/web/app.js/../../edge/page.py",
            "/web//etc/passwd",
            "/web/%2fetc%2fpasswd",
        ):
            status, body = _raw_get(router.base_url, target)
            assert 400 <= status < 500, (target, status)
            assert marker not in body and b"root:" not in body, target
            assert "error" in json.loads(body), target


# ---- in a browser ------------------------------------------------------------------------------


def _missing() -> list[str]:
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the Python package playwright")
    if not CHROMIUM.is_file():
        missing.append(f"chromium ({CHROMIUM})")
    return missing


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; the test fails in CI (and skips elsewhere) without it."""
    missing = _missing()
    if missing:
        message = f"{' and '.join(missing)} missing: {SET_UP}"
        if "CI" in os.environ:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)

    # As root, chromium's sandbox cannot start (it refuses to run so); the pages are our own.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """A page, and what went wrong in it that no assertion would see on its own."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []  # uncaught exceptions and Content-Security-Policy refusals
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.set_default_timeout(WAIT_MS)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.errors.append(f"CSP: {message.text}")

    def row(self, model: str) -> Any:
        return self.page.locator(f'tr[data-model="{model}"]')

    def status(self, model: str) -> Any:
        return self.row(model).locator(".status")


@pytest.fixture
def open_page(browser: Browser, tmp_path: Path) -> Iterator[Any]:
    """``open_page(router)``: a fresh tab (its own session storage) on the router's page."""
    contexts = []
    watched: list[Watched] = []

    def open_on(router: RouterProcess) -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = Watched(context.new_page())
        watched.append(page)
        page.page.goto(router.base_url + "/")
        return page

    yield open_on
    for context in contexts:
        context.close()
    for page in watched:
        assert page.errors == []


def _shot(page: Watched, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.page.screenshot(path=str(path), full_page=True)
    return path


def test_the_page_lists_every_model(two_models: Path, open_page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        for model in ("tiny", "other"):
            expect(page.status(model)).to_have_text("unloaded")
            expect(page.row(model)).to_contain_text(str(two_models / f"{model}.gguf"))
        expect(page.page.locator("#chat-model option")).to_have_count(2)
        expect(page.page.locator("#live")).to_have_attribute("data-state", "live")
        _shot(page, tmp_path, "models")


def test_load_button_turns_the_status_loaded_without_a_reload(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        expect(page.status("tiny")).to_have_text("unloaded")
        page.page.evaluate("window.sameDocument = true")
        page.row("tiny").locator("button.load").click()
        expect(page.status("tiny")).to_have_text("loaded")
        expect(page.status("other")).to_have_text("unloaded")
        assert page.page.evaluate("window.sameDocument") is True  # no reload, no navigation
        expect(page.row("tiny")).to_contain_text("pid ")
        _shot(page, tmp_path, "loaded")

        page.row("tiny").locator("button.unload").click()
        expect(page.status("tiny")).to_have_text("unloaded")
        assert page.page.evaluate("window.sameDocument") is True


def test_a_chat_streams_its_answer_into_the_page(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        expect(page.status("tiny")).to_have_text("unloaded")
        page.page.select_option("#chat-model", "tiny")
        page.page.fill("#chat-max-tokens", "24")
        page.page.fill("#chat-input", "Hello there")
        page.page.click("#chat-send")
        answer = page.page.locator(".message.assistant")
        expect(answer).to_have_attribute("data-state", "done")
        expect(page.page.locator(".message.user")).to_have_text("Hello there")
        # Each piece of the stream is appended as it comes, as a text node of its own: an
        # answer drawn once at the end would be one node.
        pieces = answer.evaluate("node => node.childNodes.length")
        assert pieces > 1
        assert answer.evaluate("node => node.children.length") == 0  # text, never markup
        expect(page.page.locator("#chat-stats")).to_have_text(re.compile(r"tokens/s"))
        expect(page.status("tiny")).to_have_text("loaded")  # the chat loaded it
        # No event marks a request's end: the page reads the models again after its chat.
        row = page.page.locator('tr[data-model="tiny"] td.requests')
        expect(row).to_have_text("0 running")
        _shot(page, tmp_path, "chat")


def test_a_killed_child_shows_as_failed_with_its_reason(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        page.row("tiny").locator("button.load").click()
        expect(page.status("tiny")).to_have_text("loaded")
        os.kill(router.child_pids()["tiny"], signal.SIGKILL)
        expect(page.status("tiny")).to_have_text("failed")
        expect(page.row("tiny").locator(".failure")).to_contain_text("signal 9")
        _shot(page, tmp_path, "failed")


def test_with_a_key_the_page_asks_for_it_once(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0", "--api-key", API_KEY) as router:
        page = open_page(router)
        dialog = page.page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.page.locator("#key-refused")).to_be_hidden()
        _shot(page, tmp_path, "key")
        page.page.fill("#key-input", "not-the-key")
        page.page.click("#key-submit")
        expect(page.page.locator("#key-refused")).to_be_visible()  # asked again, saying why
        page.page.fill("#key-input", API_KEY)
        page.page.click("#key-submit")
        expect(dialog).to_be_hidden()
        expect(page.status("tiny")).to_have_text("unloaded")
        stored = page.page.evaluate("Object.values(sessionStorage)")
        assert stored == [API_KEY]

        page.page.reload()  # the same tab: the key is kept, not asked for again
        expect(page.status("other")).to_have_text("unloaded")
        expect(dialog).to_be_hidden()
        page.row("tiny").locator("button.load").click()
        expect(page.status("tiny")).to_have_text("loaded")


def test_hostile_model_ids_are_shown_as_text(tmp_path: Path, open_page: Any) -> None:
    from playwright.sync_api import expect

    folder = tmp_path / "models"
    folder.mkdir()
    hostile = "<img src=x onerror=alert(1)>"
    write_tiny_llama(folder / f"{hostile}.gguf")
    with running_router(folder, "--spares", "0") as router:
        page = open_page(router)
        model = page.page.locator("tr[data-model] .model-id")
        expect(model).to_have_text(hostile)
        assert page.page.locator("img").count() == 0


def test_status_changes_arrive_by_the_event_stream(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    """Changes made by someone else show up: while the event stream is open the page does not
    poll, so only an event can have told it."""
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        expect(page.page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.status("tiny")).to_have_text("unloaded")
        loaded = httpx.post(router.base_url + "/models/load", json={"model": "tiny"}, timeout=10)
        assert loaded.status_code == 200
        expect(page.status("tiny")).to_have_text("loaded")
        write_tiny_llama(two_models / "third.gguf", seed=2)
        rescanned = httpx.post(router.base_url + "/models/reload", json={}, timeout=10)
        assert rescanned.status_code == 200
        expect(page.status("third")).to_have_text("unloaded")
        _shot(page, tmp_path, "events")


def test_the_log_view_follows_a_model_and_filters_it(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        page.row("tiny").locator("button.logs").click()
        expect(page.page.locator("#logs-model")).to_have_value("tiny")
        expect(page.page.locator("#logs-status")).to_have_text("following")
        page.row("tiny").locator("button.load").click()
        expect(page.status("tiny")).to_have_text("loaded")
        lines = page.page.locator("#logs > div")
        expect(lines.filter(has_text="serving tiny")).to_have_count(1)  # the child's own line
        expect(lines.filter(has_text="[status_change] loaded")).to_have_count(1)
        _shot(page, tmp_path, "logs")

        page.page.fill("#logs-filter", "SERVING")
        expect(page.page.locator("#logs > div:visible")).to_have_count(1)
        assert lines.count() > 1  # the others are hidden, not gone
        page.page.fill("#logs-filter", "")
        expect(page.page.locator("#logs > div:visible")).to_have_count(lines.count())


def test_pin_button_pins_a_model_and_a_pin_made_elsewhere_shows_live(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with running_router(two_models, "--spares", "0") as router:
        page = open_page(router)
        expect(page.page.locator("#live")).to_have_attribute("data-state", "live")
        page.page.evaluate("window.sameDocument = true")
        pinned_tag = page.row("tiny").locator(".tag.pinned")
        expect(pinned_tag).to_have_count(0)
        page.row("tiny").locator("button.pin").click()
        expect(pinned_tag).to_have_text("pinned")
        expect(page.row("tiny").locator("button.pin")).to_have_text("Unpin")
        entry = next(
            e for e in httpx.get(router.base_url + "/models", timeout=10).json()["data"]
            if e["id"] == "tiny"
        )  # fmt: skip
        assert entry["pinned"] is True
        # Loaded, it shows its memory in words a person reads, and when it was last used.
        page.row("tiny").locator("button.load").click()
        expect(page.status("tiny")).to_have_text("loaded")
        expect(page.row("tiny").locator("td.memory")).to_have_text(re.compile(r"^\d+(\.\d)? MiB$"))
        expect(page.row("tiny").locator("td.last-used")).to_have_text(re.compile(r" ago$"))
        _shot(page, tmp_path, "pinned")

        # Someone else unpins it: only the model_pin event can tell the page (it does not
        # poll while its event stream is open).
        unpinned = httpx.post(
            router.base_url + "/models/pin", json={"model": "tiny", "pinned": False}, timeout=10
        )
        assert unpinned.status_code == 200
        expect(pinned_tag).to_have_count(0)
        expect(page.row("tiny").locator("button.pin")).to_have_text("Pin")
        assert page.page.evaluate("window.sameDocument") is True


def test_the_log_view_loses_and_repeats_no_line_at_the_seam(
    two_models: Path, open_page: Any, tmp_path: Path
) -> None:
    """Lines printed while the view subscribes (before its stream is subscribed: only in the
    recent lines) and while it reads the recent lines (in both the recent lines and the live
    stream) are each shown once. The router's answers are held back while they are printed."""
    from playwright.sync_api import Route, expect

    with running_router(two_models, "--spares", "0") as router:

        def status() -> str:
            models = httpx.get(router.base_url + "/models", timeout=10).json()["data"]
            value: str = next(e for e in models if e["id"] == "tiny")["status"]["value"]
            return value

        def change(action: str, goal: str) -> None:
            sent = httpx.post(f"{router.base_url}/models/{action}", json={"model": "tiny"})
            assert sent.status_code == 200
            for _ in range(WAIT_MS // 50):
                if status() == goal:
                    return
                page.page.wait_for_timeout(50)
            raise AssertionError(f"tiny is still {status()}, not {goal}")

        def while_subscribing(route: Route) -> None:
            change("load", "loaded")  # prints "serving tiny ..." before the stream exists
            route.continue_()

        def while_reading_recent(route: Route) -> None:
            change("unload", "unloaded")  # prints "stopping: ..." to the stream and the recent
            route.continue_()

        page = open_page(router)
        expect(page.status("tiny")).to_have_text("unloaded")
        page.page.route(re.compile(r"/models/sse\?logs=1"), while_subscribing, times=1)
        page.page.route(re.compile(r"/models/logs\?"), while_reading_recent, times=1)
        page.row("tiny").locator("button.logs").click()
        expect(page.page.locator("#logs-status")).to_have_text("following")
        lines = page.page.locator("#logs > div.line")
        assert lines.filter(has_text="serving tiny").count() == 1
        assert lines.filter(has_text="stopping:").count() == 1
        _shot(page, tmp_path, "logs-seam")
