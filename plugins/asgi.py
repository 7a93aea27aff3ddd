"""What the ASGI servers of `plugins.twilio` (phone calls) and `plugins.web` (a browser tab) share:
a message socket over a Starlette WebSocket, loopback addresses, and listening sockets made so
that asyncio turns Nagle's algorithm off. Needs the ``phone`` extra (starlette)."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["LOOPBACK_HOSTS", "StarletteSocket", "loopback", "tcp_socket"]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
T = TypeVar("T")


def loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def tcp_socket(host: str) -> socket.socket:
    """A TCP socket for ``host``, made with IPPROTO_TCP: asyncio sets TCP_NODELAY only on such
    sockets, and with Nagle on, a small frame after a pause waited for the peer's ACK (the
    frame after each phone mark came 11-15 ms late)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)


class StarletteSocket:
    """A message socket (`receive` / `send_text` / `send_bytes` / `close`) over a Starlette
    WebSocket: a disconnect becomes None from `receive`, and sends after it do nothing."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._closed = False

    async def receive(self) -> str | bytes | None:
        """The next message, or None once the peer is gone. Cancelling stops waiting."""
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            self._closed = True
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data) if data is not None else b""

    async def send_text(self, text: str) -> None:
        """Send a text message (nothing once closed). Cancelling may leave it unsent."""
        await self._send(self._ws.send_text, text)

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message (nothing once closed). Cancelling may leave it unsent."""
        await self._send(self._ws.send_bytes, data)

    async def _send(self, send: Callable[[T], Awaitable[None]], payload: T) -> None:
        if self._closed:
            return
        try:
            await send(payload)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` (once). Cancelling may leave it unsent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._ws.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
