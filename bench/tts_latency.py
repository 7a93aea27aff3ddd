"""TTS time to first byte through the local ElevenLabs-compatible server, and synthesis speed.

Measures, on loopback with the real piper voice:
- TTFB for the latency tool's 121-character sentence (new socket per trial, clock starts after
  the init, as `elevenlabs-latency` does): median and p95 over --trials (default 30);
- the engine's own time to its first chunk for the same first piece, and the server's overhead
  above it (TTFB minus engine first chunk);
- synthesis real-time factor (compute seconds / audio seconds).
Targets (2-core machine): TTFB <= 150 ms; server overhead <= 5 ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

from bench._report import print_table, summary, verdict, write_json
from plugins.elevenlabs.client import DEFAULT_VOICE_ID
from plugins.elevenlabs.server import LocalTTSServer, split_for_first_audio
from plugins.elevenlabs.tools import LATENCY_SENTENCE, latency_trial
from plugins.local.piper_tts import PiperEngine


def engine_first_chunk(engine: PiperEngine, text: str) -> float:
    started = time.perf_counter()
    next(iter(engine.synthesize(text)))
    return time.perf_counter() - started


def real_time_factor(engine: PiperEngine, text: str) -> tuple[float, float]:
    started = time.perf_counter()
    audio = sum(len(c.pcm) for c in engine.synthesize(text)) / 2 / engine.sample_rate
    return (time.perf_counter() - started) / audio, audio


async def measure(trials: int, fmt: str) -> dict[str, object]:
    engine = PiperEngine.load()
    head = split_for_first_audio(LATENCY_SENTENCE + " ")[0]
    async with LocalTTSServer(engine) as server:
        for _ in range(2):  # warm-up
            await latency_trial(
                base_url=server.url,
                api_key=None,
                voice_id=DEFAULT_VOICE_ID,
                model_id=None,
                output_format=fmt,
            )
        ttfb, total, engine_first = [], [], []
        for _ in range(trials):
            trial = await latency_trial(
                base_url=server.url,
                api_key=None,
                voice_id=DEFAULT_VOICE_ID,
                model_id=None,
                output_format=fmt,
            )
            ttfb.append(trial.ttfb_s * 1000)
            total.append(trial.total_s * 1000)
            engine_first.append(engine_first_chunk(engine, head) * 1000)
    overhead = [t - e for t, e in zip(ttfb, engine_first, strict=True)]
    rtf, audio_s = real_time_factor(engine, LATENCY_SENTENCE * 3)
    return {
        "format": fmt,
        "sentence_chars": len(LATENCY_SENTENCE),
        "first_piece": head,
        "ttfb_ms": summary(ttfb),
        "total_ms": summary(total),
        "engine_first_chunk_ms": summary(engine_first),
        "server_overhead_ms": {"median": statistics.median(overhead)},
        "rtf": rtf,
        "rtf_audio_seconds": audio_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--format", default="mp3_44100_128")
    args = parser.parse_args()
    results = {
        fmt: anyio.run(measure, args.trials, fmt)
        for fmt in dict.fromkeys([args.format, "pcm_16000"])
    }
    rows = []
    for fmt, r in results.items():
        ttfb = r["ttfb_ms"]
        eng = r["engine_first_chunk_ms"]
        ovh = r["server_overhead_ms"]
        assert isinstance(ttfb, dict) and isinstance(eng, dict) and isinstance(ovh, dict)
        rows += [
            (
                f"TTFB median ({fmt})",
                f"{ttfb['median']:.1f} ms",
                "<= 150 ms",
                verdict(ttfb["median"], 150),
            ),
            (f"TTFB p95 ({fmt})", f"{ttfb['p95']:.1f} ms", "", ""),
            (f"engine first chunk median ({fmt})", f"{eng['median']:.1f} ms", "", ""),
            (
                f"server overhead median ({fmt})",
                f"{ovh['median']:.1f} ms",
                "<= 5 ms",
                verdict(ovh["median"], 5),
            ),
        ]
    first = next(iter(results.values()))
    rows.append(("synthesis RTF", f"{first['rtf']:.3f}", "", ""))
    print_table(f"TTS latency, local server, {args.trials} trials, 121-char sentence", rows)
    write_json("tts_latency", {"trials": args.trials, "results": results})


if __name__ == "__main__":
    main()
