"""Fault 10: everything is cancelled mid-work (Ctrl-C, a supervisor shutting the agent down).

Four shutdowns, each by cancelling the scope that holds the component while it is busy: the
voice agent mid-answer, the TTS client with open contexts, our TTS server mid-synthesis with
clients connected, and the local LLM server (a subprocess) mid-stream. The components are the
real ones (piper, whisper, llama.cpp with SmolLM2); the voice agent's LLM is
`ScriptedChatServer`, a fake, so named, pacing a long answer.

Common pass criteria: shielded cleanup puts its frames on the wire while the socket is alive
(close_context, close_socket, the server's 1001), the shutdown completes within `BOUND_S` of the
cancel (measured), no asyncio task is left, and nothing but the cancellation is raised (any other
exception would escape the cancelled scope and fail the test).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent import Agent, AgentOptions, Conversation
from agent.interfaces import ChatMessage
from agent.vad import VadConfig
from plugins.elevenlabs.client import DEFAULT_VOICE_ID, ElevenLabsTTS, TTSConfig, TTSContext
from plugins.elevenlabs.server import LocalTTSServer
from plugins.local.llm_server import LocalLLMServer
from plugins.openai.llm import OpenAILLM
from plugins.virtual.transport import VirtualTransport
from tests.fakes.scripted_llm import ScriptedChatServer, StreamReply, Token
from tests.faults.support import WireLog, assert_turn_closed_on_wire, eventually, tracebacks

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
RATE = 16000
#: Every shutdown must complete within this many seconds of the cancel.
BOUND_S = 2.0
ANSWER = (
    "The moon is the only natural satellite of the Earth. It is about a quarter of the size of "
    "our planet and it moves around us once every twenty seven days. Its gravity pulls on the "
    "oceans and makes the tides rise and fall twice a day."
)
LONG_TEXT = (
    "This sentence is long enough to keep the engine busy for a while. It goes on about the "
    "weather, the tides and the phases of the moon. Then it talks about the stars that sailors "
    "used to find their way, and the first telescopes. "
)


async def settle_tasks(baseline: int, limit: float = 1.0) -> int:
    """Wait (bounded) until no more asyncio tasks run than `baseline`; return the count."""
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, limit)
    return len(asyncio.all_tasks())


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR-or-louder lines from the code under test."""
    ours = [r for r in caplog.records if not r.name.startswith("tests.")]
    return [r.getMessage() for r in ours if r.levelno >= logging.ERROR]


def paced_answer(text: str, fast_words: int = 16, delay: float = 0.1) -> StreamReply:
    """`text` word by word: the first `fast_words` at once, the rest `delay` apart."""
    words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
    return StreamReply(
        tuple(Token(w, 0.0 if i < fast_words else delay) for i, w in enumerate(words))
    )


async def test_cancelling_the_voice_agent_mid_answer_cleans_up_in_time(
    piper_engine: Any,
    whisper_stt: Any,
    speak16k: Any,
    caplog: pytest.LogCaptureFixture,
    recovery: Recorder,
) -> None:
    """Fault: the task group running the conversation (with the TTS client, both servers and the
    transport around it) is cancelled 1 s into the agent's spoken answer, the LLM still
    streaming.

    Pass: close_context for the turn's context goes out on the wire; the history keeps the
    heard words, marked interrupted; the whole stack is down within `BOUND_S`; no task left; no
    ERROR line, no exception but the cancellation.
    """
    caplog.set_level(logging.INFO)
    wire = WireLog()
    transport = VirtualTransport(RATE, block_ms=20, realtime=True, max_record_s=30)
    transport.inject(speak16k("Tell me about the moon."), at_seconds=0.3)
    baseline = len(asyncio.all_tasks())
    cancel_at = 0.0
    with anyio.fail_after(40):
        with anyio.CancelScope() as everything:
            async with (
                ScriptedChatServer([paced_answer(ANSWER)]) as fake_llm,
                LocalTTSServer(piper_engine) as tts_server,
                OpenAILLM("scripted", base_url=fake_llm.base_url) as llm,
                ElevenLabsTTS(
                    TTSConfig(output_format=f"pcm_{RATE}"),
                    base_url=tts_server.url,
                    frame_listener=wire,
                ) as tts,
                transport.running(),
                anyio.create_task_group() as tg,
            ):
                agent = Agent(
                    stt=whisper_stt,
                    llm=llm,
                    tts=tts,
                    options=AgentOptions(vad=VadConfig(min_silence_ms=400)),
                )
                conversation = await tg.start(run_conversation, agent, transport)
                assert await eventually(lambda: conversation.speaking_for() >= 1.0, limit=30)
                assert conversation.state == "speaking", "a turn is running"
                cancel_at = time.monotonic()
                everything.cancel()
                await anyio.sleep(60)  # the cancellation lands here
        shutdown_s = time.monotonic() - cancel_at
    tasks_after = await settle_tasks(baseline)

    assert everything.cancelled_caught
    assert shutdown_s < BOUND_S, f"shutdown took {shutdown_s:.2f} s"
    assert_turn_closed_on_wire(wire, "ctx-1", spoke=False)
    user, answer = conversation.history
    assert "moon" in user.content.lower()
    assert answer.interrupted and answer.content and ANSWER.startswith(answer.content)
    assert tasks_after <= baseline, f"{tasks_after - baseline} task(s) left"
    assert not errors_logged(caplog) and not tracebacks(caplog), errors_logged(caplog)
    recovery(
        "whole voice agent cancelled mid-answer",
        "close_context on the wire, heard words kept, no task left",
        shutdown_s,
    )


async def run_conversation(
    agent: Agent, transport: VirtualTransport, *, task_status: TaskStatus[Conversation]
) -> None:
    """Run a conversation until cancelled; hand its `Conversation` back once started."""
    async with agent.conversation(transport) as conversation:
        task_status.started(conversation)
        await conversation.finished.wait()


async def read_all(ctx: TTSContext, got_audio: anyio.Event) -> None:
    """Read a context's speech until it ends; set `got_audio` at the first chunk."""
    async for chunk in ctx.chunks():
        if chunk.pcm:
            got_audio.set()


@dataclass
class ClientShutdown:
    """What cancelling `ElevenLabsTTS` with open contexts did."""

    cancelled_caught: bool
    shutdown_s: float
    wire: WireLog
    server_freed: bool
    tasks_left: int


async def cancel_tts_client_with_open_contexts(piper_engine: Any) -> ClientShutdown:
    """Open two contexts, one speaking (flushed text, audio arriving), one holding unflushed
    text; then cancel the scope holding `async with ElevenLabsTTS(...)`."""
    wire = WireLog()
    async with LocalTTSServer(piper_engine) as server:  # stays up: its side is checked
        baseline = len(asyncio.all_tasks())
        cancel_at = 0.0
        with anyio.fail_after(20):
            with anyio.CancelScope() as scope:
                async with (
                    ElevenLabsTTS(
                        TTSConfig(output_format=f"pcm_{RATE}"),
                        base_url=server.url,
                        frame_listener=wire,
                    ) as tts,
                    anyio.create_task_group() as tg,
                ):
                    speaking, holding = await tts.open_context(), await tts.open_context()
                    await speaking.send(LONG_TEXT)
                    await speaking.flush()
                    await holding.send("A few words held back ")
                    got_audio = anyio.Event()
                    tg.start_soon(read_all, speaking, got_audio)
                    tg.start_soon(read_all, holding, anyio.Event())
                    await got_audio.wait()
                    sock = tts._socket
                    assert sock is not None and sock.protocol.counted_contexts == 2
                    cancel_at = time.monotonic()
                    scope.cancel()
                    await anyio.sleep(60)
            shutdown_s = time.monotonic() - cancel_at
        tasks_after = await settle_tasks(baseline)
        freed = await eventually(lambda: server.stats.active_connections == 0, 2.0)
    return ClientShutdown(scope.cancelled_caught, shutdown_s, wire, freed, tasks_after - baseline)


async def test_cancelling_the_tts_client_with_open_contexts_shuts_down_cleanly(
    piper_engine: Any, caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: `async with ElevenLabsTTS(...)` is cancelled with two contexts open: one speaking
    (flushed text, audio arriving), one holding unflushed text.

    Pass: the server frees the connection with no ERROR; the client is down within `BOUND_S`;
    no task left; only the cancellation raised. (close_socket: the next test.)
    """
    caplog.set_level(logging.INFO)
    outcome = await cancel_tts_client_with_open_contexts(piper_engine)
    assert outcome.cancelled_caught
    assert outcome.shutdown_s < BOUND_S, f"shutdown took {outcome.shutdown_s:.2f} s"
    assert outcome.server_freed, "the server still holds the connection"
    assert outcome.tasks_left <= 0, f"{outcome.tasks_left} task(s) left"
    assert not errors_logged(caplog) and not tracebacks(caplog), errors_logged(caplog)
    recovery(
        "TTS client cancelled with 2 open contexts",
        "close_socket on the wire, server frees the connection, no task left",
        outcome.shutdown_s,
    )


async def test_cancelled_tts_client_still_sends_close_socket(piper_engine: Any) -> None:
    """Fault: as above. Pass: close_socket is the last frame on the wire (the socket is alive)."""
    outcome = await cancel_tts_client_with_open_contexts(piper_engine)
    sent = outcome.wire.sent()
    assert sent[-1] == {"close_socket": True}, sent[-3:]


async def read_until_closed(ws: ClientConnection, got_audio: anyio.Event) -> None:
    """Read frames until the server closes the connection (a reader keeps the socket flowing,
    so the server's close handshake is answered)."""
    try:
        async for message in ws:
            if '"audio"' in str(message)[:20] or json.loads(message).get("audio"):
                got_audio.set()
    except ConnectionClosed:
        pass


async def test_cancelling_the_tts_server_mid_synthesis_closes_every_connection(
    piper_engine: Any, caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: `async with LocalTTSServer(...)` is cancelled while two clients are connected and
    both their contexts are mid-synthesis (long flushed text, audio flowing).

    Pass: each client gets a close frame with code 1001 (going away); the server is down within
    `BOUND_S`; no task left; no ERROR line; only the cancellation raised.
    """
    caplog.set_level(logging.INFO)
    baseline = len(asyncio.all_tasks())
    cancel_at = shutdown_s = 0.0
    clients: list[ClientConnection] = []
    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:  # the clients outlive the server
            readers = await stack.enter_async_context(anyio.create_task_group())
            with anyio.CancelScope() as scope:
                async with LocalTTSServer(piper_engine) as server:
                    url = (
                        f"{server.url}/v1/text-to-speech/{DEFAULT_VOICE_ID}/multi-stream-input"
                        f"?output_format=pcm_{RATE}"
                    )
                    audio = [anyio.Event(), anyio.Event()]
                    for i, got_audio in enumerate(audio):
                        ws = await stack.enter_async_context(connect(url))
                        clients.append(ws)
                        readers.start_soon(read_until_closed, ws, got_audio)
                        for frame in (
                            {"text": " ", "context_id": f"c{i}"},
                            {"text": LONG_TEXT * 2, "context_id": f"c{i}"},
                            {"context_id": f"c{i}", "flush": True},
                        ):
                            await ws.send(json.dumps(frame))
                    for got_audio in audio:
                        await got_audio.wait()
                    assert server.stats.active_connections == 2
                    cancel_at = time.monotonic()
                    scope.cancel()
                    await anyio.sleep(60)
            shutdown_s = time.monotonic() - cancel_at
            with anyio.fail_after(5):
                for ws in clients:
                    await ws.wait_closed()
    tasks_after = await settle_tasks(baseline)

    assert scope.cancelled_caught
    assert shutdown_s < BOUND_S, f"shutdown took {shutdown_s:.2f} s"
    codes = [ws.close_code for ws in clients]
    assert codes == [1001, 1001], codes
    assert tasks_after <= baseline, f"{tasks_after - baseline} task(s) left"
    assert not errors_logged(caplog) and not tracebacks(caplog), errors_logged(caplog)
    recovery(
        "TTS server cancelled mid-synthesis, 2 clients",
        "each client gets close 1001, no task left",
        shutdown_s,
    )


def processes_serving(port: int) -> list[int]:
    """PIDs whose command line names `--port <port>` (psutil-free: reads /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and args[args.index(b"--port") + 1 :][:1] == [str(port).encode()]:
            found.append(int(entry))
    return found


def session_members(session_id: int) -> list[int]:
    """PIDs in session `session_id` (the server leads its own: children would show up here)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
        if int(fields[3]) == session_id:
            members.append(int(entry))
    return members


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.engines
async def test_cancelling_the_local_llm_server_mid_stream_leaves_no_process(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: the scope holding `async with LocalLLMServer()` and a streaming answer is cancelled
    after the fifth token (llama.cpp generating).

    Pass: the subprocess is terminated and reaped (`os.kill(pid, 0)` raises), nothing is left
    in its process session, within `BOUND_S` of the cancel; no task left; no ERROR line; only
    the cancellation raised.
    """
    caplog.set_level(logging.INFO)
    baseline = len(asyncio.all_tasks())
    cancel_at = 0.0
    pids: list[int] = []
    deltas: list[str] = []
    with anyio.fail_after(120):
        with anyio.CancelScope() as scope:
            async with LocalLLMServer(startup_timeout=100) as server:
                pids = processes_serving(server.port)
                assert len(pids) == 1 and session_members(pids[0]) == pids
                async with OpenAILLM(
                    server.model,
                    base_url=server.base_url,
                    max_tokens=400,
                    first_token_timeout=60,
                    inter_token_timeout=30,
                ) as llm:
                    question = [ChatMessage("user", "Count from one to one hundred in words.")]
                    async with aclosing(llm.stream(question)) as stream:
                        async for delta in stream:
                            deltas.append(delta)
                            if len(deltas) == 5:
                                cancel_at = time.monotonic()
                                scope.cancel()
        shutdown_s = time.monotonic() - cancel_at
    tasks_after = await settle_tasks(baseline)

    assert scope.cancelled_caught and len(deltas) == 5
    assert shutdown_s < BOUND_S, f"shutdown took {shutdown_s:.2f} s"
    assert not server.running
    assert not is_alive(pids[0]), "the server process is still there"
    assert session_members(pids[0]) == [], "an orphan of the server is still running"
    assert tasks_after <= baseline, f"{tasks_after - baseline} task(s) left"
    assert not errors_logged(caplog) and not tracebacks(caplog), errors_logged(caplog)
    recovery(
        "local LLM server cancelled mid-stream",
        "subprocess terminated and reaped, no orphan, no task left",
        shutdown_s,
    )
