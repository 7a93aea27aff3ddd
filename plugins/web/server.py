"""The web server: the page, its static files and its audio WebSocket on one port (ASGI).

Routes:
- ``GET /``: the page (plugins/web/static/index.html); ``GET /static/{name}``: its script,
  worklet and style sheet, shipped in the package (nothing is fetched from the network).
- ``/ws``: the tab's WebSocket; each connection is one conversation, served by `tab.run_tab`
  with the pluggable `TabHandler`.
- ``GET /healthz``: ``{"status": "ok", "tabs": n}``.

Security. By default the server binds 127.0.0.1. Bound elsewhere it requires a token: the
page reads it from its URL's fragment (``/#token=...``, never sent in an HTTP request, so it
stays out of access logs and Referer headers) and presents it in its hello message; a wrong or
missing token closes the socket (1008). A WebSocket whose ``Origin`` is not this server's own
is refused before the handshake completes (HTTP 403), on loopback too: any web page the user
visits could otherwise open ws://127.0.0.1:8000 and listen through the agent. Browsers grant
the microphone only in a secure context (https, or http on localhost), so across a LAN serve
https with `WebConfig.tls_cert` / `tls_key`; the page says so plainly when it was opened over
plain http from another machine.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from plugins.asgi import StarletteSocket, loopback, tcp_socket, uvicorn_ws_protocol

from .tab import TabHandler, TabRecord, TabSettings, run_tab

log = logging.getLogger("voxloop.web")

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page may load only its own files; no inline script, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def new_token() -> str:
    return secrets.token_urlsafe(18)


@dataclass(slots=True)
class WebConfig:
    """How the web server presents itself. `token` is never shown in a repr."""

    token: str | None = field(default=None, repr=False)
    max_tabs: int = 32
    tab: TabSettings = field(default_factory=TabSettings)
    #: extra origins a page may come from (e.g. behind a reverse proxy), as scheme://host:port
    allowed_origins: tuple[str, ...] = ()
    require_origin: bool = False


def _static(name: str) -> bytes:
    return resources.files("plugins.web").joinpath("static", name).read_bytes()


class WebApp:
    """The web server as an ASGI app (`asgi`), with its live tabs."""

    def __init__(self, handler: TabHandler, config: WebConfig | None = None) -> None:
        self.handler = handler
        self.config = config or WebConfig()
        self.live: dict[int, TabRecord] = {}
        self.finished: deque[TabRecord] = deque(maxlen=1000)
        self._next_id = 0
        self._idle = anyio.Event()
        self._idle.set()
        self.asgi = Starlette(
            routes=[
                Route("/", self._page, methods=["GET"]),
                Route("/static/{name}", self._file, methods=["GET"]),
                Route("/healthz", self._health, methods=["GET"]),
                WebSocketRoute("/ws", self._socket),
            ]
        )

    async def wait_idle(self) -> None:
        """Wait until no tab is live. Cancelling stops waiting only."""
        await self._idle.wait()

    async def _page(self, request: Request) -> Response:
        return self._respond("index.html")

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES or name == "index.html":
            return PlainTextResponse("not found", status_code=404)
        return self._respond(name)

    def _respond(self, name: str) -> Response:
        headers = {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        if name == "index.html":
            headers["Content-Security-Policy"] = CSP
        return Response(_static(name), media_type=STATIC_FILES[name], headers=headers)

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "tabs": len(self.live)})

    def origin_refusal(self, origin: str | None, host: str | None, scheme: str) -> str | None:
        """None if a socket from ``origin`` may connect to this server (reached as ``host``),
        else why not."""
        if origin is None:
            return "no Origin header" if self.config.require_origin else None
        if origin in self.config.allowed_origins:
            return None
        parts = urlsplit(origin)
        own = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        if parts.scheme == own and host is not None and parts.netloc.lower() == host.lower():
            return None
        return f"a page from {origin!r} may not use this server"

    async def _socket(self, ws: WebSocket) -> None:
        refusal = self.origin_refusal(
            ws.headers.get("origin"), ws.headers.get("host"), ws.url.scheme
        )
        if refusal is not None:
            log.warning("web socket refused: %s", refusal)
            await ws.close(1008, refusal[:120])  # before accept: the handshake gets HTTP 403
            return
        await ws.accept()
        sock = StarletteSocket(ws)
        if len(self.live) >= self.config.max_tabs:
            await ws.send_text('{"type":"error","message":"too many tabs are open on this server"}')
            await sock.close(1013, "too many tabs")
            return
        self._next_id += 1
        record = TabRecord(tab_id=self._next_id)
        self.live[record.tab_id] = record
        if self._idle.is_set():
            self._idle = anyio.Event()
        try:
            await run_tab(
                sock, self.handler, settings=self.config.tab, token=self.config.token,
                record=record,
            )
        finally:
            del self.live[record.tab_id]
            self.finished.append(record)
            if not self.live:
                self._idle.set()
            log.info("tab %d ended: %s", record.tab_id, record.end_reason)


def uvicorn_config(app: WebApp, host: str, port: int, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app.asgi, host=host, port=port, ws=uvicorn_ws_protocol(), lifespan="off",
        ws_max_size=64 * 1024, log_level="warning", timeout_graceful_shutdown=3, **kwargs)


def page_url(host: str, port: int, *, tls: bool, token: str | None) -> str:
    """The address to open (the token in the fragment). For a wildcard bind, this machine's
    address as its name resolves (what another machine on the LAN would open)."""
    shown = host
    if host in ("0.0.0.0", "::", ""):
        try:
            shown = socket.gethostbyname(socket.gethostname())
        except OSError:
            shown = "127.0.0.1"
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"{'https' if tls else 'http'}://{shown}:{port}/"
    return url + (f"#token={token}" if token else "")


async def serve(
    app: WebApp,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> None:
    """Run the web server until SIGINT/SIGTERM (uvicorn's handling; live tabs are closed).
    Cancelling stops it at once."""
    import uvicorn

    extra: dict[str, Any] = {}
    if tls_cert:
        extra = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
    server = uvicorn.Server(uvicorn_config(app, host, port, **extra))
    await server.serve()


@asynccontextmanager
async def running_web_server(
    app: WebApp, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `app` in the background; yields its base URL (``http://host:port``). Port 0 picks
    a free port. On exit the server stops (live tabs are dropped). Cancelling the body stops
    the server the same way."""
    import uvicorn

    sock = tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the caller owns the signals
            yield

    server = Quiet(uvicorn_config(app, host, bound))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                    await anyio.sleep(0.02)
            try:
                yield f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


__all__ = ["WebApp", "WebConfig", "loopback", "new_token", "page_url", "running_web_server",
           "serve"]
