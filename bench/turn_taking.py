"""Turn taking on the scripted user's voice: does the agent cut users off when they pause
mid-sentence, and how long does it wait after they are done? (A benchmark, not a test.)

The corpus (`bench.turn_corpus`): 24 lines in the local voice (piper via
`agent.app.user_voice.synthesize_user_line`), 12 complete and 12 with a 400-700 ms pause after
an unfinished phrase ("I would like to book a table for ... four people tonight."), in two
renderings of the pause (``spliced``: the halves synthesized apart; ``in-sentence``: one
synthesis with the clause pause set to the length asked for; see `bench.turn_corpus`).

1. The agent: every line goes, 2 s apart, through a real `agent.Conversation` on the virtual
   transport in real time (20 ms blocks): echo guard (off: there is no echo), VAD, the
   end-of-turn rule under test, turn-taking, the real local STT (whisper tiny.en: the smart
   rule reads the words so far, which the answer started at the pause has transcribed), then
   fakes for what is not measured here (`FakeScriptedLLM` saying "Okay.", and
   `FakeSilentEngine` behind the real local TTS server and client: a quiet agent;
   ``--stt fake`` puts `FakeInstantSTT` in the STT's place). Per line:
   - cut off: a turn whose ``user_speech_end`` mark lies before the line's real end of speech
     (by more than 200 ms: the VAD dates the end to a frame, and a last word lasts longer);
   - end-of-turn wait (timeline latency ``end_of_turn_wait``: the user's last voiced frame to
     the decision), on complete lines that were not cut off.
   Modes: ``silence-500`` (the rule of today: 500 ms of silence ends the turn; any
   ``silence-N`` works) and ``smart`` (`plugins.local.SmartTurn` passed as
   ``Agent(turn_detector=...)``: asked at the first short silence, `EndOfTurn.pause_ms`
   (``--pause-ms``, default the agent's), "complete" ends the turn there; when it is unsure,
   `EndOfTurn.unsure_silence_ms` of silence does (``--unsure-ms``, default 1000). The smart
   mode is skipped, saying so, with an `Agent` that does not take ``turn_detector``.
   Targets: cut-off share <= 5 %; median end-of-turn wait on complete lines <= 250 ms.
2. The model alone: `SmartTurn.predict` on each line cut 120 ms into its pause (should be
   "incomplete") and as long after its real end (should be "complete"), with its compute time;
   120 ms is the default pause plus a frame (`ASK_AFTER_S`).

    python -m bench.turn_taking                      # both modes, both renderings
    python -m bench.turn_taking --modes silence-500 silence-300 --styles in-sentence
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from agent import Agent, AgentOptions, EchoConfig, EndOfTurn, VadConfig
from agent.interfaces import TurnGuess
from bench._report import percentile, summary, write_json
from bench.fakes import FakeInstantSTT, FakeScriptedLLM, FakeSilentEngine
from bench.turn_corpus import CORPUS, RATE, STYLES, SpokenUtterance, Style, speak_all
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.virtual.transport import VirtualTransport

CUT_OFF_TARGET = 0.05
WAIT_TARGET_MS = 250.0
CUT_TOLERANCE_S = 0.2
ASK_AFTER_S = (EndOfTurn().pause_ms + 20) / 1000
"""The model-only check listens this long into a silence: the agent's default pause, plus the
frame or so by which the VAD's end of speech precedes the last voiced frame's end."""
LEAD_S = 0.5
GAP_S = 2.0
BLOCK_MS = 20

Row = tuple[str, ...]


def print_columns(title: str, head: Row, rows: Sequence[Row]) -> None:
    """A table with its own columns (`bench._report.print_table` has fixed ones)."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


# -- the agent ------------------------------------------------------------------------------------


class RecordingDetector:
    """A `TurnDetector` that passes every question to ``inner`` and keeps the answers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.guesses: list[tuple[float, TurnGuess]] = []  # (audio seconds, verdict)

    async def predict(self, pcm: bytes, sample_rate: int) -> TurnGuess:
        """Cancelling abandons the verdict (as ``inner`` does)."""
        guess: TurnGuess = await self.inner.predict(pcm, sample_rate)
        self.guesses.append((len(pcm) / 2 / sample_rate, guess))
        return guess


def agent_takes_a_turn_detector() -> bool:
    """Whether this version of `Agent` has ``turn_detector`` (the smart mode needs it)."""
    return "turn_detector" in inspect.signature(Agent).parameters


@dataclass
class LineResult:
    name: str
    paused: bool
    start: float
    speech_end: float
    turns: list[dict[str, Any]] = field(default_factory=list)
    cut_off: bool = False
    wait_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _stages_ms(turn: Any) -> dict[str, Any]:
    """Where the wait went: the pause and the transcript after the VAD's end of speech, and
    the STT's and the turn detector's own compute time."""
    end = turn.at("user_speech_end")

    def after(mark: str) -> float | None:
        t = turn.at(mark)
        return None if t is None or end is None else round((t - end) * 1000, 1)

    durations = turn.timeline.durations_ms
    return {
        "transcript": turn.transcript,
        "paused_after_ms": after("user_paused"),
        "transcript_after_ms": after("transcript"),
        "stt_compute_ms": durations.get("stt_compute"),
        "turn_detector_ms": durations.get("turn_detector"),
        "turn_probability": durations.get("turn_probability"),
        "stt_head_start_ms": durations.get("stt_head_start"),
    }


def judge(spoken: SpokenUtterance, start: float, turns: Sequence[Any]) -> LineResult:
    """Which turns belong to this line, was one of them cut before its end, how long the
    agent waited after the end."""
    real_end = start + spoken.speech_end
    result = LineResult(spoken.utterance.name, spoken.utterance.paused, start, real_end)
    mine = []
    for turn in turns:
        began, ended = turn.at("user_speech_start"), turn.at("user_speech_end")
        if began is None or ended is None or not start - 0.3 <= began <= real_end:
            continue
        mine.append(turn)
        result.turns.append(
            {
                "user_speech_start": round(began - start, 3),
                "user_speech_end": round(ended - start, 3),
                "end_of_turn_wait_ms": turn.latency_ms("end_of_turn_wait"),
                **_stages_ms(turn),
            }
        )
    result.cut_off = any(t.at("user_speech_end") < real_end - CUT_TOLERANCE_S for t in mine)
    finals = [t for t in mine if t.at("user_speech_end") >= real_end - CUT_TOLERANCE_S]
    if finals and not result.cut_off:
        result.wait_ms = finals[0].latency_ms("end_of_turn_wait")
    return result


def make_agent(
    mode: str,
    unsure_ms: int,
    detector: RecordingDetector | None,
    tts: Any,
    pause_ms: int | None = None,
    stt: Any = None,
) -> Agent:
    stt = stt or FakeInstantSTT()
    llm: Any = FakeScriptedLLM("Okay.", first_token=0.05, delay=0.02)  # an async-generator LLM
    echo = EchoConfig(enabled=False)  # the virtual line has no echo
    if mode.startswith("silence-"):
        options = AgentOptions(vad=VadConfig(min_silence_ms=int(mode.split("-", 1)[1])), echo=echo)
        return Agent(stt=stt, llm=llm, tts=tts, options=options)
    if mode == "smart":
        end = EndOfTurn(unsure_silence_ms=unsure_ms)
        if pause_ms is not None:
            end = dataclasses.replace(end, pause_ms=pause_ms)
        options = AgentOptions(end_of_turn=end, echo=echo)
        return Agent(stt=stt, llm=llm, tts=tts, options=options, turn_detector=detector)
    raise SystemExit(f"unknown mode {mode!r}: use silence-N (ms) or smart")


async def run_agent(
    mode: str,
    spoken: Sequence[SpokenUtterance],
    unsure_ms: int,
    pause_ms: int | None = None,
    stt: Any = None,
) -> dict[str, Any] | None:
    """One conversation over every line; None if the mode cannot run with this Agent."""
    if mode == "smart" and not agent_takes_a_turn_detector():
        return None
    detector = None
    if mode == "smart":
        from plugins.local.smart_turn import SmartTurn

        detector = RecordingDetector(SmartTurn())
        await anyio.to_thread.run_sync(detector.inner.load)
    starts, at = [], LEAD_S
    for line in spoken:
        starts.append(at)
        at += line.duration + GAP_S
    transport = VirtualTransport(RATE, block_ms=BLOCK_MS, realtime=True, duration_s=at)
    for line, start in zip(spoken, starts, strict=True):
        transport.inject(line.pcm, at_seconds=start)
    async with (
        LocalTTSServer(FakeSilentEngine()) as server,
        ElevenLabsTTS(TTSConfig(output_format=f"pcm_{RATE}"), base_url=server.url) as tts,
    ):
        agent = make_agent(mode, unsure_ms, detector, tts, pause_ms, stt)
        async with transport.running(), agent.conversation(transport) as conversation:
            await conversation.finished.wait()
    turns = conversation.log.turns
    lines = [judge(line, start, turns) for line, start in zip(spoken, starts, strict=True)]
    waits = [r.wait_ms for r in lines if not r.paused and r.wait_ms is not None]
    result: dict[str, Any] = {
        "mode": mode,
        "lines": len(lines),
        "cut_off": sum(r.cut_off for r in lines),
        "cut_off_share": sum(r.cut_off for r in lines) / len(lines),
        "lines_without_a_turn": [r.name for r in lines if not r.turns],
        "complete_waits_ms": waits,
        "wait_ms": summary(waits) if waits else None,
        "paused_waits_ms": [r.wait_ms for r in lines if r.paused and r.wait_ms is not None],
        "per_line": [r.to_json() for r in lines],
    }
    early = conversation.early_stt
    if early is not None:
        result["early_stt"] = {
            "started": early.started,
            "skipped": early.skipped,
            "used": early.used,
        }
    if detector is not None:
        result["detector_calls"] = [
            {"audio_s": round(s, 3), "probability": g.probability, "compute_s": g.compute_seconds}
            for s, g in detector.guesses
        ]
    return result


# -- the model alone ------------------------------------------------------------------------------


async def run_model(spoken: Sequence[SpokenUtterance], detector: Any) -> dict[str, Any]:
    ends, pauses, compute = [], [], []
    for line in spoken:
        at_end = await detector.predict(
            line.until(line.speech_end, silence_after=ASK_AFTER_S), RATE
        )
        ends.append({"name": line.utterance.name, "probability": at_end.probability})
        compute.append(at_end.compute_seconds * 1000)
        if line.pause is not None:
            at_pause = await detector.predict(
                line.until(line.pause[0], silence_after=ASK_AFTER_S), RATE
            )
            pauses.append({"name": line.utterance.name, "probability": at_pause.probability})
            compute.append(at_pause.compute_seconds * 1000)
    threshold = detector.threshold
    return {
        "threshold": threshold,
        "complete_at_end": sum(e["probability"] > threshold for e in ends) / len(ends),
        "incomplete_at_pause": (
            sum(p["probability"] <= threshold for p in pauses) / len(pauses) if pauses else None
        ),
        "compute_ms": summary(compute),
        "compute_samples_ms": compute,
        "at_end": ends,
        "at_pause": pauses,
    }


# -- the report -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def agent_rows(results: Sequence[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for r in results:
        waits = r["complete_waits_ms"]
        median = statistics.median(waits) if waits else None
        p95 = percentile(waits, 95) if waits else None
        ok = r["cut_off_share"] <= CUT_OFF_TARGET
        ok = ok and median is not None and median <= WAIT_TARGET_MS
        rows.append(
            (
                f"{r['mode']} / {r['style']}",
                str(r["lines"]),
                f"{r['cut_off_share']:.0%} ({r['cut_off']})",
                _ms(median),
                _ms(p95),
                "ok" if ok else "MISS",
            )
        )
    rows.append(("target", "", f"<= {CUT_OFF_TARGET:.0%}", f"<= {WAIT_TARGET_MS:.0f} ms", "", ""))
    return rows


def _model_row(label: str, takes: Sequence[dict[str, Any]]) -> Row:
    ends = [e for r in takes for e in r["at_end"]]
    pauses = [p for r in takes for p in r["at_pause"]]
    threshold = takes[0]["threshold"]
    compute = [c for r in takes for c in r["compute_samples_ms"]]
    complete = sum(e["probability"] > threshold for e in ends) / len(ends)
    incomplete = (
        sum(p["probability"] <= threshold for p in pauses) / len(pauses) if pauses else None
    )
    return (
        label,
        f"{complete:.0%} of {len(ends)}",
        "-" if incomplete is None else f"{incomplete:.0%} of {len(pauses)}",
        f"{statistics.median(compute):.0f} ms",
        f"{percentile(compute, 95):.0f} ms",
    )


def model_rows(results: Sequence[dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    for style in STYLES:
        takes = [r for r in results if r["style"] == style]
        for r in takes:
            rows.append(_model_row(style if len(takes) == 1 else f"{style}, take {r['take']}", [r]))
        if len(takes) > 1:
            rows.append(_model_row(f"{style}, all {len(takes)} takes", takes))
    return rows


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from plugins.local.piper_tts import PiperEngine
    from plugins.local.smart_turn import SmartTurn

    engine = await anyio.to_thread.run_sync(PiperEngine.load)
    stt: Any = None  # FakeInstantSTT
    if args.stt == "whisper":
        from plugins.local.whisper_stt import WhisperSTT

        stt = WhisperSTT()
        await anyio.to_thread.run_sync(stt.load)
    agent_results, model_results, skipped = [], [], []
    for style in args.styles:
        spoken = await anyio.to_thread.run_sync(speak_all, engine, style)
        if not args.no_model:
            async with SmartTurn() as detector:
                for take in range(args.takes):
                    lines = spoken
                    if take:  # piper varies from one synthesis to the next: a fresh rendering
                        lines = await anyio.to_thread.run_sync(speak_all, engine, style)
                    model = await run_model(lines, detector)
                    model_results.append({"style": style, "take": take + 1, **model})
        for mode in args.modes:
            result = await run_agent(mode, spoken, args.unsure_ms, args.pause_ms, stt)
            if result is None:
                skipped.append(mode)
                continue
            agent_results.append({"style": style, **result})
    return {
        "load": load_note(),
        "corpus": [u.__dict__ for u in CORPUS],
        "unsure_ms": args.unsure_ms,
        "pause_ms": args.pause_ms,
        "agent": agent_results,
        "model_only": model_results,
        "skipped_modes": sorted(set(skipped)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", nargs="+", default=["silence-500", "smart"])
    parser.add_argument(
        "--stt",
        choices=("whisper", "fake"),
        default="whisper",
        help="whisper: the local STT, as the product runs (default); fake: a fixed transcript",
    )
    parser.add_argument("--styles", nargs="+", choices=STYLES, default=list(STYLES))
    parser.add_argument(
        "--unsure-ms", type=int, default=1000, help="smart mode: the silence when unsure"
    )
    parser.add_argument(
        "--pause-ms", type=int, help="smart mode: the silence before asking (EndOfTurn default)"
    )
    parser.add_argument("--takes", type=int, default=1, help="model only: renderings per style")
    parser.add_argument("--no-model", action="store_true", help="skip the model-only table")
    args = parser.parse_args()
    styles: list[Style] = args.styles
    args.styles = styles
    r = anyio.run(measure, args)
    for mode in r["skipped_modes"]:
        print(f"\nmode {mode!r} skipped: this Agent does not take turn_detector= yet")
    if r["agent"]:
        print_columns(
            f"End of turn through the agent, {len(CORPUS)} lines per run "
            f"(half paused mid-sentence); {r['load']}",
            ("mode / pause rendering", "lines", "cut off", "wait median", "wait p95", ""),
            agent_rows(r["agent"]),
        )
        print("(wait: the user's last voiced frame -> end of turn, on the complete lines)")
    if r["model_only"]:
        print_columns(
            f"Smart Turn v3 alone, asked {ASK_AFTER_S * 1000:.0f} ms into the silence; {r['load']}",
            ("pause rendering", "complete at end", "incomplete at pause", "compute med", "p95"),
            model_rows(r["model_only"]),
        )
    write_json("turn_taking", r)


if __name__ == "__main__":
    main()
