"""The web server over real loopback sockets (no browser, no engines): the page and its files,
the Origin check, the token, and bad input from one tab that never touches another."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from plugins.web import PageLine, WebApp, WebConfig, page_url, running_web_server
from plugins.web.server import STATIC_FILES
from tests.faults.support import eventually

pytestmark = pytest.mark.anyio

FRAME16 = bytes(320 * 2)  # 20 ms at 16 kHz


class CountingBot:
    """A tab handler that tells the page how many microphone frames it got, every 10."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed: list[str] = []

    async def __call__(self, line: PageLine) -> None:
        self.opened += 1
        frames = 0
        async for _frame in line.mic_frames():
            frames += 1
            if frames % 10 == 0:
                line.send_event({"type": "frames", "count": frames})
        self.closed.append(line.end_reason)


@asynccontextmanager
async def server(config: WebConfig | None = None) -> AsyncIterator[tuple[WebApp, CountingBot, str]]:
    bot = CountingBot()
    app = WebApp(bot, config or WebConfig())
    async with running_web_server(app) as url:
        yield app, bot, url


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


async def open_tab(url: str, token: str | None = None, **kw: Any) -> ClientConnection:
    ws = await websockets.connect(ws_url(url), origin=kw.pop("origin", url), **kw)  # type: ignore[arg-type]
    await ws.send(json.dumps({"type": "hello", "version": 1, "sample_rate": 16000, "token": token}))
    return ws


async def next_json(ws: ClientConnection, kind: str, limit: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(limit):
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == kind:
                result: dict[str, Any] = json.loads(message)
                return result


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def test_the_page_and_its_files_come_from_the_package_and_fetch_nothing_else() -> None:
    async with server() as (_app, _bot, url):
        status, headers, body = await anyio.to_thread.run_sync(fetch, url + "/")
        assert status == 200 and b'id="start"' in body and b'id="transcript"' in body
        assert "default-src 'self'" in headers["content-security-policy"]
        for name in set(STATIC_FILES) - {"index.html"}:
            status, _, data = await anyio.to_thread.run_sync(fetch, f"{url}/static/{name}")
            assert status == 200 and data
        status, _, _ = await anyio.to_thread.run_sync(fetch, url + "/static/..%2Fserver.py")
        assert status == 404
    for name in STATIC_FILES:
        text = resources.files("plugins.web").joinpath("static", name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), f"{name} links out"


async def test_a_socket_from_another_origin_is_refused() -> None:
    async with server() as (_app, bot, url):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await open_tab(url, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        ws = await open_tab(url)  # the page's own origin
        assert (await next_json(ws, "ready"))["sample_rate"] == 16000
        await ws.close()
        assert bot.opened == 1


async def test_bound_elsewhere_the_token_is_required() -> None:
    config = WebConfig(token="tok-123", require_origin=True)
    async with server(config) as (_app, bot, url):
        ws = await open_tab(url, token="wrong")
        error = await next_json(ws, "error")
        assert "token" in error["message"] and "tok-123" not in error["message"]
        with anyio.fail_after(5):
            await ws.wait_closed()
        assert ws.close_code == 1008
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(ws_url(url))  # no Origin at all
        ws = await open_tab(url, token="tok-123")
        await next_json(ws, "ready")
        await ws.close()
        assert bot.opened == 1
    assert page_url("10.0.0.5", 8000, tls=True, token="tok") == "https://10.0.0.5:8000/#token=tok"


async def test_bad_input_closes_only_the_tab_that_sent_it() -> None:
    async with server() as (app, bot, url):
        good = await open_tab(url)
        bad = await open_tab(url)
        await next_json(good, "ready")
        await next_json(bad, "ready")

        async def stream_good() -> None:
            for _ in range(60):
                await good.send(FRAME16)
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stream_good)
            await bad.send(bytes(100))  # wrong size
            error = await next_json(bad, "error")
            assert "expected 640" in error["message"]
            await bad.send("this is text where audio is expected")
            assert "text where audio" in (await next_json(bad, "error"))["message"]
            for _ in range(200):  # a flood, then garbage past the limit
                await bad.send(bytes(7))
            with anyio.fail_after(5):
                await bad.wait_closed()
            assert bad.close_code == 1008 and "frame_size" in (bad.close_reason or "")
            counted = await next_json(good, "frames", limit=10)
            assert counted["count"] >= 10
        await good.close()
        assert await eventually(lambda: len(bot.closed) == 2, limit=5)
        assert "the page closed" in bot.closed
        good_rec = [r for r in app.finished if not r.violations]
        assert good_rec and good_rec[0].frames_in == 60, "every frame of the good tab arrived"


async def test_closing_a_tab_ends_its_conversation_and_a_flood_is_dropped() -> None:
    async with server() as (app, bot, url):
        ws = await open_tab(url)
        await next_json(ws, "ready")
        for _ in range(60):  # 1.2 s of audio at once: more than real time allows
            await ws.send(FRAME16)
        assert "faster than real time" in (await next_json(ws, "error"))["message"]
        await ws.close()
        assert await eventually(lambda: bot.closed == ["the page closed"], limit=5)
        assert await eventually(lambda: not app.live, limit=5)
        (record,) = app.finished
        assert record.violations.get("flood", 0) > 0 and record.frames_in < 60
