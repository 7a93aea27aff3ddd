"""Voice-to-voice latency on the embedded defaults: the user stops speaking -> the agent's first
audio comes out of the speaker, median and p95 over a scripted conversation, broken down by stage.

Runs the demo's machinery (virtual transport in real time, local TTS/LLM servers, local STT)
with --turns simple questions and no interruptions. The answer starts at the user's first pause
(thinking ahead) and is held until the turn really ends, so the stages overlap; per turn:

  end-of-turn wait   silence waited (and the turn detector) before the turn is over
  work starts        speech to text started: when the voice faded (`agent.early_stt`), else
                     at the user's pause that started the answer (or the end of turn)
  STT compute        whisper tiny.en on the utterance
  pause wait         an early transcript was ready before the pause that takes it
  LLM first token    request -> first token (model compute, through the local HTTP server)
  LLM until TTS      first token -> the TTS server starts synthesizing (the first clause, or
                     the schedule's first 50 characters, or the whole answer when shorter)
  TTS engine         the engine's time to its first chunk (piper)
  held               the first audio was ready before the turn ended and waited for it
  framework          everything else: chunking, sockets, JSON/base64, thread hops, playout

voice-to-voice = work starts + STT + pause wait + LLM first token + LLM until TTS + TTS engine +
held + framework. Targets: voice-to-voice median <= 1000 ms and p95 <= 1300 ms; framework <= 30 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio

from agent.app.compose import AgentSettings
from agent.app.demo import DEMO_PROMPT, UserLine, run_demo
from bench._report import percentile, print_table, summary, verdict, write_json

QUESTIONS = (
    "Hello! What color is the sky on a clear day?",
    "How many days are in a week?",
    "What color is grass?",
    "Which season comes after winter?",
    "How many legs does a dog have?",
    "What do bees make?",
    "Thank you, that is all for today.",
)

STAGES = (
    "work_starts",
    "stt_compute",
    "pause_wait",
    "llm_first_token",
    "llm_until_tts",
    "tts_engine",
    "held",
)


def breakdown(log: Any) -> list[dict[str, float]]:
    """One row per answered turn: voice-to-voice and the stages on its critical path (ms)."""
    rows = []
    for turn in log.turns:
        d, marks = turn.durations_ms, turn.timeline.marks
        lat = turn.timeline.latencies()
        v2v, waited, ttft = lat["voice_to_voice"], lat["end_of_turn_wait"], lat["ttft"]
        if v2v is None or waited is None or ttft is None or "tts_engine" not in d:
            continue
        spoke, ended = marks["user_speech_end"], marks["end_of_turn"]
        taken = min(marks.get("user_paused", ended), ended)  # the utterance the answer uses
        started = taken - d.get("stt_head_start", 0.0) / 1000
        first_byte = marks["first_audio_byte"]
        row = {
            "voice_to_voice": v2v,
            "end_of_turn_wait": waited,
            "work_starts": (started - spoke) * 1000,
            "stt_compute": d["stt_compute"],
            "pause_wait": max(0.0, taken - started - d["stt_compute"] / 1000) * 1000,
            "llm_first_token": ttft,
            "llm_until_tts": d["llm_until_tts"],
            "tts_engine": d["tts_engine"],
            "held": max(0.0, ended - first_byte) * 1000,
        }
        row["framework"] = v2v - sum(row[k] for k in STAGES)
        rows.append(row)
    return rows


async def measure(turns: int, end_of_turn: str = "smart") -> dict[str, Any]:
    lines = [UserLine(q) for q in QUESTIONS[:turns]]
    settings = AgentSettings(instructions=DEMO_PROMPT, max_tokens=90, end_of_turn=end_of_turn)
    with tempfile.TemporaryDirectory() as tmp:
        result = await run_demo(Path(tmp), lines=lines, settings=settings)
    rows = breakdown(result.log)
    stages = list(rows[0]) if rows else []
    return {
        "end_of_turn": end_of_turn,
        "turns": rows,
        "median_ms": {k: statistics.median(r[k] for r in rows) for k in stages},
        "voice_to_voice_ms": summary([r["voice_to_voice"] for r in rows]) if rows else None,
        "framework_ms": summary([r["framework"] for r in rows]) if rows else None,
        "prompt": DEMO_PROMPT,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=7, help="questions asked (up to 7)")
    parser.add_argument(
        "--end-of-turn",
        choices=("smart", "silence"),
        default="smart",
        help="smart: the turn detector at the first pause; silence: 500 ms of silence",
    )
    args = parser.parse_args()
    r = anyio.run(measure, args.turns, args.end_of_turn)
    if not r["turns"]:
        raise SystemExit("no turn was answered: see the demo output above")
    med = r["median_ms"]
    v2v = [row["voice_to_voice"] for row in r["turns"]]
    rows = [
        (
            "voice to voice (median)",
            f"{med['voice_to_voice']:.0f} ms",
            "<= 1000 ms",
            verdict(med["voice_to_voice"], 1000),
        ),
        (
            "voice to voice p95",
            f"{percentile(v2v, 95):.0f} ms",
            "<= 1300 ms",
            verdict(percentile(v2v, 95), 1300),
        ),
    ]
    rows += [
        (f"{stage.replace('_', ' ')} (median)", f"{med[stage]:.0f} ms", "", "")
        for stage in ("end_of_turn_wait", *STAGES)
    ]
    rows.append(
        (
            "framework share (median)",
            f"{med['framework']:.1f} ms",
            "<= 30 ms",
            verdict(med["framework"], 30),
        )
    )
    rows.append(("framework share p95", f"{r['framework_ms']['p95']:.1f} ms", "", ""))
    turns, mode = len(r["turns"]), args.end_of_turn
    title = f"Voice-to-voice on the embedded defaults, {turns} turns, end of turn: {mode}"
    print_table(title, rows)
    write_json("voice_to_voice", r)


if __name__ == "__main__":
    main()
