"""A headless Chromium driven over the DevTools protocol (websocket-client, no Playwright):
open a page, evaluate JavaScript, move the mouse, click, take a screenshot, and collect
the console errors and uncaught exceptions the page produced.

    with Browser.start() as browser:
        browser.open(path)
        browser.hover(".head-view .tok.query[data-index='2']")
        assert browser.evaluate("document.title") == "..."
        assert not browser.errors

Chromium is Debian's `chromium` package (scripts/test.sh installs it); $CHROMIUM names
another binary.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_SECONDS = 30.0
CALL_TIMEOUT_SECONDS = 30.0


def chromium_path() -> str:
    """The Chromium binary: $CHROMIUM, else the first of CANDIDATES on PATH; RuntimeError
    with how to install it when there is none."""
    named = os.environ.get("CHROMIUM")
    found = named if named else next((path for path in map(shutil.which, CANDIDATES) if path), None)
    if not found or not Path(found).exists():
        raise RuntimeError("no Chromium found: install Debian's `chromium` package (scripts/test.sh does: "
                           "apt-get install chromium) or set $CHROMIUM to a Chromium/Chrome binary")
    return found


class Browser:
    """One headless Chromium process and a websocket to its first page."""

    def __init__(self, process: subprocess.Popen[bytes], profile: tempfile.TemporaryDirectory[str],
                 socket: websocket.WebSocket) -> None:
        self._process = process
        self._profile = profile
        self._socket = socket
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []

    @classmethod
    def start(cls, width: int = 1400, height: int = 1000) -> Browser:
        profile = tempfile.TemporaryDirectory(prefix="introspect-chromium-", ignore_cleanup_errors=True)
        process = subprocess.Popen(
            [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = Path(profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        port = None
        while time.monotonic() < deadline and process.poll() is None:
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if lines and lines[0].strip().isdigit():
                port = int(lines[0])
                break
            time.sleep(0.05)
        if port is None:
            process.kill()
            process.wait()
            profile.cleanup()
            raise RuntimeError(f"Chromium did not open its DevTools port (exit code {process.poll()})")
        socket = cls._page_socket(port, deadline)
        browser = cls(process, profile, socket)
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
        return browser

    @staticmethod
    def _page_socket(port: int, deadline: float) -> websocket.WebSocket:
        from urllib.request import urlopen

        while True:
            try:
                with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = json.load(response)
                pages = [target for target in targets if target.get("type") == "page"]
                if pages:
                    return websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=CALL_TIMEOUT_SECONDS,
                                                       suppress_origin=True)
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium has no page target")
            time.sleep(0.05)

    # ---- protocol ---------------------------------------------------------------------

    def _record(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])]
            self.errors.append("console." + params["type"] + ": " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + params["entry"].get("text", ""))
        elif method == "Page.javascriptDialogOpening":
            self.errors.append("dialog: " + params.get("message", ""))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Sends one command and returns its result (events that arrive meanwhile are
        recorded); RuntimeError on a protocol error."""
        self._next_id += 1
        ident = self._next_id
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def wait_for_event(self, method: str, timeout: float = CALL_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Waits for the next event named `method` that has not been seen yet."""
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv())
            self._record(message)
            if message.get("method") == method:
                self.events.remove(message)
                return message
        raise TimeoutError(f"no {method} within {timeout} s")

    # ---- what the tests do -------------------------------------------------------------

    def open(self, path: str | os.PathLike[str]) -> None:
        """Loads a local file and waits for its load event."""
        self.events.clear()
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-serialisable); RuntimeError when it throws."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def center(self, selector: str, fraction_x: float = 0.5, fraction_y: float = 0.5) -> tuple[float, float]:
        """Scrolls the first element matching `selector` into view and returns the point at
        (fraction_x, fraction_y) of its box, in viewport pixels."""
        box = self.evaluate(
            f"(() => {{ const node = document.querySelector({json.dumps(selector)});"
            " if (!node) return null; node.scrollIntoView({block: 'center', inline: 'center'});"
            " const r = node.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()"
        )
        if box is None:
            raise LookupError(f"no element matches {selector}")
        left, top, width, height = box
        return left + width * fraction_x, top + height * fraction_y

    def move(self, x: float, y: float) -> None:
        """Moves the mouse to (x, y), firing mouseover/mouseenter/mousemove as a user would."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="none")

    def hover(self, selector: str, fraction_x: float = 0.5, fraction_y: float = 0.5) -> None:
        """Moves the mouse onto an element (at a fraction of its box)."""
        self.move(*self.center(selector, fraction_x, fraction_y))

    def click(self, selector: str) -> None:
        """A left click in the middle of an element."""
        x, y = self.center(selector)
        self.move(x, y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        try:
            self._socket.close()
        finally:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._profile.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
