"""Local speech to text: end of turn -> transcript, faster-whisper's 30 s window against ours.

Speaks the test lines (tests/stt_lines.py: "Yes." to ~15 s) in the scripted user's voice, then
has whisper tiny.en transcribe each one --repeats times on every path: window "full" (faster-
whisper's transcribe, every input padded to 30 s) and "short" (the default: a 10 s window, or
the utterance plus 3 s, with a fall back to "full" on degenerate output), each with 1 and 2
CTranslate2 threads. Lines and paths are interleaved so a change in the machine's load hits
all of them alike. Reported per path: median and p95 of the wall time of `recognize()` (PCM in,
text out: the time from the end of the turn to the transcript), the mean word error rate, and
how often the short path fell back. Target: short path median <= 150 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from agent.app.user_voice import synthesize_user_line
from bench._report import print_table, summary, verdict, write_json
from plugins.local.piper_tts import PiperEngine
from plugins.local.whisper_stt import Recognition, WhisperSTT, Window
from tests.stt_lines import LONG_LINE, USER_LINES
from tests.textmetrics import wer

RATE = 16000
TARGET_MS = 150.0


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def measure(
    lines: list[str], threads: list[int], windows: list[Window], repeats: int
) -> dict[str, Any]:
    engine = PiperEngine.load()
    audio = [synthesize_user_line(text, engine, sample_rate=RATE) for text in lines]
    recognizers = {n: WhisperSTT(cpu_threads=n) for n in threads}
    for stt in recognizers.values():
        stt.load()
        for window in windows:  # warm up every path once
            stt.recognize(audio[0], RATE, window=window)
    paths = [(window, n) for window in windows for n in threads]
    wall: dict[tuple[Window, int], list[float]] = {path: [] for path in paths}
    errors: dict[tuple[Window, int], list[float]] = {path: [] for path in paths}
    fallbacks: dict[tuple[Window, int], int] = dict.fromkeys(paths, 0)
    heard: dict[tuple[Window, int], list[str]] = {path: [] for path in paths}
    for text, pcm in zip(lines, audio, strict=True):
        times: dict[tuple[Window, int], list[float]] = {path: [] for path in paths}
        last: dict[tuple[Window, int], Recognition] = {}
        for _ in range(repeats):
            for window, n in paths:
                started = time.perf_counter()
                last[window, n] = recognizers[n].recognize(pcm, RATE, window=window)
                times[window, n].append((time.perf_counter() - started) * 1000)
        for path in paths:
            wall[path].append(statistics.median(times[path]))
            errors[path].append(wer(text, last[path].text))
            fallbacks[path] += last[path].fallback is not None
            heard[path].append(last[path].text)
    return {
        "lines": lines,
        "audio_seconds": [len(pcm) / 2 / RATE for pcm in audio],
        "repeats": repeats,
        "load": load_note(),
        "paths": [
            {
                "window": window,
                "cpu_threads": n,
                "wall_ms": summary(wall[window, n]),
                "wall_ms_per_line": wall[window, n],
                "mean_wer": statistics.fmean(errors[window, n]),
                "wer_per_line": errors[window, n],
                "fallbacks": fallbacks[window, n],
                "heard": heard[window, n],
            }
            for window, n in paths
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per line and path")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-long", action="store_true", help="leave out the ~15 s line")
    args = parser.parse_args()
    lines = USER_LINES if args.no_long else [*USER_LINES, LONG_LINE]
    windows: list[Window] = ["full", "short"]
    data = measure(lines, args.threads, windows, args.repeats)
    full_wer = min(p["mean_wer"] for p in data["paths"] if p["window"] == "full")
    rows = []
    for path in data["paths"]:
        name = f"{path['window']} window, {path['cpu_threads']} thread(s)"
        wall = path["wall_ms"]
        short = path["window"] == "short"
        rows += [
            (
                f"{name}: median",
                f"{wall['median']:.0f} ms",
                f"<= {TARGET_MS:.0f} ms" if short else "",
                verdict(wall["median"], TARGET_MS) if short else "",
            ),
            (f"{name}: p95", f"{wall['p95']:.0f} ms", "", ""),
            (
                f"{name}: mean WER",
                f"{path['mean_wer']:.1%}",
                "<= full + 2 pt" if short else "",
                verdict(path["mean_wer"], full_wer + 0.02) if short else "",
            ),
        ]
        if short:
            rows.append((f"{name}: fell back to full", f"{path['fallbacks']}/{len(lines)}", "", ""))
    seconds = data["audio_seconds"]
    print_table(
        f"STT end of turn -> transcript, whisper tiny.en int8, {len(lines)} lines of "
        f"{min(seconds):.1f}-{max(seconds):.1f} s, median of {args.repeats} runs per line; "
        f"{data['load']}",
        rows,
    )
    write_json("stt_latency", data)


if __name__ == "__main__":
    main()
