"""Headless Chromium (the Debian package) driven over the DevTools protocol: open a page, click,
read its text, take a screenshot. Only what the UI checks need; no browser download."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from .conftest import free_port


class Browser:
    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise AssertionError("chromium is not installed (./dev.sh test installs the Debian package)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--window-size={width},{height}", f"--remote-debugging-port={self.port}",
             "--remote-allow-origins=*", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)
        self.ws: ClientConnection = self._connect()

    def _connect(self) -> ClientConnection:
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                page = next(p for p in pages if p.get("type") == "page")
                return connect(page["webSocketDebuggerUrl"], max_size=64 << 20, open_timeout=10)
            except (httpx.HTTPError, StopIteration, OSError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.3)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return str(self.eval("document.body ? document.body.innerText : ''") or "")

    def wait_text(self, *needles: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            t = self.text()
            if all(n in t for n in needles):
                return t
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {needles!r}; it shows: {t[-1500:]}")
            time.sleep(0.3)

    def click_text(self, text: str) -> bool:
        """Click the innermost visible element whose own text is ``text`` (a tab, a button)."""
        js = ("(() => { const want = " + json.dumps(text) + ";"
              " const els = [...document.querySelectorAll('button, a, [role=tab], li, span, div')]"
              "   .filter(e => e.offsetParent !== null && e.textContent.trim() === want);"
              " const el = els.find(e => ![...e.children].some(c => c.textContent.trim() === want)) || els[0];"
              " if (!el) return false; el.click(); return true; })()")
        return bool(self.eval(js))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
