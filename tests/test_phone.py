"""The voice agent on phone calls, end to end over loopback: our caller (`plugins.twilio`,
speaking Twilio's side in real time) calls `PhoneBot` behind the real phone server; STT is the
real whisper, TTS the real local server with the piper voice on `ulaw_8000`, and the LLM the
scripted OpenAI-compatible server (a named fake, so the answers and their timing are known)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent import AgentOptions, VadConfig, end_call
from agent.app.compose import AgentSettings, TTSEndpoint
from agent.app.phone import PhoneBot, webhook_base
from agent.app.user_voice import trim_silence
from agent.audio import resample
from agent.echo import EchoConfig
from agent.errors import VoxloopError
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from plugins.twilio import CallScript, PhoneApp, PhoneConfig, Press, Say, place_call
from plugins.twilio.server import running_phone_server
from tests.fakes.scripted_llm import (
    RecordedRequest,
    ScriptedChatServer,
    StreamReply,
    tokens,
    tool_call_reply,
)
from tests.faults.support import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.engines]

STORY = (
    "Once upon a time there was a little boat that sailed across the wide blue sea, "
    "looking for an island where the birds sang all day and the sand was warm and soft."
)


def paced(text: str, delay: float = 0.06) -> StreamReply:
    words = text.split(" ")
    return tokens(*[w if i == 0 else " " + w for i, w in enumerate(words)], delay=delay)


@asynccontextmanager
async def phone_bot(
    piper_engine: Any,
    whisper_stt: Any,
    replies: list[StreamReply] | Callable[[RecordedRequest], StreamReply],
    tmp_path: Path,
    **kw: Any,
) -> AsyncIterator[tuple[PhoneBot, str]]:
    async with (
        ScriptedChatServer(replies) as fake_llm,
        LocalTTSServer(piper_engine) as tts_server,
        OpenAILLM("scripted", base_url=fake_llm.base_url) as llm,
    ):
        bot = PhoneBot(
            settings=AgentSettings(instructions="You answer the phone."),
            options=AgentOptions(vad=VadConfig(min_silence_ms=400), echo=EchoConfig(enabled=False)),
            stt=whisper_stt,
            llm=llm,
            tts_endpoint=TTSEndpoint(tts_server.url, None, local=True),
            out_dir=tmp_path,
            say=lambda _line: None,
            **kw,
        )
        app = PhoneApp(bot, PhoneConfig())
        async with running_phone_server(app) as url:
            yield bot, url


def voice8k(piper_engine: Any, text: str) -> bytes:
    pcm = b"".join(chunk.pcm for chunk in piper_engine.synthesize(text))
    return resample(pcm, piper_engine.sample_rate, 8000)


async def test_a_call_is_greeted_answered_and_written_down(
    piper_engine: Any, whisper_stt: Any, tmp_path: Path
) -> None:
    question = voice8k(piper_engine, "What time do you open tomorrow?")
    script = CallScript(steps=[Say(question, after_bot_silence=0.5)], hang_up_after_silence=3.0)
    async with phone_bot(
        piper_engine, whisper_stt, [tokens("We open ", "at nine.")], tmp_path, greeting="Hello!"
    ) as (bot, url):
        with anyio.fail_after(60):
            result = await place_call(url, script, record_path=tmp_path / "caller-side.wav")
            assert await eventually(lambda: bool(bot.finished), limit=10)
    (conversation,) = bot.finished
    greeting, answer = conversation.log.turns
    assert greeting.heard_text == "Hello!" and not greeting.interrupted
    assert "open" in answer.transcript.lower()
    assert answer.heard_text == "We open at nine.", "all of it, as Twilio's marks confirmed"
    assert result.media_in > 50 and result.clears == 0 and result.hung_up_by == "caller"
    assert bot.calls[0].output.passed_through > 8000, "the TTS's μ-law went out undecoded"
    assert result.response_latencies, "the bot answered after the caller stopped"
    folder = tmp_path / CallScript().call_sid
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["turns"]) == 2
    assert "We open at nine." in (folder / "transcript.md").read_text()
    assert (folder / "call.wav").stat().st_size > 8000 * 2 * 2


async def test_barge_in_clears_the_line_and_heard_comes_from_marks(
    piper_engine: Any, whisper_stt: Any, tmp_path: Path
) -> None:
    ask = voice8k(piper_engine, "Tell me a story please.")
    stop = voice8k(piper_engine, "Stop, thank you.")
    script = CallScript(
        steps=[Say(ask, after_bot_silence=0.3), Say(stop, after_bot_audio=1.5)],
        hang_up_after_silence=3.0,
    )
    async with phone_bot(
        piper_engine, whisper_stt, [paced(STORY), tokens("Okay.")], tmp_path, greeting=None
    ) as (bot, url):
        with anyio.fail_after(60):
            result = await place_call(url, script)
            assert await eventually(lambda: bool(bot.finished), limit=10)
    (conversation,) = bot.finished
    story = conversation.log.turns[0]
    assert story.interrupted and result.clears >= 1
    assert result.media_after_clear == 0, "no media of the cut answer followed the clear"
    assert result.barge_in_reactions and min(result.barge_in_reactions) < 0.5
    heard = story.heard_text
    assert heard and STORY.startswith(heard) and len(heard) < len(STORY)
    # what the handset had played when the clear came bounds what counts as heard
    played_s = result.played_at_clear[0] / 8000
    assert len(heard.split()) <= played_s * 4 + 2
    cut = [m for m in conversation.history if m.role == "assistant" and m.interrupted]
    assert [m.content for m in cut] == [heard]
    assert conversation.log.turns[1].heard_text == "Okay."


async def test_an_answer_withdrawn_at_a_pause_sends_the_line_no_clear(
    piper_engine: Any, whisper_stt: Any, tmp_path: Path
) -> None:
    # The caller pauses 300 ms mid-sentence: the bot starts a tentative answer at the pause
    # (its audio held, never sent) and withdraws it when the voice comes back. Twilio has
    # nothing of it, so no `clear` goes out: a caller counts each clear as a barge-in.
    first = trim_silence(voice8k(piper_engine, "I would like to book a table for"), 8000)
    second = trim_silence(voice8k(piper_engine, "four people tonight."), 8000)
    gap = bytes(8000 * 2 * 2 // 10)  # with the 50 ms each side keeps: 300 ms of silence
    script = CallScript(
        steps=[Say(first + gap + second, after_bot_silence=0.3)], hang_up_after_silence=3.0
    )
    async with phone_bot(
        piper_engine, whisper_stt, lambda _request: tokens("Noted."), tmp_path, greeting=None
    ) as (bot, url):
        with anyio.fail_after(60):
            result = await place_call(url, script)
            assert await eventually(lambda: bool(bot.finished), limit=10)
    (conversation,) = bot.finished
    assert conversation.withdrawn >= 1, "the pause started an answer that was withdrawn"
    (turn,) = conversation.log.turns
    # one turn for the whole sentence ("four" is sometimes heard as "for": 8 kHz, tiny.en)
    assert "people tonight" in turn.transcript.lower() and turn.heard_text == "Noted."
    assert result.clears == 0


async def test_keys_reach_the_agent_and_end_call_hangs_up(
    piper_engine: Any, whisper_stt: Any, tmp_path: Path
) -> None:
    bye = voice8k(piper_engine, "That is all, goodbye.")
    script = CallScript(
        steps=[Press("4"), Press("2"), Say(bye, after_bot_silence=0.3)], hang_up_after_silence=5.0
    )

    def replies(request: RecordedRequest) -> StreamReply:
        # By what is asked, not by arrival: a tentative turn started at the comma's pause
        # ("That is all, ...") and then withdrawn asks the LLM too.
        if request.body["messages"][-1].get("role") == "tool":
            return tokens("Bye.")
        return tool_call_reply(("c1", "end_call", "{}"), text=["Goodbye! "])

    async with phone_bot(
        piper_engine, whisper_stt, replies, tmp_path, greeting=None, tools=[end_call]
    ) as (bot, url):
        with anyio.fail_after(60):
            result = await place_call(url, script)
            assert await eventually(lambda: bool(bot.finished), limit=10)
    (conversation,) = bot.finished
    assert conversation.take_digits() == "42"
    assert result.hung_up_by == "bot", "end_call hung up after the goodbye"
    (turn,) = conversation.log.turns
    assert [t.name for t in turn.tools] == ["end_call"] and turn.tools[0].outcome == "ok"
    assert turn.heard_text.startswith("Goodbye!")


def test_voxloop_call_takes_any_address_of_the_server() -> None:
    assert webhook_base("ws://127.0.0.1:8080/twilio/media") == "http://127.0.0.1:8080"
    assert webhook_base("wss://bot.example/twilio/media") == "https://bot.example"
    assert webhook_base("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    with pytest.raises(VoxloopError, match="not a phone server"):
        webhook_base("127.0.0.1:8080")


def test_workers_share_one_port_and_drain_on_sigterm(tmp_path: Path) -> None:
    """`voxloop phone --workers 2`: two processes answer on one port; SIGTERM to the supervisor
    stops both (no process and no held port left)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [
        sys.executable, "-m", "agent.app.cli", "phone", "--workers", "2", "--port", str(port),
        "--llm-url", "http://127.0.0.1:9/v1", "--stt-url", "http://127.0.0.1:9/v1",
        "--out", str(tmp_path),
    ]  # fmt: skip
    supervisor = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline and health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    health = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert health is not None and health["status"] == "ok", "no worker answered"
        workers = subprocess.run(
            ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(workers) == 2, workers
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 128 + signal.SIGTERM
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            ), f"worker {pid} outlived the supervisor"
        with pytest.raises(ConnectionRefusedError):  # nobody listens on the port any more
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        out = supervisor.stdout.read() if supervisor.stdout else ""
    assert "Traceback" not in out, out[-3000:]
