"""`voxloop web`: the voice agent in a browser tab.

Serves the page at ``/`` and its audio WebSocket at ``/ws`` on one port (plugins/web). Each tab
is one conversation: the page's microphone (20 ms PCM16 frames from an AudioWorklet) feeds VAD
and STT at 16 kHz; the TTS speaks ``pcm_16000`` on a socket of the tab's own; what the user
heard comes from the page's playout reports; a barge-in tells the page to drop its queue at once.
The engines (STT, the LLM endpoint, the local TTS server) are shared by all tabs of the process.
Closing the tab ends its conversation (the running turn is cancelled, its cleanup runs).

Echo: Chromium's echo canceller does not cover Web Audio playback on many platforms, so the
server-side echo guard stays on for this transport (the page reports its output level after
every microphone frame); with headphones, ``--no-echo-guard`` lets quiet interruptions through.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from agent.app.chat import add_agent_options, settings_from
from agent.app.compose import (
    AgentSettings,
    LLMEndpoint,
    TTSEndpoint,
    llm_endpoint,
    load_stt,
    load_tools,
    load_turn_detector,
    make_llm,
    make_tts,
    stderr_progress,
    tools_notice,
    tts_endpoint,
)
from agent.app.live import add_listening_options, options_from
from agent.errors import VoxloopError
from agent.events import (
    AgentSaid,
    AgentText,
    ErrorEvent,
    Event,
    StateChanged,
    TurnFinished,
    UserSaid,
)
from agent.interfaces import LLM, STT, TurnDetector
from agent.timeline import LATENCIES
from agent.tools import Tool
from agent.voice_agent import Agent, AgentOptions, Conversation

if TYPE_CHECKING:
    from plugins.web import PageLine

log = logging.getLogger("voxloop.web")

RATE = 16000


def page_message(event: Event) -> dict[str, Any] | None:
    """What the page is told about a conversation event (None: nothing to show)."""
    if isinstance(event, StateChanged):
        return {"type": "state", "state": event.state}
    if isinstance(event, UserSaid):
        return {"type": "user", "turn": event.turn, "text": event.text}
    if isinstance(event, AgentText):
        return {"type": "agent_text", "turn": event.turn, "text": event.text}
    if isinstance(event, AgentSaid):
        return {
            "type": "agent_said",
            "turn": event.turn,
            "text": event.text,
            "heard": event.heard,
            "interrupted": event.interrupted,
        }
    if isinstance(event, TurnFinished):
        record = event.record
        return {
            "type": "latency",
            "turn": record.index,
            "latencies": {name: record.latency_ms(name) for name in LATENCIES},
        }
    if isinstance(event, ErrorEvent):
        return {"type": "error", "message": event.message}
    return None


class WebBot:
    """The per-tab work of `voxloop web`: one conversation per `PageLine`."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        options: AgentOptions,
        stt: STT,
        llm: LLM,
        tts_endpoint: TTSEndpoint,
        tools: Sequence[Tool[..., Any]] = (),
        turn_detector: TurnDetector | None = None,
        greeting: str | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.options = options
        self.stt = stt
        self.llm = llm
        self.tts_endpoint = tts_endpoint
        self.tools = tuple(tools)
        self.turn_detector = turn_detector
        self.greeting = greeting
        self.say = say
        self.finished: list[Conversation] = []  # the conversations of closed tabs (tests read it)
        self.live: list[Conversation] = []

    async def __call__(self, line: PageLine) -> None:
        """Converse on ``line`` until the tab closes (or `end_call`). Cancelling ends the
        conversation (its cleanup shielded)."""
        tab = f"tab {line.tab_id}"
        self.say(f"[{tab}] opened")
        line.send_event({"type": "config", "echo_guard": self.options.echo.enabled})
        async with make_tts(self.settings, self.tts_endpoint, RATE) as tts:
            agent = Agent(
                stt=self.stt,
                llm=self.llm,
                tts=tts,
                instructions=self.settings.instructions,
                tools=self.tools,
                options=self.options,
                turn_detector=self.turn_detector,
            )
            async with agent.conversation(line) as conversation:
                self.live.append(conversation)
                try:
                    if self.greeting:
                        conversation.say(self.greeting)
                    async for event in conversation:
                        message = page_message(event)
                        if message is not None:
                            line.send_event(message)
                        self._show(tab, event)
                finally:
                    self.live.remove(conversation)
        self.finished.append(conversation)
        self.say(f"[{tab}] closed: {line.end_reason or 'hung up'}")

    def _show(self, tab: str, event: Event) -> None:
        if isinstance(event, UserSaid):
            self.say(f"[{tab}] you:   {event.text}")
        elif isinstance(event, AgentSaid):
            cut = " [interrupted]" if event.interrupted else ""
            self.say(f"[{tab}] agent: {event.heard}{cut}")
        elif isinstance(event, ErrorEvent):
            self.say(f"[{tab}] error: {event.message}")


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the voice agent to browser tabs."""
    try:
        from plugins.web import WebApp, WebConfig, loopback, new_token, page_url, serve
    except ImportError as err:
        raise VoxloopError(
            f"voxloop web needs the 'phone' extra ({err.name} is missing): "
            "run ./dev.sh setup, or pip install 'voxloop[phone]'"
        ) from None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise VoxloopError("give both --tls-cert and --tls-key (PEM files), or neither")
    settings = settings_from(args)
    tools = load_tools(settings.tools_file)
    progress = stderr_progress("web")
    public = not loopback(args.host)
    token = args.token or (new_token() if public else None)
    config = WebConfig(
        token=token, require_origin=public, allowed_origins=tuple(args.allow_origin or ())
    )
    tls = bool(args.tls_cert)

    async def main() -> None:
        stt = await load_stt(args.stt_url, progress=progress)
        detector = await load_turn_detector(args.end_of_turn, progress=progress)
        async with (
            llm_endpoint(settings.llm_url, progress=progress) as llm_ep,
            tts_endpoint(settings.tts_url, progress=progress, clients=config.max_tabs) as tts_ep,
            make_llm(settings, llm_ep) as llm,
        ):
            tools_notice(llm, tools, progress)
            options = options_from(args)
            options.warm_up = llm_ep.local and tts_ep.local  # local engines: warm them per tab
            options.first_clause = not tts_ep.local  # the local server starts on it itself
            bot = WebBot(
                settings=settings,
                options=options,
                stt=stt,
                llm=llm,
                tts_endpoint=tts_ep,
                tools=tools,
                turn_detector=detector,
                greeting=args.greeting or None,
                say=lambda line: print(line, flush=True),
            )
            _describe(llm_ep, tts_ep, progress)
            url = page_url(args.host, args.port, tls=tls, token=token)
            if public and not tls:
                progress(
                    "warning: bound beyond loopback over plain http: browsers on other machines "
                    "refuse the microphone there; pass --tls-cert/--tls-key"
                )
            print(f"open {url}", flush=True)
            await serve(
                WebApp(bot, config),
                host=args.host,
                port=args.port,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
            )

    anyio.run(main)
    return 0


def _describe(llm_ep: LLMEndpoint, tts_ep: TTSEndpoint, progress: Callable[[str], None]) -> None:
    progress(f"LLM: {llm_ep.describe()}")
    progress(f"TTS: {tts_ep.describe()}")


def register(sub: Any) -> None:
    """Add `web` to the CLI's subcommands."""
    p = sub.add_parser(
        "web",
        help="talk with the agent in a browser tab",
        description="Serves the page at / and its audio WebSocket at /ws on one port; each tab "
        "is its own conversation, with barge-in. Offline on the embedded engines, or on the "
        "real services with keys. Binds 127.0.0.1 by default; bound elsewhere it requires the "
        "token printed at start (in the page URL) and checks the socket's Origin. Browsers "
        "allow the microphone only on https or localhost: --tls-cert/--tls-key for a LAN.",
    )
    add_agent_options(p)
    add_listening_options(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate, to serve https (for a LAN)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument(
        "--token",
        help="the token pages must present (default: none on loopback, else a random one, "
        "printed in the page URL)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="another origin pages may come from, as scheme://host[:port] (behind a reverse "
        "proxy that terminates TLS); repeat for several",
    )
    p.add_argument(
        "--greeting", default="", help="what the agent says when a tab starts (default: nothing)"
    )
    p.set_defaults(handler=cmd_web)
