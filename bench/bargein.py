"""Barge-in reaction, cancel fan-out and VAD cost, on the virtual transport in real time.

A conversation of --episodes user questions; the agent answers each at length (scripted LLM, a
fake for timing; real local TTS and real whisper STT) and the user interrupts ~4 s into every
answer. 20 ms frames. Measured:
- reaction: the user's speech onset in the mic signal (the injected sample) -> the agent's output
  silent (read off the recording: the first sample after which the cancelled answer never
  sounds again). Target: median <= 100 ms.
- framework share: the VAD's decision (end of the frame that first sounded voiced) -> output
  silent. Target: <= one output block (20 ms) + 2 ms.
- cancel fan-out: the confirmed barge-in -> the LLM stream closed and close_context written to the
  TTS socket (wall clock). Target: <= 5 ms.
- VAD + echo guard CPU per second of audio.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import anyio
import numpy as np

from agent import Agent, AgentOptions, VadConfig
from agent.audio import resample
from agent.interfaces import ChatMessage, LLMChunk, ToolSchema
from agent.turntaking import CancelTurn
from bench._report import print_table, summary, verdict, write_json
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.local.piper_tts import PiperEngine
from plugins.local.whisper_stt import WhisperSTT
from plugins.openai.llm import OpenAILLM
from plugins.virtual.transport import VirtualTransport
from tests.fakes.scripted_llm import RecordedRequest, ScriptedChatServer, StreamReply, tokens

RATE = 16000
BLOCK_MS = 20
ANSWER = (
    "Here is a long answer so that the user has time to interrupt it. It goes on about the "
    "weather, the tides, the phases of the moon and the history of space travel, and it "
    "would keep going for quite a while if nobody stopped it. It could describe the seasons, "
    "the stars that sailors used to find their way, the first telescopes, and the long quiet "
    "nights when people watched the sky and wondered what was out there beyond the clouds."
)


class ClosingClock:
    """Wraps the LLM and records when each stream has finished closing (wall clock)."""

    def __init__(self, inner: OpenAILLM) -> None:
        self.inner = inner
        self.closed_at: list[float] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        gen = self.inner.stream(messages, tools=tools)
        try:
            async for delta in gen:
                yield delta
        finally:
            with anyio.CancelScope(shield=True):
                await gen.aclose()
            self.closed_at.append(time.monotonic())


async def run(episodes: int) -> dict[str, Any]:
    engine = await anyio.to_thread.run_sync(PiperEngine.load)
    stt = WhisperSTT()
    await anyio.to_thread.run_sync(stt.load)

    def speak(text: str) -> bytes:
        pcm = b"".join(c.pcm for c in engine.synthesize(text))
        return resample(pcm, engine.sample_rate, RATE)

    question, stop = speak("Please tell me a long story."), speak("Okay, stop there.")
    period = 8.0
    transport = VirtualTransport(
        RATE, block_ms=BLOCK_MS, realtime=True, duration_s=episodes * period + 2
    )
    onsets = []
    for i in range(episodes):
        transport.inject(question, at_seconds=0.5 + i * period)
        onsets.append(transport.inject(stop, at_seconds=0.5 + i * period + 4.5) / RATE)
    # tokens paced so the LLM is still streaming when the user interrupts: fan-out must close it
    story = tokens(*[w + " " for w in ANSWER.split()], delay=0.05)

    def replies(request: RecordedRequest) -> StreamReply:
        # By what is asked, not by arrival: a tentative turn started at a pause ("Okay, ...")
        # and withdrawn asks too, and must not shift every later answer by one.
        asked = request.body["messages"][-1].get("content") or ""
        return story if "story" in asked.lower() else tokens("Okay.")

    close_frames: list[float] = []
    decisions: list[float] = []

    def wire(direction: str, when: float, frame: str) -> None:
        if direction == "out" and '"close_context"' in frame:
            close_frames.append(when)

    async with ScriptedChatServer(replies) as fake, LocalTTSServer(engine) as server:
        openai_llm = OpenAILLM("scripted", base_url=fake.base_url)
        llm = ClosingClock(openai_llm)
        async with (
            openai_llm,
            ElevenLabsTTS(
                TTSConfig(output_format=f"pcm_{RATE}"), base_url=server.url, frame_listener=wire
            ) as tts,
        ):
            agent = Agent(
                stt=stt,
                llm=llm,
                tts=tts,
                options=AgentOptions(vad=VadConfig(min_silence_ms=400)),
            )
            async with transport.running(), agent.conversation(transport) as conversation:
                original = conversation._cancel

                def timed_cancel(action: CancelTurn) -> None:
                    if action.reason == "barge-in":
                        decisions.append(time.monotonic())
                    original(action)

                conversation._cancel = timed_cancel  # type: ignore[method-assign]
                await conversation.finished.wait()
            log = conversation.log
    out = np.frombuffer(transport.recorded_output(), dtype="<i2")
    reactions, shares, fanout_tts, fanout_llm = [], [], [], []
    interrupted = [t for t in log.turns if t.interrupted and t.at("barge_in_onset") is not None]
    for turn in interrupted:
        heard_onset = turn.at("barge_in_onset")
        assert heard_onset is not None
        onset = min(onsets, key=lambda o: abs(o - heard_onset))
        # silent: the last non-zero output sample of the cancelled answer, searched from the onset
        nxt = [t.at("first_audio_played") for t in log.turns if t.index == turn.index + 1]
        stop_at = round((nxt[0] if nxt and nxt[0] else onset + 2.0) * RATE)
        before = out[round((onset - 0.1) * RATE) : round(onset * RATE)]
        if not before.any():
            continue  # the agent was between words at the onset: no reaction to measure
        window = out[round(onset * RATE) : stop_at]
        voiced = np.flatnonzero(window)
        silent = onset + ((voiced[-1] + 1) if voiced.size else 0) / RATE
        reactions.append((silent - onset) * 1000)
        output_silent = turn.at("output_silent")
        assert output_silent is not None
        decided = heard_onset + BLOCK_MS / 1000  # end of the first voiced frame
        shares.append((output_silent - decided) * 1000)
    for decided in decisions:  # a close within 1 s belongs to this barge-in
        after = [c for c in close_frames if decided <= c < decided + 1]
        closed = [c for c in llm.closed_at if decided <= c < decided + 1]
        if after:
            fanout_tts.append((after[0] - decided) * 1000)
        if closed:
            fanout_llm.append((closed[0] - decided) * 1000)
    audio_s = transport.clock_seconds
    return {
        "episodes": episodes,
        "barge_ins": conversation.floor.barge_ins,
        "reaction_ms": summary(reactions) if reactions else None,
        "framework_share_ms": summary(shares) if shares else None,
        "fanout_close_context_ms": summary(fanout_tts) if fanout_tts else None,
        "fanout_llm_closed_ms": summary(fanout_llm) if fanout_llm else None,
        "vad_cpu_ms_per_audio_s": conversation.vad_seconds / audio_s * 1000,
        "pauses": conversation.floor.pauses,
        "fanout_samples": [len(fanout_tts), len(fanout_llm)],
        "reaction_samples": len(reactions),
        "turns": [t.to_dict() for t in log.turns],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    r = anyio.run(run, args.episodes)
    rows = [
        (
            "barge-ins detected",
            f"{r['barge_ins']} of {args.episodes}",
            "all",
            "ok" if r["barge_ins"] == args.episodes else "MISS",
        )
    ]
    if r["reaction_ms"]:
        rt, sh = r["reaction_ms"], r["framework_share_ms"]
        rows += [
            (
                "reaction: onset -> output silent, median",
                f"{rt['median']:.0f} ms",
                "<= 100 ms",
                verdict(rt["median"], 100),
            ),
            ("reaction p95", f"{rt['p95']:.0f} ms", "", ""),
            ("episodes with the agent audible at the onset", str(r["reaction_samples"]), "", ""),
            (
                "framework share: VAD decision -> silent, median",
                f"{sh['median']:.1f} ms",
                f"<= {BLOCK_MS + 2} ms",
                verdict(sh["median"], BLOCK_MS + 2),
            ),
            ("framework share p95", f"{sh['p95']:.1f} ms", "", ""),
        ]
    for key, name in (
        ("fanout_close_context_ms", "cancel fan-out: decision -> close_context"),
        ("fanout_llm_closed_ms", "cancel fan-out: decision -> LLM stream closed"),
    ):
        if r[key]:
            rows.append(
                (
                    f"{name}, median",
                    f"{r[key]['median']:.2f} ms",
                    "<= 5 ms",
                    verdict(r[key]["median"], 5),
                )
            )
            rows.append((f"{name}, p95", f"{r[key]['p95']:.2f} ms", "", ""))
    rows.append(
        (
            "VAD + echo guard CPU per second of audio",
            f"{r['vad_cpu_ms_per_audio_s']:.2f} ms",
            "",
            "",
        )
    )
    print_table(f"Barge-in, {args.episodes} episodes, {BLOCK_MS} ms frames", rows)
    write_json("bargein", json.loads(json.dumps(r, default=str)))


if __name__ == "__main__":
    main()
