"""Soak: a long conversation with a barge-in every 5 s, watching for leaks.

    python -m bench.soak --minutes 30        (default; --minutes 1 for a quick check)
    python -m bench.soak --minutes 120 --snapshot-minutes 10   (the long run, for a slow slope)

The user speaks every 5 s on the virtual transport, in real time; the agent answers each time at
length (`ScriptedChatServer`, a fake for pacing: long answers, the first 16 words at once, then
~7 words/s) through the real local TTS server (piper) and the real TTS client, so every
utterance after the first lands while the agent speaks: a barge-in, then a new turn. STT is the
real whisper tiny.en (once per utterance, ~0.1-0.3 s of CPU: bounded at one call every 5 s), so
everything but the LLM is real.

Every 10 s (stream time) one sample: resident memory (VmRSS), open file descriptors, asyncio
tasks, open TTS contexts on the client (its protocol's `counted_contexts`) and on the server (the
live connections' `active_contexts`), barge-ins and turns so far. At the end: a table (first,
last, max, slope per 10 min for each resource) and JSON in bench/results/soak.json.

"Flat": after a warm-up (the first min(2 min, 25 %) of the run: lazy imports, allocator
arenas growing to the engines' working sets), a least-squares line is fitted to the samples. A
resource is flat when its slope is within noise: either the drift the line predicts over the
measured window (|slope| x window) stays under a floor that matters in practice (memory 5 MB,
fds 1, tasks 2, contexts 1), or the slope is within two standard errors of zero (the samples
show no trend at all; memory jumps by ~20 MB between samples as the engines' allocators
breathe, so a short run needs the second test). A leak that grows with turns passes neither;
a run of a few minutes catches only gross leaks; 30 minutes reliably catches 5 MB per 10 min.

Where memory goes (to tell a leak from an allocator that grows and levels off): each sample
also records RSS split into anonymous memory (`rss_anon_mb`: heaps, arenas) and file-backed
pages (`rss_file_mb`: libraries and model files mapped from disk, paged in as they are first
touched, which levels off at their size); the Python heap that tracemalloc traces
(`traced_mb`); and glibc's own count of the bytes malloc has handed out and not had back
(`malloc_in_use_mb`, from mallinfo2: the native engines' buffers and Python's objects over 512
bytes; smaller Python objects live in pymalloc's own mmapped arenas, which tracemalloc sees)
and of the freed bytes it keeps in its arenas (`malloc_free_mb`). A native leak grows
`malloc_in_use_mb` with the turns, a Python one `traced_mb`; RSS that rises while both stay
flat is file pages being touched or the allocator keeping freed memory (fragmentation, arenas
per thread), which level off. Every
`--snapshot-minutes` (stream time), from the end of warm-up, a tracemalloc snapshot is compared
with the one taken at warm-up: the lines whose allocations grew most are printed and kept in
the JSON (`snapshots`), so a Python leak names its line. tracemalloc (one frame per allocation)
costs CPU and memory of its own, which RSS and malloc's figures include; `--no-tracemalloc`
runs without it.

Not the framework's memory, so kept out of the figures: the fake LLM server's own request log is
cleared at each sample, and the transport records no audio. The session history does grow by
two short messages per turn (a real conversation keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from agent import Agent, AgentOptions, Conversation, VadConfig
from agent.audio import resample
from bench._report import write_json
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.local.piper_tts import PiperEngine
from plugins.local.whisper_stt import WhisperSTT
from plugins.openai.llm import OpenAILLM
from plugins.virtual.transport import VirtualTransport
from tests.fakes.scripted_llm import RecordedRequest, Reply, ScriptedChatServer, StreamReply, Token

RATE = 16000
PERIOD_S = 5.0  # one user utterance every 5 s: from the second on, each is a barge-in
FIRST_AT_S = 1.0
SAMPLE_EVERY_S = 10.0
USER_LINES = (
    "Tell me about the moon.",
    "Wait, tell me about the sun instead.",
    "No, tell me about the stars.",
    "Stop, tell me about the sea.",
)
ANSWER = (
    "Here is a long answer so that the user has time to interrupt it. It goes on about the "
    "weather, the tides, the phases of the moon and the history of space travel, and it "
    "would keep going for quite a while if nobody stopped it. It could describe the seasons, "
    "the stars that sailors used to find their way, the first telescopes, and the long quiet "
    "nights when people watched the sky and wondered what was out there beyond the clouds."
)
FAST_WORDS = 16
WORD_DELAY_S = 0.15
#: Below this drift a counter counts as flat whatever the noise (units of each metric).
FLOORS = {
    "rss_mb": 5.0,
    "rss_anon_mb": 5.0,
    "rss_file_mb": 5.0,
    "malloc_in_use_mb": 5.0,
    "traced_mb": 2.0,
    "fds": 1.0,
    "tasks": 2.0,
    "client_contexts": 1.0,
    "server_contexts": 1.0,
}


@dataclass
class Sample:
    """One look at the process, at stream time `t` (seconds)."""

    t: float
    rss_mb: float
    rss_anon_mb: float
    rss_file_mb: float
    malloc_in_use_mb: float  # NaN where mallinfo2 is not available (not glibc)
    malloc_free_mb: float
    traced_mb: float  # NaN without tracemalloc
    fds: int
    tasks: int
    client_contexts: int
    server_contexts: int
    barge_ins: int
    turns: int
    cpu_s: float


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MB: VmRSS, or its part RssAnon / RssFile."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return math.nan


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load_mallinfo2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_mallinfo2 = _load_mallinfo2()


def malloc_mb() -> tuple[float, float]:
    """glibc malloc's (in use, kept free) in MB: bytes handed out and not freed (arena chunks
    plus mmapped blocks), and freed bytes it keeps in its arenas. NaN without mallinfo2."""
    if _mallinfo2 is None:
        return math.nan, math.nan
    info = _mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


def traced_mb() -> float:
    return tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else math.nan


_SNAPSHOT_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def take_snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_SNAPSHOT_FILTERS)


def top_growth(
    baseline: tracemalloc.Snapshot, snapshot: tracemalloc.Snapshot, limit: int = 10
) -> list[dict[str, Any]]:
    """The source lines whose live allocations grew most since `baseline`."""
    growth = []
    stats = sorted(snapshot.compare_to(baseline, "lineno"), key=lambda st: -st.size_diff)
    for stat in stats[:limit]:
        frame = stat.traceback[0]
        growth.append(
            {
                "where": f"{_short_path(frame.filename)}:{frame.lineno}",
                "size_diff_kb": round(stat.size_diff / 1024, 1),
                "size_kb": round(stat.size / 1024, 1),
                "count_diff": stat.count_diff,
            }
        )
    return growth


def _short_path(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.relpath(filename, root) if filename.startswith(root) else filename


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the server's open contexts: a look at its live connections -----------------------------------


def client_contexts(tts: ElevenLabsTTS) -> int:
    sock = tts._socket  # instrumentation: the live socket's protocol, if one is open
    return sock.protocol.counted_contexts if sock is not None and sock.alive else 0


# -- the run -----------------------------------------------------------------------------------


def answer_reply(request: RecordedRequest) -> Reply:
    """The long answer: its first `FAST_WORDS` at once (the agent is speaking within ~0.5 s of
    the end of the user's turn), the rest `WORD_DELAY_S` apart (still streaming at the barge-in,
    and the TTS engine's work stays bounded)."""
    words = [w if i == 0 else " " + w for i, w in enumerate(ANSWER.split(" "))]
    return StreamReply(
        tuple(Token(w, 0.0 if i < FAST_WORDS else WORD_DELAY_S) for i, w in enumerate(words))
    )


async def speak_every_period(
    transport: VirtualTransport, utterances: list[bytes], count: int
) -> None:
    """Inject the user's next utterance every `PERIOD_S` (a bounded count). Cancelling stops."""
    for k in range(count):
        at = FIRST_AT_S + k * PERIOD_S
        await transport.wait_until(at - 0.5)
        transport.inject(
            utterances[k % len(utterances)], at_seconds=max(at, transport.clock_seconds)
        )


async def run(
    minutes: float, *, snapshot_minutes: float = 5.0, trace: bool = True
) -> dict[str, Any]:
    """The soak; returns the figures. Cancelling stops it (servers and clients close)."""
    if trace:
        tracemalloc.start(1)
    engine = await anyio.to_thread.run_sync(PiperEngine.load)
    stt = WhisperSTT()
    await anyio.to_thread.run_sync(stt.load)
    utterances = [
        resample(b"".join(c.pcm for c in engine.synthesize(line)), engine.sample_rate, RATE)
        for line in USER_LINES
    ]
    duration = minutes * 60
    n_utterances = int((duration - FIRST_AT_S - 2.0) // PERIOD_S) + 1
    n_samples = int(duration // SAMPLE_EVERY_S) + 1
    transport = VirtualTransport(
        RATE, block_ms=20, realtime=True, duration_s=duration + 0.5, max_record_s=0.0
    )
    samples: list[Sample] = []
    snapshots: list[dict[str, Any]] = []
    warmup = min(120.0, 0.25 * duration)
    snapshot_times = (
        []
        if not trace
        else [
            warmup + k * snapshot_minutes * 60
            for k in range(int((duration - warmup) // (snapshot_minutes * 60)) + 1)
        ]
    )
    fds_before, tasks_before = open_fds(), len(asyncio.all_tasks())
    started = time.monotonic()
    with anyio.fail_after(duration + 120):
        async with (
            ScriptedChatServer(answer_reply) as fake_llm,
            LocalTTSServer(engine) as server,
            OpenAILLM("scripted", base_url=fake_llm.base_url) as llm,
            ElevenLabsTTS(TTSConfig(output_format=f"pcm_{RATE}"), base_url=server.url) as tts,
        ):
            agent = Agent(
                stt=stt,
                llm=llm,
                tts=tts,
                options=AgentOptions(vad=VadConfig(min_silence_ms=400)),
            )
            live: list[Conversation] = []  # the conversation, once it runs

            async def sample_every_period() -> None:
                """One sample every `SAMPLE_EVERY_S` of stream time (a bounded count)."""
                for i in range(n_samples):
                    await transport.wait_until(i * SAMPLE_EVERY_S)
                    fake_llm.requests.clear()  # the fake's own log: not the framework's memory
                    in_use, kept_free = malloc_mb()
                    sample = Sample(
                        t=round(transport.clock_seconds, 2),
                        rss_mb=round(rss_mb(), 2),
                        rss_anon_mb=round(rss_mb("RssAnon"), 2),
                        rss_file_mb=round(rss_mb("RssFile"), 2),
                        malloc_in_use_mb=round(in_use, 2),
                        malloc_free_mb=round(kept_free, 2),
                        traced_mb=round(traced_mb(), 2),
                        fds=open_fds(),
                        tasks=len(asyncio.all_tasks()),
                        client_contexts=client_contexts(tts),
                        server_contexts=server.active_contexts,
                        barge_ins=live[0].floor.barge_ins if live else 0,
                        turns=len(live[0].log.turns) if live else 0,
                        cpu_s=round(time.process_time(), 2),
                    )
                    samples.append(sample)
                    print(
                        f"  t={sample.t:6.0f} s  rss {sample.rss_mb:7.1f} MB (anon "
                        f"{sample.rss_anon_mb:6.1f} file {sample.rss_file_mb:5.1f})  malloc in use "
                        f"{sample.malloc_in_use_mb:6.1f} free {sample.malloc_free_mb:5.1f}  "
                        f"traced {sample.traced_mb:5.1f}  fds {sample.fds:3d}"
                        f"  tasks {sample.tasks:3d}  contexts {sample.client_contexts}/"
                        f"{sample.server_contexts}  barge-ins {sample.barge_ins:4d}"
                        f"  turns {sample.turns:4d}",
                        flush=True,
                    )

            async def snapshot_at_intervals() -> None:
                """A tracemalloc snapshot at the end of warm-up (the baseline), then every
                `snapshot_minutes`, compared with it (a bounded count). Cancelling stops."""
                baseline: tracemalloc.Snapshot | None = None
                for at in snapshot_times:
                    await transport.wait_until(at)
                    taking = time.monotonic()
                    snapshot = take_snapshot()
                    if baseline is None:
                        baseline = snapshot
                        continue
                    growth = await anyio.to_thread.run_sync(top_growth, baseline, snapshot)
                    snapshots.append(
                        {
                            "t": round(transport.clock_seconds, 1),
                            "since_t": round(snapshot_times[0], 1),
                            "traced_mb": round(traced_mb(), 2),
                            "took_s": round(time.monotonic() - taking, 2),
                            "top_growth": growth,
                        }
                    )
                    print(f"  tracemalloc, growth since t={snapshot_times[0]:.0f} s:")
                    for g in growth[:5]:
                        print(
                            f"    {g['size_diff_kb']:+9.1f} KB  {g['count_diff']:+7d} blocks  "
                            f"{g['where']}"
                        )

            async with (
                transport.running(),
                agent.conversation(transport) as conversation,
                anyio.create_task_group() as tg,
            ):
                live.append(conversation)
                tg.start_soon(speak_every_period, transport, utterances, n_utterances)
                tg.start_soon(sample_every_period)
                tg.start_soon(snapshot_at_intervals)
                await conversation.finished.wait()  # ends with the transport's duration
                tg.cancel_scope.cancel()
    wall = time.monotonic() - started
    await anyio.sleep(0.2)  # let closed sockets' callbacks run
    after = {"fds": open_fds(), "tasks": len(asyncio.all_tasks())}
    return {
        "minutes": minutes,
        "stt": "whisper tiny.en (real)",
        "llm": f"ScriptedChatServer (fake): long answers, {FAST_WORDS} words at once, then 1 "
        f"word per {WORD_DELAY_S * 1000:.0f} ms",
        "tts": "LocalTTSServer + piper (real)",
        "utterances": n_utterances,
        "barge_ins": conversation.floor.barge_ins,
        "turns": len(conversation.log.turns),
        "wall_s": round(wall, 1),
        "cpu_s": round(time.process_time(), 1),
        "history_messages": len(conversation.history),
        "turns_with_heard_words": sum(1 for t in conversation.log.turns if t.heard_text),
        "tracemalloc": "1 frame per allocation" if trace else "off",
        "snapshots": snapshots,
        "before": {"fds": fds_before, "tasks": tasks_before},
        "after_shutdown": after,
        "samples": [asdict(s) for s in samples],
    }


# -- the verdict -------------------------------------------------------------------------------


def fit(ts: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope (per second) and its standard error."""
    n = len(ts)
    if n < 3:
        return 0.0, math.inf
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    sxx = sum((t - mt) ** 2 for t in ts)
    if not sxx:
        return 0.0, math.inf
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sxx
    residuals = [y - (my + slope * (t - mt)) for t, y in zip(ts, ys, strict=True)]
    return slope, math.sqrt(sum(r * r for r in residuals) / (n - 2) / sxx)


def judge(samples: list[dict[str, Any]], duration: float) -> dict[str, dict[str, Any]]:
    """Per resource: first, last, max, slope per 10 min and whether it is flat (see above)."""
    warmup = min(120.0, 0.25 * duration)
    kept = [s for s in samples if s["t"] >= warmup] or samples
    ts = [float(s["t"]) for s in kept]
    window = (ts[-1] - ts[0]) if len(ts) > 1 else 0.0
    verdicts: dict[str, dict[str, Any]] = {}
    for metric, floor in FLOORS.items():
        values = [float(s[metric]) for s in kept]
        if any(math.isnan(v) for v in values):  # not measured here (no glibc, no tracemalloc)
            continue
        slope, error = fit(ts, values)
        drift = abs(slope) * window
        verdicts[metric] = {
            "first": samples[0][metric],
            "last": samples[-1][metric],
            "max": max(s[metric] for s in samples),
            "slope_per_10min": round(slope * 600, 3),
            "slope_stderr_per_10min": round(error * 600, 3) if math.isfinite(error) else None,
            "drift_over_window": round(drift, 3),
            "floor": floor,
            "flat": drift <= floor or abs(slope) <= 2 * error,
        }
    return verdicts


def print_summary(result: dict[str, Any], verdicts: dict[str, dict[str, Any]]) -> None:
    head = ("metric", "first", "last", "max", "slope / 10 min (± 2 SE)", "drift (floor)", "")
    rows = [head]
    for metric, v in verdicts.items():
        error = v["slope_stderr_per_10min"]
        rows.append(
            (
                metric,
                f"{v['first']:g}",
                f"{v['last']:g}",
                f"{v['max']:g}",
                f"{v['slope_per_10min']:+.3f}" + (f" (± {2 * error:.3f})" if error else ""),
                f"{v['drift_over_window']:.2f} ({v['floor']:g})",
                "flat" if v["flat"] else "GROWING",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    print(
        f"\nSoak, {result['minutes']:g} min: {result['utterances']} utterances, "
        f"{result['barge_ins']} barge-ins, {result['turns']} turns "
        f"({result['turns_with_heard_words']} with words heard before the cut), "
        f"CPU {result['cpu_s']} s in {result['wall_s']} s"
    )
    for i, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    before, after = result["before"], result["after_shutdown"]
    print(
        f"after shutdown: fds {after['fds']} (before start {before['fds']}), "
        f"tasks {after['tasks']} (before start {before['tasks']})"
    )
    if result["snapshots"]:
        last = result["snapshots"][-1]
        print(
            f"\ntracemalloc: lines that grew most from t={last['since_t']:g} s to t={last['t']:g} s"
        )
        for g in last["top_growth"]:
            print(
                f"  {g['size_diff_kb']:+9.1f} KB ({g['size_kb']:9.1f} KB live)  "
                f"{g['count_diff']:+7d} blocks  {g['where']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (30)")
    parser.add_argument(
        "--snapshot-minutes",
        type=float,
        default=5.0,
        help="tracemalloc snapshot interval, stream time (5)",
    )
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="run without tracemalloc (its overhead)"
    )
    args = parser.parse_args()
    if args.minutes < 0.5:
        parser.error("--minutes must be at least 0.5 (a few samples are needed)")
    if args.snapshot_minutes <= 0:
        parser.error("--snapshot-minutes must be positive")
    result = anyio.run(
        lambda: run(
            args.minutes, snapshot_minutes=args.snapshot_minutes, trace=not args.no_tracemalloc
        )
    )
    verdicts = judge(result["samples"], args.minutes * 60)
    print_summary(result, verdicts)
    result["verdicts"] = verdicts
    result["flat"] = all(v["flat"] for v in verdicts.values())
    write_json("soak", json.loads(json.dumps(result)))


if __name__ == "__main__":
    main()
