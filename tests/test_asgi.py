"""plugins.asgi: the garbage-collection keeper of a server with many calls, and uvicorn's
WebSocket protocol with read-ahead (on a real loopback socket)."""

from __future__ import annotations

import gc
import socket
from typing import Any

import anyio
import pytest
import uvicorn
from websockets.asyncio.client import connect

from plugins.asgi import READ_AHEAD_MESSAGES, AsgiSocket, HeapKeeper, uvicorn_ws_protocol


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_heap_keeper_freezes_the_start_and_collects_when_idle() -> None:
    before = gc.get_threshold()
    keeper = HeapKeeper()
    keeper.start()
    try:
        assert gc.get_freeze_count() > 0  # what was loaded is out of the collector's reach
        assert gc.get_threshold()[:2] == before[:2]  # the young generations run as usual
        assert gc.get_threshold()[2] >= 1 << 30  # the old one only when the keeper says
        keeper.idle()
        assert keeper.collections == 0  # no call ran: nothing to do
        keeper.busy()
        cycle = _Cycle()
        gc.collect(1)  # alive: promoted to the old generation, which no longer runs by itself
        del cycle  # now garbage only the collector can free
        gc.collect(1)
        assert any(type(o) is _Cycle for o in gc.get_objects(generation=2))
        keeper.idle()
        assert keeper.collections == 1
        assert not any(type(o) is _Cycle for o in gc.get_objects())
    finally:
        keeper.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_uvicorn_gets_its_own_sans_io_protocol_with_read_ahead() -> None:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    protocol = uvicorn_ws_protocol()
    assert isinstance(protocol, type) and issubclass(protocol, WebSocketsSansIOProtocol)


@pytest.mark.anyio
async def test_a_client_that_outruns_the_app_is_held_back_then_served_in_full() -> None:
    """The app does not read for a while: uvicorn stops reading the socket once
    READ_AHEAD_MESSAGES wait, so the client's sends block (memory stays bounded); when the app
    reads again, every message arrives, in order."""
    reading = anyio.Event()
    got: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        sock = AsgiSocket(receive, send)
        assert await sock.accept()
        await reading.wait()
        while (message := await sock.receive()) is not None:
            got.append(str(message))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, ws=uvicorn_ws_protocol(), lifespan="off", log_level="warning",
                            ws_max_size=1 << 20)
    server = uvicorn.Server(config)
    big = "x" * 60_000
    count = 200  # 12 MB: far more than loopback's socket buffers hold
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [listener])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                await anyio.sleep(0.02)
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=1 << 20) as ws:
            sent = 0
            all_sent = anyio.Event()

            async def send_all() -> None:
                nonlocal sent
                for i in range(count):
                    await ws.send(f"{i:04d}{big}")
                    sent += 1
                all_sent.set()

            tg.start_soon(send_all)
            await anyio.sleep(1.0)
            assert READ_AHEAD_MESSAGES <= sent < count  # held back while the app did not read
            reading.set()
            with anyio.fail_after(10):
                await all_sent.wait()
            await ws.close()
        with anyio.fail_after(10):
            while len(got) < count:  # noqa: ASYNC110 - test polling what the app read
                await anyio.sleep(0.02)
        server.should_exit = True
    listener.close()
    assert [m[:4] for m in got] == [f"{i:04d}" for i in range(count)]


@pytest.mark.anyio
async def test_keeping_holds_the_policy_for_the_block_and_puts_it_back() -> None:
    before = gc.get_threshold()
    async with HeapKeeper().keeping() as keeper:
        assert gc.get_threshold()[2] >= 1 << 30 and gc.get_freeze_count() > 0
        keeper.busy()
        keeper.idle()
        assert keeper.collections == 1
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
