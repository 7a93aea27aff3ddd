"""The voice agent in a browser tab: the page, its protocol, a tab transport and the server.

Serve tabs (the tab handler gets a `PageLine`: a Transport with `mic_frames()`, `output`,
`now()`, plus `send_event(dict)` for the page to show and `hang_up()`)::

    from plugins.web import WebApp, serve

    async def handler(line):  # e.g. run the voice agent on the line
        ...

    anyio.run(lambda: serve(WebApp(handler), port=8000))

Mount in your own ASGI service instead: ``WebApp(handler, config).asgi``. The page
(``static/``: HTML, a script, an AudioWorklet, a style sheet) ships in the package and fetches
nothing from the network. The protocol (protocol.py) and the tab loop (tab.py) need only the
core; the server needs the ``phone`` extra (starlette, uvicorn), imported here.
"""

from __future__ import annotations

from .protocol import OUTPUT_RATE, Limits, PageProtocol
from .server import WebApp, WebConfig, loopback, new_token, page_url, running_web_server, serve
from .tab import PageLine, PageOutput, TabHandler, TabRecord, TabSettings, run_tab

__all__ = [
    "OUTPUT_RATE",
    "Limits",
    "PageLine",
    "PageOutput",
    "PageProtocol",
    "TabHandler",
    "TabRecord",
    "TabSettings",
    "WebApp",
    "WebConfig",
    "loopback",
    "new_token",
    "page_url",
    "run_tab",
    "running_web_server",
    "serve",
]
