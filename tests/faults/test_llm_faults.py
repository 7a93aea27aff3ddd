"""Faults 3 and 4: the LLM stream fails or stalls in the middle of a turn.

The LLM is `ScriptedChatServer` (a fake, so named) playing the fault; the TTS side is our real
`LocalTTSServer` with the piper voice; the session and both clients are the real ones.
(tests/test_turn_pipeline.py checks the spoken part for an error event and an inter-token stall;
here every failure kind is checked for the close on the wire, one surfaced error, timing and the
next turn. tests/test_openai_llm.py covers the LLM client alone.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from agent.conversation import TurnRecord
from agent.errors import LLMStreamError, LLMTimeoutError
from agent.session import Session
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from tests.fakes.scripted_llm import (
    Drop,
    ErrorEvent,
    Raw,
    Reply,
    ScriptedChatServer,
    Stall,
    StreamReply,
    Token,
    tokens,
)
from tests.faults.support import (
    MemoryOutput,
    TimedLLM,
    WireLog,
    assert_turn_closed_on_wire,
    loud_records,
    tracebacks,
)

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
SPOKEN = "The first part was said."
NEXT = "All good now."


async def run_turns(
    engine: Any, replies: list[Reply], **llm_options: Any
) -> tuple[Session, list[TurnRecord], WireLog, ScriptedChatServer, TimedLLM]:
    """Two turns ("one", "two") through the real session, TTS server and clients."""
    wire = WireLog()
    results: list[TurnRecord] = []
    async with (
        ScriptedChatServer(replies) as fake_llm,
        LocalTTSServer(engine) as tts_server,
        OpenAILLM("scripted", base_url=fake_llm.base_url, **llm_options) as openai_llm,
    ):
        llm = TimedLLM(openai_llm)
        config = TTSConfig(output_format="pcm_16000")
        async with ElevenLabsTTS(config, base_url=tts_server.url, frame_listener=wire) as tts:
            session = Session(llm, tts, MemoryOutput())
            for prompt in ("one", "two"):
                with anyio.fail_after(30):
                    results.append(await session.respond(prompt))
    return session, results, wire, fake_llm, llm


FAILURES: dict[str, ErrorEvent | Drop | Raw] = {
    "http-500-error-event": ErrorEvent("model crashed", 500, delay=0.05),
    "connection-reset": Drop(0.05),
    "malformed-json-chunk": Raw("{not json", delay=0.05),
    "chunk-of-wrong-shape": Raw('{"choices": "oops"}', delay=0.05),
}


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_llm_failure_after_some_tokens_ends_the_turn_by_policy(
    piper_engine: Any, caplog: pytest.LogCaptureFixture, recovery: Recorder, kind: str
) -> None:
    """Fault: the LLM stream breaks after two tokens: an HTTP 500 error event, a connection
    reset, a chunk that is not JSON, or a chunk of the wrong shape.

    Pass: the turn ends with a typed LLMStreamError in `result.error` (not raised, not retried:
    one request); the context is closed on the wire (one flush after the last text, then
    close_context); what was spoken stays in the history; exactly one WARNING line and no
    traceback; the next turn speaks normally.
    """
    caplog.set_level(logging.INFO)
    failing = StreamReply((Token("The first part "), Token("was said. "), FAILURES[kind]))
    session, (one, two), wire, fake_llm, llm = await run_turns(
        piper_engine, [failing, tokens("All ", "good ", "now.")]
    )
    assert isinstance(one.cause, LLMStreamError), one.cause
    assert one.heard_text == SPOKEN and not one.interrupted
    assert_turn_closed_on_wire(wire, "ctx-1", spoke=True)
    loud = loud_records(caplog)
    assert len(loud) == 1 and "LLM failed mid-turn" in loud[0].getMessage(), loud
    assert not tracebacks(caplog)
    assert two.error is None and two.heard_text == NEXT
    assert [m.content for m in session.history if m.role == "assistant"] == [SPOKEN, NEXT]
    assert len(fake_llm.chat_requests) == 2, "a failure after the first token is not retried"

    fault_at = fake_llm.chat_requests[0].step_times[-1]
    assert llm.failed_at is not None and two.at("first_audio_byte") is not None
    recovery(
        f"LLM stream fails after tokens ({kind})",
        "typed LLMStreamError surfaced",
        llm.failed_at - fault_at,
    )
    recovery(
        f"LLM stream fails after tokens ({kind})",
        "turn ended (spoken part played, context closed), next turn's first audio",
        two.at("first_audio_byte") - fault_at,
    )


async def test_inter_token_stall_times_out_on_time(
    piper_engine: Any, caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: after one token the LLM goes silent (the connection stays open).

    Pass: LLMTimeoutError(phase="inter_token") fires between inter_token_timeout and
    inter_token_timeout + 1 s after the last token; the turn ends cleanly (spoken part kept,
    context closed, one WARNING); the HTTP stream is closed; the next turn works.
    """
    caplog.set_level(logging.INFO)
    timeout = 1.0
    stalled = StreamReply((Token("Before the stall. "), Stall(30)), finish=False)
    _, (one, two), wire, fake_llm, llm = await run_turns(
        piper_engine, [stalled, tokens("Recovered.")], inter_token_timeout=timeout
    )
    assert isinstance(one.cause, LLMTimeoutError) and one.cause.phase == "inter_token"
    assert llm.failed_at is not None
    waited = llm.failed_at - llm_last_delta(one)
    assert timeout <= waited < timeout + 1.0, waited
    assert one.heard_text == "Before the stall."
    assert_turn_closed_on_wire(wire, "ctx-1", spoke=True)
    assert len(loud_records(caplog)) == 1 and not tracebacks(caplog)
    assert fake_llm.chat_requests[0].closed_by_client
    assert two.error is None and two.heard_text == "Recovered."
    assert two.at("first_audio_byte") is not None
    stall_at = fake_llm.chat_requests[0].step_times[-1]
    recovery(
        "LLM stalls after a token (inter_token_timeout 1 s)",
        "LLMTimeoutError, turn ended, spoken part kept",
        llm.failed_at - stall_at,
    )
    recovery(
        "LLM stalls after a token (inter_token_timeout 1 s)",
        "next turn's first audio",
        two.at("first_audio_byte") - stall_at,
    )


def llm_last_delta(result: TurnRecord) -> float:
    assert result.at("last_token") is not None
    return result.at("last_token")


async def test_first_token_stall_times_out_on_time_each_attempt(
    piper_engine: Any, caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: the LLM accepts the request and never sends a token (twice: max_attempts=2).

    Pass: each attempt is abandoned between first_token_timeout and first_token_timeout + 1 s
    after it was sent (the retry waits backoff_base); LLMTimeoutError(phase="first_token") ends
    the turn with nothing said and the context closed with no flush; both HTTP streams are
    closed; one WARNING; the next turn works.
    """
    caplog.set_level(logging.INFO)
    timeout, backoff = 1.0, 0.1
    silent = StreamReply((Stall(30),), finish=False)
    started = time.monotonic()
    _, (one, two), wire, fake_llm, llm = await run_turns(
        piper_engine,
        [silent, silent, tokens("Recovered.")],
        first_token_timeout=timeout,
        max_attempts=2,
        backoff_base=backoff,
    )
    assert isinstance(one.cause, LLMTimeoutError) and one.cause.phase == "first_token"
    first, second = fake_llm.chat_requests[:2]
    assert llm.failed_at is not None
    gap = second.received_at - first.received_at
    # (request arrival times differ from send times by a few ms either way)
    assert timeout + backoff - 0.05 <= gap < timeout + backoff + 1.0, gap
    assert timeout - 0.05 <= llm.failed_at - second.received_at < timeout + 1.0
    assert first.closed_by_client and second.closed_by_client
    assert one.heard_text == "" and one.at("first_audio_byte") is None
    assert_turn_closed_on_wire(wire, "ctx-1", spoke=False)
    assert not any(m.get("flush") for m in wire.sent_to("ctx-1")), "nothing to flush"
    assert len(loud_records(caplog)) == 1 and not tracebacks(caplog)
    assert two.error is None and two.heard_text == "Recovered."
    recovery(
        "LLM never sends a first token (first_token_timeout 1 s, 2 attempts)",
        "LLMTimeoutError after both attempts, nothing spoken",
        llm.failed_at - started,
    )
