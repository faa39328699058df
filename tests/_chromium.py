"""Open a local page in headless Chromium and report what a reader's browser sees.

Talks to Chromium through its DevTools protocol over ``--remote-debugging-pipe``
(NUL-separated JSON on file descriptors 3 and 4), so no websocket client is needed.
Collects console errors, uncaught exceptions, log errors (e.g. a file that failed to
load) and every network request; measures each <img> after the load event.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, TOKENDYN_CHROMIUM first; None if there is none."""
    env = os.environ.get("TOKENDYN_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, BINARIES) if p), None)


# What the page shows, measured inside it after the load event.
PROBE = """(() => {
  const imgs = [...document.images].map(i => ({src: i.currentSrc.slice(0, 40), complete: i.complete,
      naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
      width: i.getBoundingClientRect().width, height: i.getBoundingClientRect().height}));
  return {title: document.title,
          sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
          headings: [...document.querySelectorAll('h2')].map(h => h.textContent.trim()),
          images: imgs,
          scripts: document.scripts.length,
          tocShown: [...document.querySelectorAll('nav.toc')].some(n => getComputedStyle(n).display !== 'none'),
          stylesheets: [...document.querySelectorAll('link[rel=stylesheet]')].length,
          scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          text: document.body.innerText};
})()"""


def _high(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or more (the original closed)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


class Chromium:
    """One headless browser; use as a context manager."""

    def __init__(self, binary: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="tokendyn-chromium-")
        cmd_r, self._cmd_w = os.pipe()      # we write commands, Chromium reads them on fd 3
        self._res_r, res_w = os.pipe()      # Chromium writes replies on fd 4
        # numbered 10 and up, so that the redirections onto 3 and 4 cannot overwrite one another (bash, not
        # dash, reads descriptors above 9)
        cmd_r, res_w = (_high(fd) for fd in (cmd_r, res_w))
        # --no-sandbox: CI runs as root in a container; --disable-dev-shm-usage: containers' small /dev/shm
        args = ["--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--user-data-dir={self.profile}",
                "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{res_w}', binary, *args],
                                     pass_fds=(cmd_r, res_w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._res_r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._res_r], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply; events that arrive meanwhile are kept."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and ev.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev
            self.events.append(ev)

    def open(self, path: Path, width: int = 1280, height: int = 900, screenshot: Path | None = None,
             media: str = "") -> dict:
        """Load ``path`` in a fresh tab of the given size (``media="print"``: as printed); returns the
        probe's answer plus ``errors`` (console errors, exceptions, log errors) and ``requests``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}, session)
        self.send("Emulation.setEmulatedMedia", {"media": media}, session)
        self.events.clear()
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session)
        self.wait_event("Page.loadEventFired", session)
        probe = self.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session)
        result = probe["result"]["value"]
        if screenshot is not None:
            shot = self.send("Page.captureScreenshot", {"format": "png"}, session)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        mine = [e for e in self.events if e.get("sessionId") == session]
        errors = []
        for e in mine:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                errors.append(p["exceptionDetails"].get("text", "exception"))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(p["entry"].get("text", "error"))
            elif e["method"] == "Network.loadingFailed":
                errors.append(f"failed to load: {p.get('errorText')}")
        result["errors"] = errors
        result["requests"] = [e["params"]["request"]["url"] for e in mine if e["method"] == "Network.requestWillBeSent"]
        self.send("Target.closeTarget", {"targetId": target})
        return result
