"""Voice-to-voice latency on the embedded defaults: the user stops speaking -> the agent's first
audio comes out of the speaker, median over a scripted conversation, broken down by stage.

Runs the demo's machinery (virtual transport in real time, local TTS/LLM servers, local STT)
with --turns simple questions and no interruptions. Per turn:

  end-of-turn wait   VAD silence that decides the user is done (a setting, not compute)
  STT compute        whisper tiny.en on the utterance
  LLM first token    request -> first token (model compute, through the local HTTP server)
  LLM until TTS      first token -> the TTS server starts synthesizing (the LLM writing the first
                     50 characters of the schedule, or the whole answer when it is shorter)
  TTS engine         the engine's time to its first chunk (piper)
  framework          everything else: chunking, sockets, JSON/base64, thread hops, playout

framework = voice-to-voice - (the five above). Target: median <= 30 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio

from agent.app.demo import DEMO_PROMPT, UserLine, run_demo
from bench._report import print_table, summary, verdict, write_json

QUESTIONS = (
    "Hello! What color is the sky on a clear day?",
    "How many days are in a week?",
    "What color is grass?",
    "Which season comes after winter?",
    "How many legs does a dog have?",
    "What do bees make?",
    "Thank you, that is all for today.",
)


def breakdown(log: Any) -> list[dict[str, float]]:
    rows = []
    for turn in log.turns:
        d = turn.durations_ms
        lat = turn.timeline.latencies()
        v2v, waited, ttft = lat["voice_to_voice"], lat["end_of_turn_wait"], lat["ttft"]
        if v2v is None or waited is None or ttft is None or "tts_engine" not in d:
            continue
        row = {
            "voice_to_voice": v2v,
            "end_of_turn_wait": waited,
            "stt_compute": d["stt_compute"],
            "llm_first_token": ttft,
            "llm_until_tts": d["llm_until_tts"],
            "tts_engine": d["tts_engine"],
        }
        row["framework"] = row["voice_to_voice"] - sum(
            row[k]
            for k in (
                "end_of_turn_wait",
                "stt_compute",
                "llm_first_token",
                "llm_until_tts",
                "tts_engine",
            )
        )
        rows.append(row)
    return rows


async def measure(turns: int) -> dict[str, Any]:
    lines = [UserLine(q) for q in QUESTIONS[:turns]]
    with tempfile.TemporaryDirectory() as tmp:
        result = await run_demo(Path(tmp), lines=lines)
    rows = breakdown(result.log)
    stages = list(rows[0]) if rows else []
    return {
        "turns": rows,
        "median_ms": {k: statistics.median(r[k] for r in rows) for k in stages},
        "framework_ms": summary([r["framework"] for r in rows]) if rows else None,
        "prompt": DEMO_PROMPT,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    r = anyio.run(measure, args.turns)
    med = r["median_ms"]
    rows = [
        (f"{stage.replace('_', ' ')} (median)", f"{value:.0f} ms", "", "")
        for stage, value in med.items()
        if stage != "framework"
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
    print_table(f"Voice-to-voice on the embedded defaults, {len(r['turns'])} turns", rows)
    write_json("voice_to_voice", r)


if __name__ == "__main__":
    main()
