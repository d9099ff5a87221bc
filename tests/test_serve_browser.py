"""`temde serve` in a real browser: headless Chromium (Debian's `chromium`) opens the page, a query is typed and
submitted, result thumbnails appear and load, a click on a result shows its captions.

Chromium is driven over `--remote-debugging-pipe`: the DevTools protocol as NUL-terminated JSON on file
descriptors 3 (commands in) and 4 (answers out), so no driver package is needed. Skipped where Chromium is not
installed, unless TEMDE_REQUIRE_BROWSER=1 (CI sets it: there a missing browser is a failure, not a skip).
"""
from __future__ import annotations

import html.parser
import json
import os
import select
import shutil
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from test_serve import build_tiny_index, get_json, serving

from temde.serve import open_engine

pytestmark = pytest.mark.browser
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--window-size=1280,900"]


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("TEMDE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " and TEMDE_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    index = build_tiny_index(tmp_path_factory.mktemp("browser"))
    with serving(open_engine(index, rerank=6, log=lambda *_: None)) as server:
        yield server


class DevTools:
    """Just enough of the DevTools protocol over a pipe: commands, evaluation, typing, clicking."""

    def __init__(self, executable: str, profile: str):
        to_browser, from_browser = os.pipe(), os.pipe()
        ends = (to_browser[0], from_browser[1])  # the browser's ends: they become its fds 3 and 4
        # A tiny Python trampoline puts them there and execs Chromium (dup2 in our own process could clobber
        # fds 3 and 4 that pytest is using; a shell's `3<&N` is single-digit only in dash).
        trampoline = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                     "os.execv(sys.argv[3], sys.argv[3:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", trampoline, *map(str, ends), executable, *FLAGS, "--remote-debugging-pipe",
             f"--user-data-dir={profile}"], pass_fds=ends, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in ends:
            os.close(fd)
        self.write_fd, self.read_fd = to_browser[1], from_browser[0]
        self.buffer = b""
        self.next_id = 0
        self.session = None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.write_fd)
        os.close(self.read_fd)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise ConnectionError("Chromium closed the pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, timeout: float = 20) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._message(deadline)
            if answer.get("id") == self.next_id:  # everything else is an event we did not ask about
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"waited {timeout} s for {expression}")

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the first element matching `selector`."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                            f"e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); "
                            f"return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def type(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, **({"text": "\r"} if kind == "keyDown"
                                                                                 else {})})


class Cards(html.parser.HTMLParser):
    """The result cards of a dumped DOM: (data-id, img src, img data-loaded) in page order."""

    def __init__(self):
        super().__init__()
        self.cards: list[list] = []
        self.in_results = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "results":
            self.in_results = True
        elif attrs.get("id") == "detail-similar":
            self.in_results = False
        if self.in_results and tag == "a" and "card" in attrs.get("class", ""):
            self.cards.append([int(attrs["data-id"]), None, None])
        if self.in_results and tag == "img" and self.cards:
            self.cards[-1][1:] = [attrs.get("src"), attrs.get("data-loaded")]


def test_typed_query_shows_thumbnails_and_a_click_shows_captions(chromium, site, tmp_path):
    browser = DevTools(chromium, str(tmp_path / "profile"))
    try:
        browser.send("Page.navigate", {"url": site.url})
        browser.wait_for("document.getElementById('info')?.textContent.includes('images')")
        browser.click("#q")
        browser.type("green tree")
        browser.press_enter()
        count = browser.wait_for("document.body.dataset.results")
        # every thumbnail is on the page, in the API's order, and has really loaded (decoded pixels)
        browser.wait_for("[...document.querySelectorAll('#results img.thumb')]"
                         ".every(img => img.complete && img.naturalWidth > 0)")
        ids = browser.evaluate("[...document.querySelectorAll('#results .card')].map(a => Number(a.dataset.id))")
        _, api = get_json(site, "/api/search?q=green%20tree&k=24")
        assert int(count) == len(ids) == 24 and ids == [hit["id"] for hit in api["results"]]
        assert browser.evaluate("location.search") == "?q=green%20tree"  # the link shares this search
        assert "re-rank" in browser.evaluate("document.getElementById('timing').textContent")
        # a click on the first result: its captions (image -> text) and similar images
        browser.click("#results .card")
        browser.wait_for("document.body.dataset.detail")
        captions = browser.evaluate("[...document.querySelectorAll('#detail-captions li > span:first-child')]"
                                    ".map(s => s.textContent)")
        _, image = get_json(site, f"/api/image/{ids[0]}?k=10")
        assert captions == [hit["caption"] for hit in image["results"]]
        similar = browser.evaluate("[...document.querySelectorAll('#detail-similar .card')].map(a => a.dataset.id)")
        assert [int(i) for i in similar] == [hit["id"] for hit in image["similar"]]
        assert browser.evaluate("location.search") == f"?q=green+tree&image={ids[0]}"
    finally:
        browser.close()


def test_shared_link_opens_with_the_search_done(chromium, site, tmp_path):
    """`/?q=TEXT` as a person would open a shared link: Chromium's own --dump-dom, after the page's script ran."""
    url = f"{site.url}?q={quote('red dog')}"
    dom = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
    parser = Cards()
    parser.feed(dom)
    _, api = get_json(site, "/api/search?q=red%20dog&k=24")
    assert [card[0] for card in parser.cards] == [hit["id"] for hit in api["results"]]
    assert all(src == f"/thumb/{i}" and loaded == "1" for i, src, loaded in parser.cards)
    assert "<title>temde: red dog</title>" in dom
