"""Fault 8: a bad key fails fast; 5xx, dropped and stalled handshakes back off, capped and bounded.

TTS: `ScriptedTTSServer` (a fake, so named) refuses, drops or stalls handshakes and counts every
attempt with its time. LLM: `ScriptedChatServer` likewise. The clients are the real ones.
Covered elsewhere, not repeated: our LocalTTSServer refusing a bad key header
(tests/test_tts_client.py::test_bad_key_fails_fast_without_retry_and_never_leaks), an unreachable
TTS port (::test_unreachable_server_gives_clear_error_after_bounded_retries), the LLM's 401/403
(tests/test_openai_llm.py::test_auth_error_fails_fast_and_never_shows_the_key), one retried 500
and the attempt bound (::test_500_before_first_token_is_retried,
::test_persistent_500_gives_up_after_bounded_attempts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from itertools import pairwise

import anyio
import pytest

from agent.errors import LLMAuthError
from agent.interfaces import ChatMessage, TextDelta
from agent.session import Session
from plugins.elevenlabs.client import (
    AuthenticationError,
    ConnectionLostError,
    ElevenLabsTTS,
    TTSConfig,
)
from plugins.openai.llm import OpenAILLM
from tests.fakes.faulty_tts import (
    Abort,
    DropHandshake,
    Refuse,
    Respond,
    Script,
    ScriptedTTSServer,
    StallHandshake,
)
from tests.fakes.scripted_llm import Drop, HttpError, Reply, ScriptedChatServer, StreamReply, tokens
from tests.faults.support import (
    MemoryOutput,
    WireLog,
    assert_turn_closed_on_wire,
    eventually,
    loud_records,
)

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
#: Scheduling slack allowed on top of a computed delay (a loaded 2-core machine).
SLACK = 0.5


@pytest.mark.parametrize("status", [401, 403])
async def test_tts_bad_key_fails_fast_after_exactly_one_handshake(
    status: int, recovery: Recorder
) -> None:
    """Fault: the TTS service refuses the key at the handshake (HTTP 401 or 403).

    Pass: AuthenticationError (naming ELEVENLABS_API_KEY) after exactly one handshake attempt,
    in under 1 s, although max_reconnects allows five retries.
    """
    async with ScriptedTTSServer(default=Refuse(status)) as fake:
        started = time.monotonic()
        with pytest.raises(AuthenticationError, match="ELEVENLABS_API_KEY"):
            async with ElevenLabsTTS(TTSConfig(max_reconnects=5), base_url=fake.url, api_key="k"):
                pass
        failed = time.monotonic() - started
    assert len(fake.attempts) == 1
    assert failed < 1.0
    recovery(f"TTS key refused ({status})", "AuthenticationError, 1 handshake, no retry", failed)


async def test_tts_key_refused_on_reconnect_mid_session_costs_one_attempt_per_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault: the warm socket drops and the reconnect is refused with 401 (key revoked).

    Pass: each turn ends with AuthenticationError in `result.error` (the session survives) after
    exactly one handshake attempt per turn: no retry loop.
    """
    caplog.set_level(logging.INFO)
    async with (
        ScriptedTTSServer([Script((Abort(),))], default=Refuse(401)) as fake_tts,
        ScriptedChatServer([tokens("Never ", "spoken.")]) as fake_llm,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url)
        with anyio.fail_after(20):
            async with (
                llm,
                ElevenLabsTTS(TTSConfig(max_reconnects=5), base_url=fake_tts.url) as tts,
            ):
                assert await eventually(lambda: tts._socket is not None and not tts._socket.alive)
                session = Session(llm, tts, MemoryOutput())
                results = [await session.respond("one"), await session.respond("two")]
    assert all(isinstance(r.cause, AuthenticationError) for r in results), results
    assert len(fake_tts.attempts) == 1 + 2, "the first connection, then one attempt per turn"
    assert not fake_llm.chat_requests, "no LLM call for a turn that cannot speak"
    assert len(loud_records(caplog)) == 2  # one "ended early" line per turn


async def test_tts_5xx_backs_off_exponentially_capped_and_bounded(recovery: Recorder) -> None:
    """Fault: every handshake is refused with 503.

    Pass: exactly 1 + max_reconnects attempts, then ConnectionLostError. The gaps between
    attempts follow backoff_initial * 2**k with jitter in [0.5, 1] of it, capped at backoff_cap:
    each gap is at least half its computed delay, no gap exceeds backoff_cap (+ slack), and the
    late gaps are longer than the first (they grow).
    """
    config = TTSConfig(max_reconnects=6, backoff_initial=0.1, backoff_cap=1.0)
    async with ScriptedTTSServer(default=Refuse(503)) as fake:
        with pytest.raises(ConnectionLostError, match="HTTP 503"):
            async with ElevenLabsTTS(config, base_url=fake.url):
                pass
    assert len(fake.attempts) == 1 + config.max_reconnects
    gaps = [b - a for a, b in pairwise(fake.attempts)]
    delays = [min(config.backoff_cap, config.backoff_initial * 2**k) for k in range(len(gaps))]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay / 2 - 0.01, (gaps, delays)  # jitter never goes below half
        assert gap <= delay + SLACK, (gaps, delays)
    assert max(gaps) <= config.backoff_cap + SLACK, "capped (uncapped, the last would be >= 1.6 s)"
    assert min(gaps[-2:]) > gaps[0], f"the gaps grow: {gaps}"
    recovery(
        "TTS handshake 503 every time (max_reconnects 6, cap 1 s)",
        f"7 attempts, gaps {', '.join(f'{g:.2f}' for g in gaps)} s, then ConnectionLostError",
        fake.attempts[-1] - fake.attempts[0],
    )


async def test_tts_5xx_then_recovery_connects_and_speaks(recovery: Recorder) -> None:
    """Fault: the TTS service answers 500 twice, then comes back.

    Pass: the client connects on the third attempt without surfacing an error and speaks.
    """
    config = TTSConfig(backoff_initial=0.1)
    async with ScriptedTTSServer([Refuse(500), Refuse(500)]) as fake:
        with anyio.fail_after(10):
            async with ElevenLabsTTS(config, base_url=fake.url) as tts:
                ctx = await tts.open_context()
                await ctx.send("Back again. ")
                await ctx.flush()
                await ctx.close()
                pcm = b"".join([chunk.pcm async for chunk in ctx.chunks()])
                first_audio = ctx.first_audio_at
    assert pcm and len(fake.attempts) == 3
    assert first_audio is not None
    recovery(
        "TTS handshake 500 twice, then up",
        "connected on attempt 3, spoke",
        first_audio - fake.attempts[0],
    )


async def test_tts_dropped_handshakes_are_retried_and_bounded(recovery: Recorder) -> None:
    """Fault: the server accepts TCP and drops it before answering the handshake.

    Pass: treated like a 5xx: retried with backoff, exactly 1 + max_reconnects attempts, then a
    typed ConnectionLostError saying the handshake failed (no raw websockets exception).
    """
    config = TTSConfig(max_reconnects=3, backoff_initial=0.05)
    started = time.monotonic()
    async with ScriptedTTSServer(default=DropHandshake()) as fake:
        with anyio.fail_after(10), pytest.raises(ConnectionLostError, match="handshake failed"):
            async with ElevenLabsTTS(config, base_url=fake.url):
                pass
    assert len(fake.attempts) == 4
    recovery(
        "TTS handshake dropped every time (max_reconnects 3)",
        "4 attempts, then typed ConnectionLostError",
        time.monotonic() - started,
    )


async def test_tts_stalled_handshake_times_out_and_is_retried(recovery: Recorder) -> None:
    """Fault: the server never answers the handshake.

    Pass: each attempt is abandoned after connect_timeout (0.5 s, + slack), retried once
    (max_reconnects=1), then a typed ConnectionLostError naming the timeout.
    """
    config = TTSConfig(max_reconnects=1, connect_timeout=0.5, backoff_initial=0.05)
    started = time.monotonic()
    async with ScriptedTTSServer(default=StallHandshake(30)) as fake:
        with anyio.fail_after(10), pytest.raises(ConnectionLostError, match="TimeoutError"):
            async with ElevenLabsTTS(config, base_url=fake.url):
                pass
        failed = time.monotonic() - started
    assert len(fake.attempts) == 2
    assert 2 * 0.5 <= failed < 2 * 0.5 + 0.05 + 2 * SLACK, failed
    recovery(
        "TTS handshake stalls (connect_timeout 0.5 s, 1 retry)",
        "2 attempts timed out, typed ConnectionLostError",
        failed,
    )


LLM_TRANSIENT: dict[str, Reply] = {
    "http-503": HttpError(503, "overloaded"),
    "connection-reset": StreamReply((Drop(),), finish=False),
}


@pytest.mark.parametrize("kind", list(LLM_TRANSIENT))
async def test_llm_failures_before_first_token_back_off_capped(
    kind: str, recovery: Recorder
) -> None:
    """Fault: the LLM fails four times before any token (HTTP 503, or a connection reset after
    the response headers), then answers.

    Pass: five requests; the gaps between them are backoff_base * 2**k (no jitter) capped at
    backoff_cap: each at least its delay, at most its delay + slack, none above the cap + slack,
    and they grow; the reply then streams in full.
    """
    base, cap = 0.2, 0.8
    script = [LLM_TRANSIENT[kind]] * 4 + [tokens("Back ", "again.")]
    async with ScriptedChatServer(script) as server:
        llm = OpenAILLM(
            "scripted", base_url=server.base_url, max_attempts=5, backoff_base=base, backoff_cap=cap
        )
        async with llm, aclosing(llm.stream([ChatMessage("user", "hi")])) as stream:
            deltas = [chunk.text async for chunk in stream if isinstance(chunk, TextDelta)]
            done = time.monotonic()
    assert deltas == ["Back ", "again."]
    arrivals = [r.received_at for r in server.chat_requests]
    assert len(arrivals) == 5
    gaps = [b - a for a, b in pairwise(arrivals)]
    delays = [min(cap, base * 2**k) for k in range(len(gaps))]
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - 0.01 <= gap <= delay + SLACK, (gaps, delays)
    assert max(gaps) <= cap + SLACK, "capped (uncapped, the last would be 1.6 s)"
    assert gaps[2] > gaps[0], f"the gaps grow: {gaps}"
    recovery(
        f"LLM fails before the first token x4 ({kind})",
        f"retried with backoff {', '.join(f'{g:.2f}' for g in gaps)} s, then streamed",
        done - arrivals[0],
    )


async def test_llm_bad_key_ends_the_turn_after_one_request(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: the LLM refuses the key (HTTP 401) in the middle of a session.

    Pass: the turn ends with LLMAuthError in `result.error` after exactly one request; nothing
    is spoken, the TTS context is closed with no flush; one WARNING line.
    """
    caplog.set_level(logging.INFO)
    wire = WireLog()
    async with (
        ScriptedChatServer([HttpError(401, "bad key")]) as fake_llm,
        ScriptedTTSServer(default=Script((Respond(),))) as fake_tts,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url, max_attempts=3)
        with anyio.fail_after(10):
            async with (
                llm,
                ElevenLabsTTS(TTSConfig(), base_url=fake_tts.url, frame_listener=wire) as t,
            ):
                result = await Session(llm, t, MemoryOutput()).respond("hi")
    assert isinstance(result.cause, LLMAuthError)
    assert len(fake_llm.chat_requests) == 1
    assert result.heard_text == "" and result.at("first_audio_byte") is None
    assert_turn_closed_on_wire(wire, "ctx-1", spoke=False)
    assert not any(m.get("flush") for m in wire.sent_to("ctx-1"))
    assert len(loud_records(caplog)) == 1
    started = result.at("llm_request")
    assert started is not None and result.at("turn_end") is not None
    recovery(
        "LLM key refused (401)",
        "LLMAuthError after 1 request, turn ended cleanly",
        result.at("turn_end") - started,
    )
