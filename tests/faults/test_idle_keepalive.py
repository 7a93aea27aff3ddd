"""Fault 2: a long idle session must never be closed for inactivity (1008).

Our real LocalTTSServer (piper voice) keeps its default 20 s inactivity_timeout; the only thing
holding the socket and the context open is the client's keep-alive. The LLM is
`ScriptedChatServer` (a fake, so named), used to hold a context open with no text for 25 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import anyio
import pytest

from agent.session import Session
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from tests.fakes.scripted_llm import ScriptedChatServer, Stall, StreamReply, Token, tokens
from tests.faults.support import MemoryOutput, WireLog

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
SOCKET_IDLE_S = 35.0  # between turns: no context open
CONTEXT_IDLE_S = 25.0  # a turn whose LLM says nothing for this long: a context open, no text


@pytest.mark.slow
async def test_idle_minute_is_kept_alive_and_the_next_turn_works(
    piper_engine: Any, recovery: Recorder
) -> None:
    """Fault: a minute of silence against a server that closes idle sockets and contexts after
    20 s: 35 s with no turn, then a turn whose LLM takes 25 s to say its first word.

    Pass: no inactivity close ever (one connection, no reconnect, no error frame, no close);
    socket keep-alives (bare `{"text": ""}`) went out between turns and context keep-alives
    (`{"text": "", "context_id": ...}`) while the context waited; that turn then speaks in full.
    """
    wire = WireLog()
    slow_thinker = StreamReply((Stall(CONTEXT_IDLE_S), Token("Still "), Token("here.")))
    async with (
        LocalTTSServer(piper_engine) as server,
        ScriptedChatServer([tokens("Hello ", "there."), slow_thinker]) as fake_llm,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url, first_token_timeout=60)
        config = TTSConfig(output_format="pcm_16000")
        async with llm, ElevenLabsTTS(config, base_url=server.url, frame_listener=wire) as tts:
            assert "inactivity_timeout" not in tts.url(), "the server keeps its 20 s default"
            session = Session(llm, tts, MemoryOutput())
            with anyio.fail_after(120):
                first = await session.respond("hi")
                idle_from = time.monotonic()
                await anyio.sleep(SOCKET_IDLE_S)
                second = await session.respond("are you there?")
            sock = tts._socket
            assert sock is not None and sock.alive
        connections, errors_sent = server.stats.connections, server.stats.errors_sent

    assert first.error is None and second.error is None
    assert second.heard_text == "Still here."
    assert tts.reconnects == 0 and connections == 1 and errors_sent == 0
    received = [json.loads(f) for d, _, f in wire.frames if d == "in"]
    assert not [m for m in received if m.get("error")]
    sent = [(t, json.loads(f)) for d, t, f in wire.frames if d == "out"]
    socket_keepalives = [t for t, m in sent if m == {"text": ""} and t > idle_from]
    context_keepalives = [t for t, m in sent if m == {"text": "", "context_id": "ctx-2"}]
    assert len(socket_keepalives) >= 3, socket_keepalives
    assert len(context_keepalives) >= 2, context_keepalives
    assert max(b - a for a, b in pairwise(socket_keepalives)) < 20
    first_token, first_audio = second.at("first_token"), second.at("first_audio_byte")
    assert first_token is not None and first_audio is not None
    assert first_token - idle_from >= SOCKET_IDLE_S + CONTEXT_IDLE_S
    recovery(
        "60 s idle (35 s between turns + 25 s in an open context; server timeout 20 s)",
        "no 1008, no reconnect; next turn's first audio after its first token",
        first_audio - first_token,
    )
