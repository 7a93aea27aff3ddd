"""The phone server: Twilio's voice webhook, the media-stream WebSocket and a health check, on one
port, as an ASGI app.

Routes (paths configurable in `PhoneConfig`):
- ``POST``/``GET /twilio/voice``: answers TwiML
  ``<Response><Connect><Stream url="{public url}/twilio/media"><Parameter .../></Stream>
  </Connect></Response>``. Without a public URL the Stream URL is ``wss://`` + the request's
  Host header. The parameters carry the caller's From/To and, with an auth token, a one-time
  stream token.
- ``/twilio/media``: the bidirectional media stream; each connection is one call, served by
  `call.run_call` with the pluggable `CallHandler`.
- ``GET /healthz``: ``{"status": "ok" | "draining", "calls": n}`` (503 while draining).

Why Starlette on uvicorn: Twilio's webhook is a form-encoded HTTP POST and the media stream is
a WebSocket, and they must share one public URL/port (one tunnel, one certificate). The
websockets library's server answers only WebSocket handshakes (it refuses a request with a
body), so it cannot take the webhook. An ASGI app serves both, and a user who already runs an
ASGI service (Starlette, FastAPI) can mount `PhoneApp.asgi` in it instead of running ours.
Starlette is small and anyio-based like the rest of voxloop; uvicorn is its usual server.
Install them with the ``phone`` extra (``voxloop[phone]``).

Security: with an auth token (`PhoneConfig.from_env` reads ``TWILIO_AUTH_TOKEN``) every webhook
must carry a valid ``X-Twilio-Signature`` (403 otherwise; a form body is signed with its
parameters, a JSON body through the URL's ``bodySHA256``), and a media stream is accepted only
with the one-time token its validated webhook issued (closed with 1008 otherwise). Without a
token anyone who can reach the port can place a call, so `serve` binds 127.0.0.1 by default
and warns loudly when told to bind anything else.

Draining: `PhoneApp.start_draining()` (what SIGTERM/SIGINT do in `serve`) lets live calls go
on, refuses new webhooks with 503 and new media streams with close code 1013, and makes
/healthz say "draining"; `serve` exits once the last call ended (or after `drain_timeout`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import quoteattr

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute

from plugins.asgi import (
    AsgiSocket,
    AsgiWebSocketApp,
    HeapKeeper,
    loopback,
    tcp_socket,
    uvicorn_ws_protocol,
)

from .call import (
    STREAM_TOKEN_PARAM,
    CallHandler,
    CallRecord,
    CallSettings,
    run_call,
)
from .protocol import MAX_MESSAGE_CHARS, StartInfo
from .security import (
    AuthToken,
    StreamTokens,
    validate_body_signature,
    validate_signature,
)

log = logging.getLogger("voxloop.twilio")

MAX_WEBHOOK_BYTES = 64 * 1024


@dataclass(slots=True)
class PhoneConfig:
    """How the phone server presents itself. `auth_token` is never shown in a repr."""

    public_url: str | None = None
    auth_token: AuthToken | None = None
    voice_path: str = "/twilio/voice"
    media_path: str = "/twilio/media"
    health_path: str = "/healthz"
    max_calls: int = 100
    drain_timeout: float = 600.0
    call: CallSettings = field(default_factory=CallSettings)

    @classmethod
    def from_env(cls, public_url: str | None = None, **kwargs: Any) -> PhoneConfig:
        """Config with the auth token from ``TWILIO_AUTH_TOKEN`` (if set) and the public URL
        from the argument or ``VOXLOOP_PUBLIC_URL``."""
        raw = os.environ.get("TWILIO_AUTH_TOKEN", "").strip()
        return cls(
            public_url=public_url or os.environ.get("VOXLOOP_PUBLIC_URL") or None,
            auth_token=AuthToken(raw) if raw else None,
            **kwargs,
        )

    def stream_url(self, host: str | None) -> str:
        """The WebSocket URL put in the TwiML."""
        if self.public_url:
            parts = urlsplit(self.public_url.rstrip("/"))
            scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
            return f"{scheme}://{parts.netloc}{parts.path}{self.media_path}"
        return f"wss://{host or 'localhost'}{self.media_path}"


def twiml_connect_stream(url: str, parameters: Iterable[tuple[str, str]]) -> str:
    """TwiML that connects the call to a bidirectional media stream at `url`."""
    params = "".join(f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>"
                     for k, v in parameters)
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f"<Response><Connect><Stream url={quoteattr(url)}>{params}</Stream></Connect>"
            "</Response>")


class PhoneApp:
    """The phone server as an ASGI app (`asgi`), with its live calls and drain state."""

    def __init__(self, handler: CallHandler, config: PhoneConfig | None = None) -> None:
        self.handler = handler
        self.config = config or PhoneConfig()
        self.tokens = StreamTokens()
        self.live: dict[int, CallRecord] = {}
        self.finished: deque[CallRecord] = deque(maxlen=1000)
        self.draining = False
        self._idle = anyio.Event()
        self._idle.set()
        self._next_id = 0
        #: the process's garbage-collection policy while it serves calls (`serve` sets one)
        self.heap: HeapKeeper | None = None
        c = self.config
        self.asgi = Starlette(routes=[
            Route(c.voice_path, self._voice, methods=["GET", "POST"]),
            WebSocketRoute(c.media_path, AsgiWebSocketApp(self._media)),
            Route(c.health_path, self._health, methods=["GET"]),
        ])

    def start_draining(self) -> None:
        """Refuse new calls from now on; live calls go on."""
        if not self.draining:
            log.info("phone server draining: %d live call(s) finish, new calls are refused",
                     len(self.live))
        self.draining = True

    async def wait_idle(self) -> None:
        """Wait until no call is live. Cancelling stops waiting only."""
        await self._idle.wait()

    # ---- routes ----

    async def _health(self, request: Request) -> Response:
        status = "draining" if self.draining else "ok"
        return JSONResponse({"status": status, "calls": len(self.live)},
                            status_code=503 if self.draining else 200)

    def _signing_url(self, request: Request) -> str:
        if self.config.public_url:
            query = request.url.query
            url = self.config.public_url.rstrip("/") + request.url.path
            return url + ("?" + query if query else "")
        return str(request.url)

    async def _voice(self, request: Request) -> Response:
        if self.draining:
            return PlainTextResponse("server draining: not taking new calls", status_code=503,
                                     headers={"Retry-After": "30"})
        if len(self.live) >= self.config.max_calls:
            return PlainTextResponse("too many calls in progress", status_code=503)
        params: list[tuple[str, str]] = []
        body = bytearray()
        as_json = False
        fields: dict[str, str] = dict(request.query_params)
        if request.method == "POST":
            async for piece in request.stream():
                body += piece
                if len(body) > MAX_WEBHOOK_BYTES:
                    return PlainTextResponse("webhook body too large", status_code=413)
            kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            as_json = kind == "application/json"
            try:
                if as_json:
                    document = json.loads(body)
                    if not isinstance(document, dict):
                        raise ValueError("not an object")
                    fields = {k: v for k, v in document.items() if isinstance(v, str)}
                else:
                    params = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
                    fields = dict(params)
            except (UnicodeDecodeError, ValueError):
                what = "a JSON object" if as_json else "form-encoded UTF-8"
                return PlainTextResponse(f"webhook body is not {what}", status_code=400)
        token = self.config.auth_token
        parameters: list[tuple[str, str]] = [
            (k, fields[k]) for k in ("From", "To") if fields.get(k)]
        if token is not None:
            url = self._signing_url(request)
            signature = request.headers.get("x-twilio-signature")
            valid = (validate_body_signature(token, url, bytes(body), signature) if as_json
                     else validate_signature(token, url, params, signature))
            if not valid:
                log.warning("webhook refused: %s X-Twilio-Signature for %s",
                            "invalid" if signature else "missing", request.url.path)
                return PlainTextResponse(
                    "invalid or missing X-Twilio-Signature (check TWILIO_AUTH_TOKEN and the "
                    "public URL the server was given)", status_code=403)
            stream_token = self.tokens.issue(fields.get("CallSid", ""), anyio.current_time())
            parameters.append((STREAM_TOKEN_PARAM, stream_token))
        xml = twiml_connect_stream(
            self.config.stream_url(request.headers.get("host")), parameters)
        return Response(xml, media_type="text/xml")

    def _check_start(self, info: StartInfo) -> str | None:
        if self.config.auth_token is None:
            return None
        return self.tokens.redeem(info.custom_parameters.get(STREAM_TOKEN_PARAM),
                                  info.call_sid, anyio.current_time())

    async def _media(self, socket: AsgiSocket) -> None:
        if not await socket.accept():
            return
        if self.draining:
            await socket.close(1013, "server draining: try again later")
            return
        if len(self.live) >= self.config.max_calls:
            await socket.close(1013, "too many calls in progress")
            return
        self._next_id += 1
        key = self._next_id
        record = CallRecord()
        self.live[key] = record
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        if self.heap is not None:
            self.heap.busy()
        try:
            await run_call(socket, self.handler, settings=self.config.call,
                           check_start=self._check_start, record=record)
        finally:
            del self.live[key]
            self.finished.append(record)
            if not self.live:
                self._idle.set()
                if self.heap is not None:
                    self.heap.idle()
            log.info("call %s ended: %s", record.call_sid or "(not started)", record.end_reason)


class _DrainingServer:
    """uvicorn's Server, but the first SIGTERM/SIGINT drains instead of dropping live calls."""

    def __init__(self, app: PhoneApp, config: Any, signals: bool = True) -> None:
        import uvicorn

        phone = app

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if phone.draining or sig not in (signal.SIGTERM, signal.SIGINT):
                    super().handle_exit(sig, frame)
                else:
                    phone.start_draining()

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                if signals:
                    with super().capture_signals():
                        yield
                else:
                    yield

        self.server = Server(config)


def uvicorn_config(app: PhoneApp, host: str, port: int, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app.asgi, host=host, port=port, ws=uvicorn_ws_protocol(), lifespan="off",
        ws_max_size=max(MAX_MESSAGE_CHARS * 16, 1 << 20), log_level="warning",
        # Twilio does not compress; a caller that offers it would cost both sides a zlib
        # pass per 20 ms frame for base64 that shrinks by a quarter.
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=5, **kwargs)


async def serve(
    handler: CallHandler,
    config: PhoneConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    started: anyio.Event | None = None,
    reuse_port: bool = False,
) -> PhoneApp:
    """Run the phone server until SIGTERM/SIGINT has drained it (a second signal forces).

    With ``reuse_port`` the listening socket is bound with SO_REUSEPORT, so several worker
    processes can serve one port (the kernel spreads new connections over them).
    While it serves, the process's garbage collector runs as `plugins.asgi.HeapKeeper` says
    (what is loaded now is frozen; full collections run when no call is live, or every 10
    minutes), so that no full collection stalls live calls; it is put back on return.
    Returns the app (its `finished` records). Cancelling stops the server at once, dropping
    live calls.
    """
    app = PhoneApp(handler, config or PhoneConfig.from_env())
    if app.config.auth_token is None and not loopback(host):
        log.warning(
            "phone server bound to %s WITHOUT TWILIO_AUTH_TOKEN: anyone who reaches this port "
            "can place calls through your bot. Set TWILIO_AUTH_TOKEN, or bind 127.0.0.1 and "
            "reach it through a tunnel.", host)
    runner = _DrainingServer(app, uvicorn_config(app, host, port))

    async def stop_when_drained() -> None:
        # A signal handler may only set a flag (as uvicorn's does), so this polls it.
        while not app.draining:  # noqa: ASYNC110
            await anyio.sleep(0.2)
        with anyio.move_on_after(app.config.drain_timeout):
            await app.wait_idle()
        runner.server.should_exit = True

    app.heap = HeapKeeper()
    async with app.heap.keeping(), anyio.create_task_group() as tg:
        tg.start_soon(stop_when_drained)
        if started is not None:
            tg.start_soon(_signal_started, runner, started)
        if reuse_port:
            sock = tcp_socket(host)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            try:
                await runner.server.serve([sock])
            finally:
                sock.close()
        else:
            await runner.server.serve()
        tg.cancel_scope.cancel()
    return app


def serve_forever(
    handler: CallHandler, config: PhoneConfig | None = None, *, host: str = "127.0.0.1",
    port: int = 8080,
) -> PhoneApp:
    """Blocking `serve` for a CLI: runs until SIGTERM/SIGINT drained the live calls."""
    async def main() -> PhoneApp:
        return await serve(handler, config, host=host, port=port)

    return anyio.run(main)


@asynccontextmanager
async def running_phone_server(
    app: PhoneApp, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `app` in this task group's background; yields its base URL (``http://host:port``).

    Port 0 picks a free port. On exit the server stops (live calls are dropped: drain first
    with `app.start_draining()` and `app.wait_idle()` to let them finish). Cancelling the body
    stops the server the same way.
    """
    sock = tcp_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    runner = _DrainingServer(app, uvicorn_config(app, host, bound), signals=False)
    started = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.server.serve, [sock])
            tg.start_soon(_signal_started, runner, started)
            with anyio.fail_after(10):
                await started.wait()
            try:
                yield f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
            finally:
                runner.server.should_exit = True
    finally:
        sock.close()


async def _signal_started(runner: _DrainingServer, started: anyio.Event) -> None:
    while not runner.server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
        await anyio.sleep(0.02)
    started.set()


__all__ = ["PhoneApp", "PhoneConfig", "running_phone_server", "serve", "serve_forever",
           "twiml_connect_stream"]
