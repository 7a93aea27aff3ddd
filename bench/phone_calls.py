"""Phone calls in one process: our caller against our phone server over loopback, N at once.

Each call: the bot (`ToneBot`, no engines) greets with a 1.5 s tone; the caller speaks over it
0.5 s in (barge-in), falls silent, gets an answer, hangs up. Everything is real time, real
sockets, 20 ms frames, marks echoed like Twilio. Measured per call:
- barge-in reaction: the caller's speech onset -> the bot's `clear` at the caller. Target p95 <=
  150 ms (the bot's own detector needs 20 ms; the rest is the loop and the sockets).
- time to first audio: the caller's speech end -> the bot's first answer frame. The bot waits
  200 ms of silence (its end of turn), so the framework's share is the excess. Target p95 <= 350 ms.
- pacing: the largest gap between bot frames within a reply. Target <= 60 ms (no stall, no burst).

    python -m bench.phone_calls --calls 1 4 8

Bounded: at most --max-calls (16) at once, each call at most 10 s.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import anyio

from bench._report import print_table, summary, verdict, write_json
from plugins.twilio import (
    CallResult,
    CallScript,
    PhoneApp,
    PhoneConfig,
    Say,
    ToneBot,
    place_call,
)
from plugins.twilio.handlers import tone
from plugins.twilio.server import running_phone_server

SPEECH = tone(0.4, hz=300.0, level=0.5)


async def run(concurrency: int) -> list[CallResult]:
    bot = ToneBot(greeting_s=1.5, answer_s=0.4, end_of_turn_s=0.2)
    app = PhoneApp(bot, PhoneConfig())
    results: list[CallResult] = []
    async with running_phone_server(app) as url:

        async def one(i: int) -> None:
            script = CallScript(
                steps=[Say(SPEECH, after_bot_audio=0.5)],
                hang_up_after_silence=0.4,
                max_seconds=10.0,
                call_sid=f"CA{i:032d}",
            )
            results.append(await place_call(url, script))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(concurrency):
                    tg.start_soon(one, i)
    return results


def max_gap(result: CallResult) -> float:
    """Largest gap between consecutive bot frames, within runs of audio (gaps < 0.25 s)."""
    gaps = [b - a for a, b in itertools.pairwise(result.media_times) if b - a < 0.25]
    return max(gaps, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-calls", type=int, default=16)
    args = parser.parse_args()
    data: dict[str, Any] = {}
    rows = []
    for n in args.calls:
        n = min(n, args.max_calls)
        results = anyio.run(run, n)
        reaction = summary([r.barge_in_reactions[0] for r in results if r.barge_in_reactions])
        first = summary([r.response_latencies[0] for r in results if r.response_latencies])
        gap = max(max_gap(r) for r in results)
        data[f"{n}_calls"] = {
            "barge_in_reaction_s": reaction,
            "first_audio_s": first,
            "max_frame_gap_s": gap,
        }
        rows += [
            (
                f"{n} calls: barge-in reaction p95",
                f"{reaction['p95'] * 1000:.0f} ms",
                "150 ms",
                verdict(reaction["p95"], 0.150),
            ),
            (
                f"{n} calls: first audio p95",
                f"{first['p95'] * 1000:.0f} ms",
                "350 ms",
                verdict(first["p95"], 0.350),
            ),
            (f"{n} calls: max frame gap", f"{gap * 1000:.0f} ms", "60 ms", verdict(gap, 0.060)),
        ]
    print_table("phone calls over loopback (ToneBot, our caller)", rows)
    write_json("phone_calls", data)


if __name__ == "__main__":
    main()
