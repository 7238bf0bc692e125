"""Open a page in real headless Chromium (Debian's `chromium`) over the DevTools protocol.

A small client: start the browser with a fresh profile and `--remote-debugging-port=0`, read the
port it chose from `DevToolsActivePort`, attach to its page over a WebSocket (websocket-client),
navigate, wait for the load event, and return what the page reports: the console errors and
uncaught exceptions seen while loading, every <img>'s natural size, the text it shows, and a
screenshot.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--remote-allow-origins=*",
    "--window-size=1280,2000",
)
IMAGES_JS = (
    "JSON.stringify(Array.from(document.images).map(i => "
    "({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"
)


@dataclass
class PageResult:
    title: str
    images: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    text: str = ""  # document.body.innerText: what a reader sees


def chromium_binary() -> str:
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError(
            "Debian's `chromium` is not installed: `make test` installs it (apt-get install chromium)"
        )
    return path


class _Session:
    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout}s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            out.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
    return out


def open_page(path: Path, timeout: float = 60.0) -> PageResult:
    """Load `path` (a local file) in headless Chromium and report on it."""
    profile = Path(tempfile.mkdtemp(prefix="lorafleet-chromium-"))
    proc = subprocess.Popen(
        [chromium_binary(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            pages = [t for t in json.load(resp) if t.get("type") == "page"]
        session = _Session(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            session.call(f"{domain}.enable")
        session.call("Page.navigate", url=path.resolve().as_uri())
        session.wait_for("Page.loadEventFired", timeout)
        images = json.loads(
            session.call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)["result"]["value"]
        )
        title = session.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"][
            "value"
        ]
        text = session.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)[
            "result"]["value"]
        shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return PageResult(
            title=title,
            images=images,
            errors=_errors(session.events),
            screenshot=base64.b64decode(shot["data"]),
            text=text,
        )
    finally:
        if session is not None:
            session.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
