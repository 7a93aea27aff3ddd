"""What the ASGI servers of `plugins.twilio` (phone calls) and `plugins.web` (a browser tab) share:
message sockets over a Starlette WebSocket or a raw ASGI scope, loopback addresses, listening
sockets made so that asyncio turns Nagle's algorithm off, uvicorn's WebSocket protocol with
read-ahead, and `HeapKeeper`, which keeps full garbage collections off live calls. Needs the
``phone`` extra (starlette, uvicorn)."""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = [
    "LOOPBACK_HOSTS",
    "AsgiSocket",
    "AsgiWebSocketApp",
    "HeapKeeper",
    "StarletteSocket",
    "loopback",
    "tcp_socket",
    "uvicorn_ws_protocol",
]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def tcp_socket(host: str) -> socket.socket:
    """A TCP socket for ``host``, made with IPPROTO_TCP: asyncio sets TCP_NODELAY only on such
    sockets, and with Nagle on, a small frame after a pause waited for the peer's ACK (the
    frame after each phone mark came 11-15 ms late)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)


def _payload(message: Mapping[str, Any]) -> str | bytes:
    """A ``websocket.receive`` message's text, or its bytes."""
    text = message.get("text")
    if text is not None:
        return str(text)
    data = message.get("bytes")
    return bytes(data) if data is not None else b""


ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]


class AsgiSocket:
    """A message socket (`receive` / `send_text` / `send_bytes` / `close`) on a WebSocket
    scope's raw ASGI ``receive`` and ``send``: a disconnect becomes None from `receive`, and
    sends after it do nothing. The phone server uses it without Starlette's `WebSocket` in
    between (a call exchanges 50 to 100 messages a second)."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send_message = send
        self._closed = False

    async def accept(self) -> bool:
        """Take the handshake (``websocket.connect``) and accept it; False if the peer left
        first. Cancelling stops waiting."""
        message = await self._receive()
        if message["type"] != "websocket.connect":
            self._closed = True
            return False
        await self._send_message({"type": "websocket.accept"})
        return True

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer is gone. Cancelling stops waiting."""
        if self._closed:
            return None
        try:
            message = await self._receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True
            return None
        if message["type"] != "websocket.receive":
            self._closed = True
            return None
        return _payload(message)

    async def send_text(self, text: str) -> None:
        """Send a text message (nothing once closed). Cancelling may leave it unsent."""
        await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message (nothing once closed). Cancelling may leave it unsent."""
        await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: ASGIMessage) -> None:
        if self._closed:
            return
        try:
            await self._send_message(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (once). Cancelling may leave it unsent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._send_message({"type": "websocket.close", "code": code, "reason": reason})
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass


class StarletteSocket(AsgiSocket):
    """The message socket over an accepted Starlette `WebSocket`: its raw ASGI ``receive`` and
    ``send``, with Starlette's state checks (a disconnect becomes None from `receive`, and
    sends after it do nothing)."""

    def __init__(self, ws: WebSocket) -> None:
        super().__init__(ws.receive, ws.send)


class AsgiWebSocketApp:
    """A WebSocket endpoint as a raw ASGI app, for a Starlette `WebSocketRoute` (which hands a
    class instance the scope as it is, and wraps a function in its `WebSocket` session): calls
    ``serve(socket)`` with an `AsgiSocket` that still has its handshake to take."""

    def __init__(self, serve: Callable[[AsgiSocket], Awaitable[None]]) -> None:
        self._serve = serve

    async def __call__(self, scope: ASGIMessage, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            raise RuntimeError(f"a WebSocket endpoint got a {scope['type']!r} request")
        await self._serve(AsgiSocket(receive, send))


class HeapKeeper:
    """Keeps Python's garbage collector from stalling the live calls of a server process.

    A full collection walks every object the process holds, and with many calls live it
    stalls the event loop, and every call's audio with it: 55-70 ms with 75 phone calls on
    the framework alone (`bench.phone_calls`, whose callers then saw gaps of 60-150 ms in all
    calls at once). So the server:

    - at `start` (loaded, not yet serving) collects once and freezes what is alive (modules,
      engines, its own state): no later collection walks those again;
    - lets the collector run its young generations as usual (a few ms), but runs the full
      collection itself: whenever no call is live (`idle`), and, if the server is never idle,
      once every `every` seconds at the latest (`run`), which is then one stall of that size.

    Cyclic garbage that lives long enough to reach the old generation waits for one of those;
    refcounting frees everything else at once, as always. `stop` puts the collector back.
    The settings are the process's: one keeper per process (`serve` starts one; so does
    `bench.phone_calls`, as it serves).
    """

    def __init__(self, every: float = 600.0) -> None:
        self.every = every
        self.collections = 0  # full collections run by the keeper
        self._thresholds: tuple[int, int, int] | None = None
        self._dirty = False
        self._last = 0.0

    def start(self) -> None:
        if self._thresholds is not None:
            return
        gc.collect()
        gc.freeze()
        self._thresholds = gc.get_threshold()
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, 1 << 30)  # the old generation: only when we say
        self._last = time.monotonic()

    def busy(self) -> None:
        """A call started: there will be garbage to collect when the server is idle."""
        self._dirty = True

    def idle(self) -> None:
        """No call is live: a good moment for the full collection, if calls ran since."""
        if self._thresholds is not None and self._dirty:
            self._collect()

    async def run(self) -> None:
        """The full collection every `every` seconds while calls keep the server busy, for as
        long as it serves. Cancelling stops it."""
        while True:
            await anyio.sleep(max(1.0, self._last + self.every - time.monotonic()))
            if self._thresholds is not None and time.monotonic() - self._last >= self.every:
                self._collect()

    @asynccontextmanager
    async def keeping(self) -> AsyncIterator[HeapKeeper]:
        """`start`, `run` in the background, and `stop` on leaving: the policy for as long
        as a server serves inside the block. Cancelling the block stops it too."""
        self.start()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.run)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.stop()

    def stop(self) -> None:
        """The collector as it was: its thresholds back, the frozen objects collectable."""
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            gc.unfreeze()
            self._thresholds = None

    def _collect(self) -> None:
        gc.collect()
        self.collections += 1
        self._dirty = False
        self._last = time.monotonic()


READ_AHEAD_MESSAGES = 32
"""How many received messages uvicorn may hold for the app before it stops reading the socket."""


def uvicorn_ws_protocol() -> Any:
    """The WebSocket protocol for uvicorn's ``ws`` setting: its sans-I/O one (the `websockets`
    package's state machine), but it stops reading the socket only when `READ_AHEAD_MESSAGES`
    wait for the app, instead of after every message until the app takes it.

    uvicorn's own class pauses and resumes the socket's reading around each message: two
    epoll calls per 20 ms phone frame, about a twentieth of a phone server's CPU. Memory
    stays bounded the same way. With a uvicorn that lacks the attributes this relies on,
    its own class is used (the name ``"websockets-sansio"``).
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol as Base,
        )
    except ImportError:
        return "websockets-sansio"
    if not all(hasattr(Base, name) for name in ("send_receive_event_to_app", "receive")):
        return "websockets-sansio"

    class ReadAheadProtocol(Base):
        def send_receive_event_to_app(self) -> None:
            paused = self.read_paused
            self.read_paused = True  # the base pauses when this is False: it decides below
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = paused
            if not paused and self.queue.qsize() >= READ_AHEAD_MESSAGES:
                self.read_paused = True
                self.transport.pause_reading()

    return ReadAheadProtocol
