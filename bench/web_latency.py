"""Voice-to-voice through the browser page, next to the demo's transport, and what the page adds.

The same agent (the real whisper STT, the real local TTS server with the piper voice, and a
scripted in-process LLM, `bench.fakes.FakeTokenLLM`, so the model's timing is identical in both
runs) answers the same spoken questions twice:

  demo   the demo's virtual transport: a 16 kHz sample clock in real time, 20 ms blocks
  page   `voxloop web`'s page in headless Chromium (Debian's), its fake microphone playing the
         questions from a WAV file, over a loopback WebSocket

Per turn, voice-to-voice is the user's last voiced sample to the agent's first audible sample,
on each transport's own clock (for the page: the samples its AudioWorklet captured, and the
output latency the page's AudioContext reports added). What the page adds is broken down from
wall-clock stamps both ends take on this one machine:

  uplink      a microphone frame leaves the page's main thread -> the server has it
  downlink    the server sends a turn's first audio -> the page has it
  buffer      the page has it -> it becomes audible (jitter buffer, render quantum, output
              latency as the browser reports it)

and, with ``--echo G``, the echo decision measured: the page's played audio is fed back into its
microphone on the server (gain G, delayed by what the page reported it played each frame: a
laptop speaker with no echo canceller), and the agent's self-interruptions are counted with the
echo guard on and off.

Target: the page adds at most 60 ms of voice-to-voice over the demo (median of voice-to-voice
minus the engines' compute, STT + LLM first token + TTS first byte: the same work on both
transports, whose run-to-run spread on a loaded 2-core machine is larger than the target).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from agent import Agent, AgentOptions, EchoConfig, VadConfig
from agent.app.compose import AgentSettings, TTSEndpoint
from agent.app.web import WebBot
from agent.audio import AudioFrame, pcm_to_array, resample, write_wav
from agent.conversation import TurnRecord
from bench._report import print_table, summary, verdict, write_json
from bench.fakes import FakeTokenLLM

QUESTIONS = (
    "What color is the sky?",
    "How many days are in a week?",
    "What color is grass?",
    "Which season comes after winter?",
    "How many legs does a dog have?",
    "What do bees make?",
)
ANSWER = ["Sure,", " it", " is", " that", " one."]
STORY = "Once upon a time a little boat sailed across the wide blue sea to find an island. " * 2
OKAY = ["Seven", " days,", " from", " Monday", " to", " Sunday."]
GAP = 4.5  # seconds from a question's start to the next (the answer fits in between)
PAGE_RATE = 48000
TARGET_MS = 60.0
SHOT_WHEN = (
    "document.querySelectorAll('.line.agent .latency:not(:empty)').length >= 2"
    " && window.voxloop.stats.state === 'speaking'"
)
SHOT_AFTER_BARGE_IN = (
    "!!document.querySelector('.line.agent.interrupted .latency:not(:empty)')"
    " && document.querySelectorAll('.line.agent').length >= 2"
    " && window.voxloop.stats.state === 'speaking'"
)


def _speak(engine: Any, text: str, rate: int) -> bytes:
    pcm = b"".join(chunk.pcm for chunk in engine.synthesize(text))
    return resample(pcm, engine.sample_rate, rate)


def script(engine: Any, texts: Sequence[str], rate: int, gap: float = GAP) -> bytes:
    """The questions, one every ``gap`` seconds from 0.6 s, then 2 s of silence."""
    out = np.zeros(round((0.6 + gap * len(texts) + 2.0) * rate), dtype=np.int16)
    for i, text in enumerate(texts):
        voice = pcm_to_array(_speak(engine, text, rate))
        at = round((0.6 + gap * i) * rate)
        out[at : at + len(voice)] = voice[: len(out) - at]
    return out.astype("<i2").tobytes()


def turn_row(record: TurnRecord) -> dict[str, float] | None:
    lat = record.timeline.latencies()
    keys = ("voice_to_voice", "end_of_turn_wait", "stt", "ttft", "ttfb", "playout")
    if any(lat[k] is None for k in keys):
        return None
    return {k: float(lat[k] or 0.0) for k in keys}


async def run_demo_transport(stt: Any, tts_url: str, mic16: bytes, seconds: float) -> list[Any]:
    """The questions over the demo's virtual transport, in real time."""
    from plugins.elevenlabs.client import ElevenLabsTTS
    from plugins.virtual.transport import VirtualTransport

    transport = VirtualTransport(16000, block_ms=20, realtime=True, duration_s=seconds)
    transport.inject(AudioFrame(mic16, 16000), at_seconds=0.0)
    llm = FakeTokenLLM(ANSWER, delay=0.02)
    async with ElevenLabsTTS(base_url=tts_url) as tts:
        agent = Agent(
            stt=stt, llm=llm, tts=tts, instructions="Answer briefly.",
            options=AgentOptions(vad=VadConfig(min_silence_ms=500)),
        )
        async with transport.running(), agent.conversation(transport) as conversation:
            async for _event in conversation:
                pass
    return list(conversation.log.turns)


class EchoLine:
    """A tab whose microphone also hears what the page played (a speaker, no echo canceller):
    each frame gets the audio the page reported playing since the last frame, times ``gain``."""

    def __init__(self, line: Any, gain: float) -> None:
        self.line = line
        self.gain = gain
        self.sample_rate = line.sample_rate
        self.output = _RecordingOutput(line.output)
        self._echo = np.zeros(0, dtype=np.float32)
        self._seen = 0

    def now(self) -> float:
        return float(self.line.now())

    def send_event(self, message: dict[str, Any]) -> None:
        self.line.send_event(message)

    @property
    def tab_id(self) -> int:
        return int(self.line.tab_id)

    @property
    def end_reason(self) -> str:
        return str(self.line.end_reason)

    async def mic_frames(self) -> AsyncIterator[AudioFrame]:
        async for frame in self.line.mic_frames():
            pos = self.line.output._pos
            sent = self.output.sent_audio
            if pos > self._seen:
                played = pcm_to_array(bytes(sent[self._seen * 2 : pos * 2])).astype(np.float32)
                self._echo = np.concatenate([self._echo, played * self.gain])
                self._seen = pos
            mic = pcm_to_array(frame.pcm).astype(np.float32)
            take = min(len(mic), len(self._echo))
            mic[:take] += self._echo[:take]
            self._echo = self._echo[take:]
            pcm = np.clip(mic, -32768, 32767).astype("<i2").tobytes()
            yield AudioFrame(pcm, frame.sample_rate)


class _RecordingOutput:
    """The page's output, keeping what was sent (in the page's stream coordinates)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent_audio = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def play(self, pcm: bytes) -> None:
        before = self.inner.sent
        await self.inner.play(pcm)
        self.sent_audio.extend(pcm[: (self.inner.sent - before) * 2])

    def clear(self, *, held_only: bool = False) -> int:
        return int(self.inner.clear(held_only=held_only))


class RepliesLLM:
    """A scripted in-process LLM (a named fake): reply i to request i (the last one repeats),
    token by token with a fixed delay."""

    def __init__(self, replies: Sequence[Sequence[str]], delay: float = 0.02) -> None:
        self.replies = [list(r) for r in replies]
        self.delay = delay
        self.calls = 0

    async def stream(self, messages: Any, *, tools: Any = ()) -> AsyncIterator[Any]:
        from agent.interfaces import TextDelta

        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        for token in reply:
            await anyio.sleep(self.delay)
            yield TextDelta(token)


async def run_page(
    stt: Any,
    tts_url: str,
    wav: Path,
    seconds: float,
    *,
    replies: Sequence[Sequence[str]] = (ANSWER,),
    echo_gain: float = 0.0,
    echo_guard: bool = True,
    screenshot: Path | None = None,
    shot_when: str = SHOT_WHEN,
) -> tuple[list[TurnRecord], Any]:
    """The questions through the page in headless Chromium; the turns and the tab's record."""
    from plugins.web import WebApp, running_web_server
    from tests.browser.cdp import Chromium

    bot = WebBot(
        settings=AgentSettings(instructions="Answer briefly."),
        options=AgentOptions(
            vad=VadConfig(min_silence_ms=500), echo=EchoConfig(enabled=echo_guard)
        ),
        stt=stt,
        llm=RepliesLLM(replies),
        tts_endpoint=TTSEndpoint(tts_url, None, local=True),
        say=lambda _line: None,
    )

    async def handler(line: Any) -> None:
        await bot(EchoLine(line, echo_gain) if echo_gain else line)

    app = WebApp(handler)
    async with running_web_server(app) as url, Chromium(wav) as browser:
        page = await browser.open_page(url + "/", width=760, height=560)
        await page.evaluate("document.getElementById('start').click()")
        if screenshot is not None:
            await page.wait_for(shot_when, limit=seconds + 10)
            await anyio.Path(screenshot.parent).mkdir(parents=True, exist_ok=True)
            await anyio.Path(screenshot).write_bytes(await page.screenshot())
            print(f"screenshot: {screenshot}")
        await page.wait_for("window.voxloop.stats.framesSent > 0", limit=10)
        await anyio.sleep(max(0.0, seconds - 1.0))
        page_stats = await page.evaluate("window.voxloop.stats")
        keys = ("sampleRate", "outputLatencyMs", "underruns")
        record_stats = {k: page_stats.get(k) for k in keys}
        if page.exceptions:
            print("page exceptions:", page.exceptions, file=sys.stderr)
        await browser.close_page(page)
        with anyio.fail_after(10):
            await app.wait_idle()
    (record,) = app.finished
    turns = [t for c in bot.finished for t in c.log.turns]
    return turns, (record, record_stats)


ENGINES = ("stt", "ttft", "ttfb")


def transport_share(row: dict[str, float]) -> float:
    """Voice-to-voice minus the engines' compute (STT, LLM first token, TTS first byte): what
    the transport and the framework take, free of the machine's load on the engines."""
    return row["voice_to_voice"] - sum(row[k] for k in ENGINES)


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} if rows else {}


async def measure(turns: int, echo: float | None, screenshot: Path | None) -> dict[str, Any]:
    import tempfile

    from plugins.elevenlabs.server import LocalTTSServer
    from plugins.local.piper_tts import PiperEngine
    from plugins.local.whisper_stt import WhisperSTT

    engine = PiperEngine.load()
    stt = WhisperSTT()
    stt.load()
    texts = QUESTIONS[:turns]
    seconds = 0.6 + GAP * len(texts) + 2.0
    result: dict[str, Any] = {"questions": list(texts), "answer": "".join(ANSWER)}
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "mic.wav"
        write_wav(wav, script(engine, texts, PAGE_RATE), PAGE_RATE)
        async with LocalTTSServer(engine) as tts_server:
            # warm the engines once (the first synthesis and transcription are slow)
            await stt.transcribe(_speak(engine, "Hello there.", 16000), 16000)
            demo_turns = await run_demo_transport(
                stt, tts_server.url, script(engine, texts, 16000), seconds
            )
            page_turns, (record, page_stats) = await run_page(
                stt, tts_server.url, wav, seconds, screenshot=screenshot if echo is None else None
            )
            result["page_audio"] = page_stats
            if echo is not None:
                story_wav = Path(tmp) / "story.wav"
                asked = texts[:2]
                write_wav(story_wav, script(engine, asked, PAGE_RATE, gap=9.0), PAGE_RATE)
                result["echo"] = {"gain": echo, "questions": list(asked)}
                story = [w + " " for w in STORY.split()]
                for guard in (True, False):
                    echo_turns, (echo_record, _) = await run_page(
                        stt, tts_server.url, story_wav, 0.6 + 9.0 * 2 + 2.0,
                        replies=(story, OKAY), echo_gain=echo, echo_guard=guard,
                        screenshot=screenshot if guard else None, shot_when=SHOT_AFTER_BARGE_IN,
                    )
                    story_turn = echo_turns[0] if echo_turns else None
                    onset = story_turn.timeline.at("barge_in_onset") if story_turn else None
                    # the page's clock starts a little after the fake microphone's file does
                    by = "nothing" if onset is None else (
                        "its own echo" if onset < 0.6 + 9.0 - 1.0 else "the user")
                    result["echo"]["guard_on" if guard else "guard_off"] = {
                        "story_cut_by": by,
                        "pauses": echo_record.pauses,
                        "words_heard_before_the_cut": len(story_turn.heard_text.split())
                        if story_turn else 0,
                        "story_cut_at_s": onset,
                        "turns": [
                            {"transcript": t.transcript, "heard": t.heard_text,
                             "interrupted": t.interrupted}
                            for t in echo_turns
                        ],
                    }
    demo_rows = [r for r in map(turn_row, demo_turns) if r]
    page_rows = [r for r in map(turn_row, page_turns) if r]
    result["demo"] = {"turns": demo_rows, "median_ms": medians(demo_rows)}
    result["page"] = {"turns": page_rows, "median_ms": medians(page_rows)}
    parts = list(record.turn_audio.values())
    result["page_added"] = {
        "uplink_ms": summary(record.uplink_ms) if record.uplink_ms else None,
        "downlink_ms": summary([recv - sent for sent, recv, _ in parts]) if parts else None,
        "buffer_ms": summary([play - recv for _, recv, play in parts]) if parts else None,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--echo", type=float, default=0.3, metavar="G",
                        help="speaker-to-mic gain for the echo runs (default 0.3; <0 skips)")
    parser.add_argument("--screenshot", type=Path, help="save the page mid-conversation (PNG)")
    args = parser.parse_args()
    echo = args.echo if args.echo >= 0 else None
    r = anyio.run(measure, args.turns, echo, args.screenshot)
    demo, page = r["demo"]["median_ms"], r["page"]["median_ms"]
    rows: list[tuple[str, str, str, str]] = []
    for key in ("voice_to_voice", "end_of_turn_wait", "stt", "ttft", "ttfb", "playout"):
        if key in demo and key in page:
            rows.append((f"{key} (median): demo / page",
                         f"{demo[key]:.0f} / {page[key]:.0f} ms", "", ""))
    if demo and page:
        share_demo = statistics.median(map(transport_share, r["demo"]["turns"]))
        share_page = statistics.median(map(transport_share, r["page"]["turns"]))
        added = share_page - share_demo
        r["transport_share_ms"] = {"demo": share_demo, "page": share_page}
        r["added_ms"] = added
        rows.append(("v2v minus engine compute (median): demo / page",
                     f"{share_demo:.0f} / {share_page:.0f} ms", "", ""))
        rows.append(("page adds (median, engines aside)", f"{added:.0f} ms",
                     f"<= {TARGET_MS:.0f} ms", verdict(added, TARGET_MS)))
    for name, stats in r["page_added"].items():
        if stats:
            rows.append((f"  {name.removesuffix('_ms')} (median, p95)",
                         f"{stats['median']:.1f}, {stats['p95']:.1f} ms", "", ""))
    audio = r.get("page_audio") or {}
    rows.append(("  page output latency (browser-reported)", f"{audio.get('outputLatencyMs')} ms",
                 "", ""))
    if "echo" in r:
        for guard in ("guard_on", "guard_off"):
            e = r["echo"][guard]
            at = e["story_cut_at_s"]
            rows.append((
                f"echo x{r['echo']['gain']}, {guard.replace('_', ' ')}: answer cut by",
                e["story_cut_by"] + ("" if at is None else f" at {at:.1f} s"),
                "the user (9.6 s)" if guard == "guard_on" else "",
                ("ok" if e["story_cut_by"] == "the user" else "MISS")
                if guard == "guard_on" else ""))
            rows.append((
                f"echo x{r['echo']['gain']}, {guard.replace('_', ' ')}: before the cut",
                f"{e['words_heard_before_the_cut']} words heard, {e['pauses']} pauses",
                "1 pause (the user's)" if guard == "guard_on" else "", ""))
    print_table(
        f"Voice-to-voice through the page vs the demo's transport, {len(r['page']['turns'])} "
        "turns", rows)
    write_json("web_latency", r)


if __name__ == "__main__":
    main()
