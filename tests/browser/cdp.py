"""A small Chrome DevTools Protocol client over `websockets`, and a headless Chromium to drive.

    async with Chromium(fake_mic="question.wav") as browser:
        page = await browser.open_page(url)
        await page.evaluate("document.getElementById('start').click()")
        png = await page.screenshot()

`Chromium` starts ``/usr/bin/chromium --headless=new --remote-debugging-port=0`` with a fake
microphone (``--use-fake-device-for-media-stream --use-file-for-fake-audio-capture=WAV``,
permission granted by ``--use-fake-ui-for-media-stream``, autoplay allowed, ``--no-sandbox`` as
root) in a throw-away profile, reads the port from ``DevToolsActivePort`` and kills the browser
(its whole process group) on exit. `Page` collects console messages, JavaScript exceptions and
WebSocket frames the page received, from the protocol's events.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import websockets
from websockets.asyncio.client import ClientConnection

CHROMIUM = "/usr/bin/chromium"


class CDPError(RuntimeError):
    pass


@dataclass
class Page:
    """One tab, attached through a flattened session on the browser's socket."""

    browser: Chromium
    session_id: str
    target_id: str
    console: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    ws_frames_received: int = 0
    ws_binary_received: int = 0

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """The JSON value of ``expression`` in the page (exceptions raise `CDPError`)."""
        reply = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
        )
        if "exceptionDetails" in reply:
            raise CDPError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, limit: float, poll: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy (for at most ``limit`` seconds); its value.
        Raises TimeoutError."""
        with anyio.fail_after(limit):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await anyio.sleep(poll)

    async def screenshot(self) -> bytes:
        reply = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(reply["data"])

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.exceptions.append(str(text))
        elif method == "Runtime.consoleAPICalled":
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") == "error":
                self.exceptions.append(f"console.error: {text}")
        elif method == "Network.webSocketFrameReceived":
            self.ws_frames_received += 1
            if params.get("response", {}).get("opcode") == 2:
                self.ws_binary_received += 1


class Chromium:
    """A headless Chromium with a fake microphone, driven over the DevTools protocol."""

    def __init__(
        self,
        fake_mic: str | Path | None = None,
        *,
        loop_mic: bool = False,
        grant: bool = True,
        fake_device: bool = True,
    ) -> None:
        self.fake_mic = fake_mic
        self.loop_mic = loop_mic
        self.grant = grant  # False: no fake permission prompt (headless then refuses)
        self.fake_device = fake_device  # False: no microphone at all (headless has none)
        self._proc: anyio.abc.Process | None = None
        self._ws: ClientConnection | None = None
        self._next_id = 0
        self._waiting: dict[int, anyio.Event] = {}
        self._replies: dict[int, dict[str, Any]] = {}
        self._pages: dict[str, Page] = {}
        self._profile: str | None = None

    def flags(self, profile: str) -> list[str]:
        flags = [
            "--headless=new",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--mute-audio",
            # a name other than localhost for this machine, to see a page as a LAN peer would
            "--host-resolver-rules=MAP voxloop.test 127.0.0.1",
            "about:blank",
        ]
        if not self.grant:
            flags.remove("--use-fake-ui-for-media-stream")
        if not self.fake_device:
            flags.remove("--use-fake-device-for-media-stream")
        if self.fake_mic is not None:
            suffix = "" if self.loop_mic else "%noloop"
            flags.insert(-1, f"--use-file-for-fake-audio-capture={self.fake_mic}{suffix}")
        if os.geteuid() == 0:
            flags.insert(-1, "--no-sandbox")
        return flags

    async def __aenter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="voxloop-chromium-")
        self._proc = await anyio.open_process(
            [CHROMIUM, *self.flags(self._profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        with anyio.fail_after(20):
            while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
                if self._proc.returncode is not None:
                    raise CDPError(f"chromium exited at start ({self._proc.returncode})")
                await anyio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=64 << 20)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with anyio.move_on_after(3, shield=True):  # let it close (and reap) its helpers
                await self.send("Browser.close")
                if self._proc is not None:
                    await self._proc.wait()
        except (CDPError, OSError, websockets.ConnectionClosed):
            pass
        try:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            if self._ws is not None:
                await self._ws.close()
        finally:
            if self._proc is not None:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)  # the browser and its helpers
                except ProcessLookupError:
                    pass
                with anyio.move_on_after(10, shield=True):
                    await self._proc.wait()
            if self._profile is not None:
                shutil.rmtree(self._profile, ignore_errors=True)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                if "id" in message:
                    self._replies[message["id"]] = message
                    waiting = self._waiting.pop(message["id"], None)
                    if waiting is not None:
                        waiting.set()
                else:
                    page = self._pages.get(message.get("sessionId", ""))
                    if page is not None:
                        page._event(message["method"], message.get("params", {}))
        except websockets.ConnectionClosed:
            pass  # the browser went away (closed, or killed)
        finally:
            for waiting in self._waiting.values():  # nothing more will answer
                waiting.set()
            self._waiting.clear()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        mid = self._next_id
        message: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        done = self._waiting[mid] = anyio.Event()
        await self._ws.send(json.dumps(message))
        with anyio.fail_after(30):
            await done.wait()
        reply = self._replies.pop(mid, None)
        if reply is None:
            raise CDPError(f"{method}: the browser closed the DevTools connection")
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open_page(self, url: str, *, width: int = 900, height: int = 640) -> Page:
        """A new tab at ``url``, with Runtime, Network and Page events collected."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"], target["targetId"])
        self._pages[page.session_id] = page
        for domain in ("Runtime", "Network", "Page"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.send("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete'", limit=10)
        return page

    async def close_page(self, page: Page) -> None:
        await self.send("Target.closeTarget", {"targetId": page.target_id})
        self._pages.pop(page.session_id, None)


@asynccontextmanager
async def chromium(fake_mic: str | Path | None = None) -> AsyncIterator[Chromium]:
    async with Chromium(fake_mic) as browser:
        yield browser
