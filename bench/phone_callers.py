"""The caller side of `bench.phone_calls`, in its own process (so its CPU is not the bot's).

    python -m bench.phone_callers voices DIR            # the caller's questions, once (piper)
    python -m bench.phone_callers call URL --calls N --say DIR/q1.wav --say DIR/q2.wav

`voices` writes each question in the demo's scripted-user voice (piper, pitched up, silence
trimmed to 50 ms) as an 8 kHz WAV: VAD needs real speech. `call` places N concurrent calls with
our own caller (`plugins.twilio.place_call`, Twilio's side in real time), their starts spread
over --stagger seconds; each waits for the bot's greeting to end, says every --say after the
bot fell silent for --pause seconds, and hangs up once the last answer ended. It prints one JSON
document on stdout: per call, the time to first audio after each question
(`CallResult.response_latencies`), the largest gap between bot frames within one reply, the
frames received, the call's length; and this process's own event-loop lag (if the callers
lag, the gaps they measure are theirs, not the bot's).

Bounded: at most --max-calls (300) callers, each call at most --max-seconds, the whole run at
most rounds x --max-seconds + stagger + 30 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from agent.app.phone import caller_voice
from bench._report import percentile
from plugins.asgi import HeapKeeper
from plugins.twilio import CallResult, CallScript, Say, place_call

QUESTIONS = (
    "What time do you open tomorrow?",
    "Do you take reservations for Friday?",
    "How many days are in a week?",
)
FRAME_S = 0.02


def make_voices(folder: Path, texts: list[str], rate: int = 8000) -> list[Path]:
    """The questions in the demo's user voice, as WAVs at `rate` (8 kHz) in ``folder``."""
    from agent.app.user_voice import synthesize_user_lines
    from agent.audio import write_wav
    from plugins.local import PiperEngine

    engine = PiperEngine.load()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pcm in enumerate(synthesize_user_lines(texts, engine, sample_rate=rate)):
        path = folder / f"q{i + 1}.wav"
        write_wav(path, pcm, rate)
        paths.append(path)
    return paths


def reply_gaps(result: CallResult) -> list[tuple[float, float]]:
    """Gaps between consecutive bot frames within one reply, each with when it ended (s into
    the call). A reply is the bot's frames between two of the caller's utterances (the
    greeting before the first, the last answer after the last); the silence between replies
    is not a gap."""
    says = [t for t, what in result.timeline if what.startswith("say")]
    gaps: list[tuple[float, float]] = []
    bounds = [0.0, *says, float("inf")]
    for lo, hi in itertools.pairwise(bounds):
        times = [t for t in result.media_times if lo <= t < hi]
        gaps += [(b - a, b) for a, b in itertools.pairwise(times)]
    return gaps


def call_report(sid: str, result: CallResult, started: float = 0.0) -> dict[str, Any]:
    """One call's figures; ``started``: when the call began, in seconds into the run (the
    largest gap's time is given on that clock, to line gaps up across calls)."""
    gaps = reply_gaps(result)
    worst = max(gaps, default=(0.0, 0.0))
    late = [(g, at) for g, at in gaps if g > 2 * FRAME_S + 1e-9]  # a frame > 20 ms late
    return {
        "call_sid": sid,
        "first_audio_s": [round(x, 4) for x in result.response_latencies],
        "max_gap_s": round(worst[0], 4),
        "max_gap_at_s": round(started + worst[1], 3),
        "late_frames": len(late),
        # each gap over two frames, with when it ended (s into the run): up to 50
        "late_gaps": [(round(g, 4), round(started + at, 3)) for g, at in late[:50]],
        "frames_in": result.media_in,
        "seconds": round(len(result.caller_pcm) / 2 / 8000, 3),
        "clears": result.clears,
        "hung_up_by": result.hung_up_by,
        "close_code": result.close_code,
        "violations": result.violations[:5],
    }


SPIKE_S = 0.015  # a loop lag worth naming with its time in the report


async def lag_probe(
    samples: list[float], stop: anyio.Event, period: float = 0.005,
    spikes: list[tuple[float, float]] | None = None,
) -> None:
    """Record how late a `period` sleep wakes up, until `stop`; lags over `SPIKE_S` also go
    to ``spikes`` with when they ended (``time.perf_counter()``)."""
    while not stop.is_set():
        t = time.perf_counter()
        await anyio.sleep(period)
        now = time.perf_counter()
        samples.append(now - t - period)
        if spikes is not None and now - t - period > SPIKE_S:
            spikes.append((round(now, 3), round(now - t - period, 4)))


async def run_calls(
    url: str,
    voices: list[bytes],
    n: int,
    *,
    rounds: int = 1,
    stagger: float = 2.0,
    pause: float = 0.8,
    hang_up_after: float = 2.0,
    max_seconds: float = 30.0,
) -> dict[str, Any]:
    """N callers at once, each placing `rounds` calls one after another (question i, i+1, ...
    of `voices`), so N calls are live for most of the run and call set-up is part of it."""
    calls: list[dict[str, Any]] = []
    lags: list[float] = []
    spikes: list[tuple[float, float]] = []
    stop = anyio.Event()
    cpu0, t0 = time.process_time(), time.perf_counter()

    async def caller(i: int) -> None:
        await anyio.sleep(stagger * i / max(1, n))
        for r in range(rounds):
            sid = f"CA{i:016d}{r:016d}"
            # One question per call: our caller's `after_bot_silence` counts from the bot's
            # last audio, so a second Say would start right after the first, unanswered.
            script = CallScript(
                steps=[Say(voices[(i + r) % len(voices)], after_bot_silence=pause)],
                hang_up_after_silence=hang_up_after,
                max_seconds=max_seconds,
                call_sid=sid,
            )
            started = time.perf_counter() - t0
            try:
                calls.append(call_report(sid, await place_call(url, script), started))
            except Exception as err:  # a failed call is a result, not a crash of the run
                calls.append({"call_sid": sid, "error": f"{type(err).__name__}: {err}"})

    with anyio.move_on_after(rounds * max_seconds + stagger + 30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lag_probe, lags, stop, 0.005, spikes)
            async with anyio.create_task_group() as callers:
                for i in range(n):
                    callers.start_soon(caller, i)
            stop.set()
    lags = lags or [0.0]
    return {
        "calls": calls,
        "wall_s": time.perf_counter() - t0,
        "t0_clock": t0,  # time.perf_counter() at the start: the machine's monotonic clock
        "caller_cpu_s": time.process_time() - cpu0,
        "caller_lag_p50_s": percentile(lags, 50),
        "caller_lag_p99_s": percentile(lags, 99),
        "caller_lag_max_s": max(lags),
        "caller_lag_spikes": spikes[:200],  # (time.perf_counter(), lag s) over SPIKE_S
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("voices", help="write the questions as 8 kHz WAVs (piper)")
    v.add_argument("folder", type=Path)
    v.add_argument("--text", action="append", help="a question (repeat; default: built in)")
    v.add_argument("--rate", type=int, default=8000, help="sample rate (default: %(default)s)")
    c = sub.add_parser("call", help="place N concurrent calls; print JSON")
    c.add_argument("url")
    c.add_argument("--calls", type=int, default=1)
    c.add_argument("--say", action="append", required=True, metavar="WAV")
    c.add_argument("--stagger", type=float, default=2.0, help="spread the starts (s)")
    c.add_argument("--rounds", type=int, default=1, help="calls each caller places in turn")
    c.add_argument("--pause", type=float, default=0.8, help="bot silence before speaking (s)")
    c.add_argument("--hang-up-after", type=float, default=2.0, help="bot silence (s) after")
    c.add_argument("--max-seconds", type=float, default=40.0, help="per call (s)")
    c.add_argument("--max-calls", type=int, default=300)
    args = parser.parse_args()
    if args.command == "voices":
        for path in make_voices(args.folder, args.text or list(QUESTIONS), args.rate):
            print(path, flush=True)
        return
    voices = [caller_voice(p) for p in args.say]
    n = min(args.calls, args.max_calls)
    # The measuring side must not stall either: with a hundred calls, a full garbage
    # collection here held every caller's frames for ~40 ms, read as the bot's gaps.
    HeapKeeper().start()  # a run of minutes: the old generation is never collected
    report = anyio.run(
        lambda: run_calls(
            args.url,
            voices,
            n,
            rounds=args.rounds,
            stagger=args.stagger,
            pause=args.pause,
            hang_up_after=args.hang_up_after,
            max_seconds=args.max_seconds,
        )
    )
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
