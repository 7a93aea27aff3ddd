"""Phone calls over loopback: our caller against our phone server, N at once. Three modes.

``--mode tone`` (the default; one process): the bot (`ToneBot`, no engines) greets with a 1.5 s
tone; the caller speaks over it 0.5 s in (barge-in), falls silent, gets an answer, hangs up.
Measured per call: barge-in reaction (caller's onset -> `clear`, target p95 <= 150 ms), time to
first audio (the bot waits 200 ms of silence; target p95 <= 350 ms), and pacing (largest gap
between bot frames within a reply, target <= 60 ms).

``--mode fake``: how many calls one core of the framework carries. The bot process (this one)
runs `PhoneBot` (agent/app/phone.py) behind the real phone server with named fakes for the
engines: `FakeInstantSTT` (a fixed transcript at once), `FakeScriptedLLM` (a fixed reply, a word
every 20 ms), and TTS through the real ElevenLabs client to `bench.silent_server` in its own
process (`FakeSilentEngine`, served as ulaw_8000). VAD (webrtcvad), turn-taking, the Twilio
protocol, pacing and marks are the product's. The callers run in another process
(`bench.phone_callers`), so their CPU is not counted: N concurrent calls, each greeted, saying
two real spoken questions (piper), getting two answers, hanging up. For each N of a ladder:
- event-loop lag of the bot process: a task sleeps 5 ms in a loop; its oversleep, p50/p99;
- outbound pacing: the largest gap between the bot's frames within a reply, at the caller
  (frames are 20 ms: a gap above 40 ms is a frame more than 20 ms late);
- time to first audio (the caller stops -> the first bot frame at the caller), which includes
  the 500 ms end-of-turn silence;
- CPU per call (bot-process CPU seconds per call-second) and RSS per call (peak RSS above the
  warmed-up baseline, divided by N);
- the share of the machine's CPU time its VM host took meanwhile (steal, from /proc/stat).
Criteria: lag p99 < 10 ms, no frame more than 20 ms late, every call answered. A gap during
which the callers' own loop stalled (a lag over 15 ms in the caller process) is left out of
that verdict and shown apart: the caller then reads frames late whenever they were sent, and on
a VM both processes stall at once when the host takes the CPUs (seen at every N, 50 included).
The ladder stops at the first N that misses; calls per core = the largest N that met them (one
event loop). The bot runs without recording calls, as a bot on the public API does
(examples/telephony_bot.py); ``--record`` records and writes each call, as `voxloop phone` does.

``--mode real``: the same calls on the embedded real engines, composed as `voxloop phone` does
(whisper tiny.en STT, the llama.cpp server with SmolLM2-135M, the local piper TTS server on
ulaw_8000), with the demo's prompt and questions, at small N. Criteria as above plus first
audio p95 <= 1.5 s. At N=1 the turns are split into stages as `bench.voice_to_voice` splits the
demo's (the local TTS server's timings joined by context id *and* connection: every call has its
own socket, whose first context is "ctx-1"). ``--demo-turns K`` runs the demo's measurement
first, in this process, on the same engines, and a second table puts the call's time to first
audio (the caller's speech end -> the first media frame out, on the bot's clock) next to the
demo's voice-to-voice, stage by stage, with the differences (target: within 20 ms). The same
questions go to both (``--questions`` and ``--rounds`` at N=1: one call per question).

    python -m bench.phone_calls --mode tone --calls 1 4 8
    python -m bench.phone_calls --mode fake --calls 10 25 50 100 150 200 --max-calls 200
    python -m bench.phone_calls --mode real --calls 1 2 4 --demo-turns 4
    python -m bench.phone_calls --mode real --calls 1 --questions 5 --rounds 5 --demo-turns 5

Bounded: every N is capped by --max-calls; a call lasts at most --max-seconds; the caller
process is bounded in time; loopback only.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench._report import percentile, print_table, summary, verdict, write_json
from bench.phone_callers import SPIKE_S
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
from plugins.twilio.server import running_phone_server, uvicorn_config

Row = tuple[str, str, str, str]

# ---- mode tone: ToneBot, one process ----------------------------------------------------------

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


def main_tone(args: argparse.Namespace) -> None:
    data: dict[str, Any] = {}
    rows: list[Row] = []
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


# ---- modes fake and real: PhoneBot here, the callers in their own process -------------------

LAG_PERIOD = 0.005
LAG_LIMIT = 0.010
GC_PAUSE_S = 0.005  # a garbage collection worth naming in the report
GAP_LIMIT = 0.040  # two frames: the frame after it came more than 20 ms late
FIRST_AUDIO_LIMIT = 1.5  # real engines only
FAKE_REPLY = (
    "Sure. We open at nine in the morning tomorrow and stay open until six in the evening, "
    "and the kitchen takes orders until half past five."
)


class CpuSplit:
    """With ``--cpu-split`` (fake mode's default on two or more cores): the bot process keeps
    CPU 0 to itself, and the processes it starts (the callers, the silent TTS server) run on the
    others, so "calls per core" is one core's worth, not the bot's share of a machine the callers
    also load. Linux only; a no-op elsewhere or on one core."""

    def __init__(self, enabled: bool) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self.enabled = enabled and len(cpus) >= 2
        self.bot, self.others = set(cpus[:1]), set(cpus[1:])
        if self.enabled:  # before any worker thread starts: threads inherit it
            os.sched_setaffinity(0, self.bot)

    @contextmanager
    def spawning(self) -> Iterator[None]:
        """Start child processes inside this: a fork inherits the calling thread's CPUs."""
        if not self.enabled:
            yield
            return
        os.sched_setaffinity(0, self.others)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.bot)

    def note(self) -> str:
        if not self.enabled:
            return "bot and callers share the machine's cores"
        return f"bot pinned to CPU {min(self.bot)}, callers and TTS server on the others"


CPU_SPLIT = CpuSplit(False)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Probe:
    """The bot process while a step runs: loop oversleep, peak RSS, peak live calls."""

    lags: list[float] = field(default_factory=list)
    rss_peak: int = 0
    live_peak: int = 0
    spikes: list[tuple[float, float]] = field(default_factory=list)  # (perf_counter, lag)
    #: garbage collections over GC_PAUSE_S: (perf_counter at the end, generation, seconds)
    gc_pauses: list[tuple[float, int, float]] = field(default_factory=list)
    _gc_started: float = 0.0

    def _gc_callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif now - self._gc_started > GC_PAUSE_S and len(self.gc_pauses) < 200:
            self.gc_pauses.append(
                (round(now, 3), info["generation"], round(now - self._gc_started, 4)))

    async def run(self, app: PhoneApp, stop: anyio.Event) -> None:
        gc.callbacks.append(self._gc_callback)
        try:
            await self._run(app, stop)
        finally:
            gc.callbacks.remove(self._gc_callback)

    async def _run(self, app: PhoneApp, stop: anyio.Event) -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            await anyio.sleep(LAG_PERIOD)
            now = time.perf_counter()
            self.lags.append(now - t - LAG_PERIOD)
            if now - t - LAG_PERIOD > SPIKE_S and len(self.spikes) < 200:
                self.spikes.append((round(now, 3), round(now - t - LAG_PERIOD, 4)))
            i += 1
            if i % 20 == 0:
                self.rss_peak = max(self.rss_peak, rss_bytes())
                self.live_peak = max(self.live_peak, len(app.live))


@asynccontextmanager
async def serving(app: PhoneApp, helper: bool = False) -> AsyncIterator[str]:
    """The phone server on a free loopback port, as `voxloop phone` runs it (uvicorn on a TCP
    socket whose connections get TCP_NODELAY); yields its base URL. With ``helper``, through
    `running_phone_server` instead, whose socket is made with proto 0, so asyncio leaves Nagle on
    for its connections (see the report: a frame after each mark then arrives late)."""
    if helper:
        async with running_phone_server(app) as url:
            yield url
        return
    import uvicorn

    from plugins.asgi import HeapKeeper

    app.heap = HeapKeeper()  # the garbage-collection policy `voxloop phone` serves with
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
    try:
        async with app.heap.keeping(), anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                    await anyio.sleep(0.02)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


def make_voices(folder: Path, texts: list[str], rate: int = 8000) -> list[str]:
    """The caller's questions as WAVs at `rate`, made once by `bench.phone_callers voices`
    (piper runs in that process, so the bot's memory does not hold it)."""
    cmd = [sys.executable, "-m", "bench.phone_callers", "voices", str(folder), "--rate", str(rate)]
    for text in texts:
        cmd += ["--text", text]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"making the caller's voice failed:\n{done.stderr[-2000:]}")
    return done.stdout.split()


@dataclass
class Stage:
    """One N of the ladder: what the callers and the bot process measured."""

    n: int
    callers: dict[str, Any]
    probe: Probe
    cpu_s: float
    rss_base: int
    bot_turns: list[Any]
    rounds: int = 1
    steal: float | None = None  # share of the machine's CPU time the host took meanwhile

    @property
    def calls(self) -> list[dict[str, Any]]:
        return list(self.callers.get("calls", []))

    def first_audio(self) -> list[float]:
        return [x for c in self.calls for x in c.get("first_audio_s", [])]

    def max_gap(self) -> float:
        return max((c.get("max_gap_s", 0.0) for c in self.calls), default=0.0)

    def caller_stalled(self, gap: float, at: float) -> bool:
        """Whether the callers' own loop stalled during a gap that ended ``at`` (s into the
        caller run): frames then wait in the caller's socket and are read late, in a burst,
        whenever the bot sent them."""
        lo, hi = at - gap, at
        return any(end - lag - LAG_PERIOD <= hi and end >= lo
                   for end, lag in self._caller_spikes())

    def _caller_spikes(self) -> list[tuple[float, float]]:
        t0 = float(self.callers.get("t0_clock", 0.0))
        return [(end - t0, lag) for end, lag in self.callers.get("caller_lag_spikes", [])]

    def bot_gap(self) -> float:
        """`max_gap`, leaving out the gaps during which the callers' loop stalled (the
        measuring side: on a VM both processes stall at once when the host takes the CPUs,
        see `steal`); a call whose late gaps all coincide counts as GAP_LIMIT."""
        worst = 0.0
        for c in self.calls:
            late = [g for g, at in c.get("late_gaps", []) if not self.caller_stalled(g, at)]
            gap = c.get("max_gap_s", 0.0)
            worst = max(worst, max(late, default=min(gap, GAP_LIMIT)))
        return worst

    def failed(self) -> list[str]:
        bad = []
        if len(self.calls) < self.n * self.rounds:
            bad.append(f"{self.n * self.rounds - len(self.calls)} call(s) never reported")
        for c in self.calls:
            if "error" in c:
                bad.append(f"{c['call_sid']}: {c['error']}")
            elif not c["first_audio_s"]:
                bad.append(f"{c['call_sid']}: not answered")
            elif c["clears"] or c["violations"]:
                bad.append(f"{c['call_sid']}: {c['clears']} clears, {c['violations']}")
        return bad

    def call_seconds(self) -> float:
        return float(sum(c.get("seconds", 0.0) for c in self.calls))

    def lag(self, q: float) -> float:
        return percentile(self.probe.lags, q) if self.probe.lags else 0.0

    def passed(self, first_audio_limit: float | None) -> bool:
        ok = self.lag(99) < LAG_LIMIT and self.bot_gap() <= GAP_LIMIT
        ok = ok and not self.failed()
        if first_audio_limit is not None:
            firsts = self.first_audio()
            ok = ok and bool(firsts) and percentile(firsts, 95) <= first_audio_limit
        return ok

    def to_json(self) -> dict[str, Any]:
        secs = self.call_seconds()
        firsts = self.first_audio()
        return {
            "calls": self.n,
            "rounds": self.rounds,
            "live_peak": self.probe.live_peak,
            "loop_lag_s": summary(self.probe.lags) if self.probe.lags else None,
            "loop_lag_spikes": self.probe.spikes,  # (time.perf_counter(), lag s) over SPIKE_S
            "gc_pauses": self.probe.gc_pauses,  # (time.perf_counter(), generation, s)
            "max_frame_gap_s": self.max_gap(),
            "max_frame_gap_bot_s": self.bot_gap(),
            "steal": self.steal,
            "late_frames": sum(c.get("late_frames", 0) for c in self.calls),
            "first_audio_s": summary(firsts) if firsts else None,
            "bot_cpu_s": self.cpu_s,
            "call_seconds": secs,
            "cpu_per_call_second": self.cpu_s / secs if secs else None,
            "rss_base_bytes": self.rss_base,
            "rss_peak_bytes": self.probe.rss_peak,
            "rss_per_call_bytes": (self.probe.rss_peak - self.rss_base) / self.n,
            "failures": self.failed(),
            "callers": {k: v for k, v in self.callers.items() if k != "calls"},
            "bot_turns": self.bot_turns,
            "per_call": self.calls,
        }


async def run_stage(
    app: PhoneApp,
    bot: Any,
    url: str,
    voices: list[str],
    n: int,
    rss_base: int,
    args: argparse.Namespace,
    turns_of: Callable[[Any], list[Any]],
    rounds: int | None = None,
) -> Stage:
    """N concurrent calls from a caller process (each placing `rounds` calls in turn, default
    --rounds); the bot process probed meanwhile."""
    rounds = rounds or args.rounds
    bot.finished.clear()  # PhoneBot keeps every ended call (see the report): start each N empty
    bot.calls.clear()
    gc.collect()
    cmd = [sys.executable, "-m", "bench.phone_callers", "call", url, "--calls", str(n)]
    cmd += ["--stagger", str(args.stagger), "--max-seconds", str(args.max_seconds)]
    cmd += ["--max-calls", str(args.max_calls), "--rounds", str(rounds)]
    cmd += ["--hang-up-after", str(args.hang_up_after)]
    for v in voices:
        cmd += ["--say", v]
    probe = Probe(rss_peak=rss_bytes())
    stop = anyio.Event()
    cpu0 = time.process_time()
    steal0 = cpu_ticks()
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe.run, app, stop)
        with anyio.fail_after(rounds * args.max_seconds + args.stagger + 60):
            with CPU_SPLIT.spawning():
                process = await anyio.open_process(cmd)
            async with process:
                out, err = await gather_output(process)
        done = subprocess.CompletedProcess(cmd, process.returncode or 0, out, err)
        with anyio.move_on_after(5):  # the bot's side of the last calls winds down
            await app.wait_idle()
        stop.set()
    cpu_s = time.process_time() - cpu0
    steal1 = cpu_ticks()
    steal = None
    if steal0 is not None and steal1 is not None and steal1[1] > steal0[1]:
        steal = (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
    try:
        callers = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        callers = {"calls": [], "error": done.stderr.decode()[-2000:]}
    turns = [t for conversation in bot.finished for t in turns_of(conversation)]
    return Stage(n, callers, probe, cpu_s, rss_base, turns, rounds, steal)


def cpu_ticks() -> tuple[int, int] | None:
    """The machine's stolen and total CPU ticks so far (/proc/stat; Linux only): on a VM,
    "steal" is the time the host ran something else while this machine wanted the CPU."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


async def gather_output(process: Any) -> tuple[bytes, bytes]:
    """A child's whole stdout and stderr, read side by side until it exits."""
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    async def drain(stream: Any, key: str) -> None:
        async for chunk in stream:
            chunks[key].append(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, process.stdout, "out")
        tg.start_soon(drain, process.stderr, "err")
    await process.wait()
    return b"".join(chunks["out"]), b"".join(chunks["err"])


def stage_rows(stage: Stage, first_audio_limit: float | None) -> list[Row]:
    n = stage.n
    lag99, lag50 = stage.lag(99), stage.lag(50)
    gap = stage.max_gap()
    firsts = stage.first_audio()
    secs = stage.call_seconds()
    cpu = stage.cpu_s / secs if secs else float("nan")
    rss = (stage.probe.rss_peak - stage.rss_base) / n
    failures = stage.failed()
    rows: list[Row] = [
        (
            f"{n} calls: bot loop lag p50 / p99",
            f"{lag50 * 1000:.2f} / {lag99 * 1000:.1f} ms",
            "p99 < 10 ms",
            verdict(lag99, LAG_LIMIT),
        ),
        (
            f"{n} calls: max frame gap in a reply",
            f"{gap * 1000:.0f} ms",
            "",
            "",
        ),
        (
            f"{n} calls: ... not while the callers stalled",
            f"{stage.bot_gap() * 1000:.0f} ms",
            "<= 40 ms",
            verdict(stage.bot_gap(), GAP_LIMIT),
        ),
        (
            f"{n} calls: CPU time the VM's host took",
            "unknown" if stage.steal is None else f"{stage.steal * 100:.1f} %",
            "",
            "(steal)",
        ),
    ]
    if firsts:
        fa95 = percentile(firsts, 95)
        rows.append(
            (
                f"{n} calls: first audio p50 / p95",
                f"{statistics.median(firsts) * 1000:.0f} / {fa95 * 1000:.0f} ms",
                "" if first_audio_limit is None else f"p95 <= {first_audio_limit:.1f} s",
                "" if first_audio_limit is None else verdict(fa95, first_audio_limit),
            )
        )
    rows += [
        (f"{n} calls: bot CPU per call", f"{cpu * 100:.2f} % of a core", "", ""),
        (f"{n} calls: bot RSS per call", f"{rss / 1024:.0f} KiB", "", ""),
        (
            f"{n} calls: callers' own loop lag p99",
            f"{stage.callers.get('caller_lag_p99_s', float('nan')) * 1000:.1f} ms",
            "",
            "(caller process)",
        ),
    ]
    if failures:
        rows.append((f"{n} calls: failed calls", f"{len(failures)}: {failures[0]}", "0", "MISS"))
    return rows


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


async def ladder(
    app: PhoneApp,
    bot: Any,
    url: str,
    voices: list[str],
    args: argparse.Namespace,
    first_audio_limit: float | None,
    turns_of: Callable[[Any], list[Any]],
) -> tuple[list[Stage], int, int]:
    """Warm up with one call, then step N up; stop at the first N that misses."""
    warm = await run_stage(app, bot, url, voices, 1, rss_bytes(), args, turns_of, rounds=1)
    print(f"warm-up call: first audio {warm.first_audio()}", file=sys.stderr, flush=True)
    gc.collect()
    base = rss_bytes()
    stages: list[Stage] = []
    best = 0
    for n in sorted({min(n, args.max_calls) for n in args.calls}):
        stage = await run_stage(app, bot, url, voices, n, base, args, turns_of)
        stages.append(stage)
        ok = stage.passed(first_audio_limit)
        print(
            f"N={n}: lag p99 {stage.lag(99) * 1000:.1f} ms, max gap "
            f"{stage.max_gap() * 1000:.0f} ms ({stage.bot_gap() * 1000:.0f} ms not while the "
            f"callers stalled), live peak {stage.probe.live_peak}, "
            f"{'ok' if ok else 'MISS'} ({load_note()})",
            file=sys.stderr,
            flush=True,
        )
        if not ok and not args.keep_going:
            break
        if ok and best == (stages[-2].n if len(stages) > 1 else 0):
            best = n  # the largest N with every N up to it met
    return stages, best, base


def bot_options() -> Any:
    from agent import AgentOptions, VadConfig
    from agent.echo import EchoConfig

    # `voxloop phone`'s defaults: 500 ms end of turn, the echo guard off on phone lines
    return AgentOptions(vad=VadConfig(min_silence_ms=500), echo=EchoConfig(enabled=False))


def no_turns(conversation: Any) -> list[Any]:
    return []


async def fake_mode(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from agent.app.compose import AgentSettings, TTSEndpoint
    from agent.app.phone import PhoneBot
    from bench.fakes import FakeInstantSTT, FakeScriptedLLM, silent_server_process
    from bench.phone_callers import QUESTIONS

    voices = await anyio.to_thread.run_sync(make_voices, folder, list(QUESTIONS[:2]))
    async with AsyncExitStack() as stack:
        with CPU_SPLIT.spawning():
            server = silent_server_process(max_connections=args.max_calls + 10)
            tts_url = await stack.enter_async_context(server)
        bot = PhoneBot(
            settings=AgentSettings(instructions="You answer the phone."),
            options=bot_options(),
            stt=FakeInstantSTT(),
            llm=FakeScriptedLLM(FAKE_REPLY, first_token=0.05, delay=0.02),
            tts_endpoint=TTSEndpoint(tts_url, None, local=True),
            out_dir=folder / "calls" if args.record else None,  # --record: as `voxloop phone`
            say=lambda _line: None,
        )
        app = PhoneApp(bot, PhoneConfig(max_calls=args.max_calls + 10))
        async with serving(app, args.helper_socket) as url:
            stages, best, base = await ladder(app, bot, url, voices, args, None, no_turns)
    rows: list[Row] = []
    for stage in stages:
        rows += stage_rows(stage, None)
    rows.append(
        (
            "calls per core (largest N that met both)",
            f"{best}" + ("" if not stages or best < stages[-1].n else " (ladder top: raise it)"),
            ">= 100",
            verdict(100, best),
        )
    )
    met = [s for s in stages if s.n == best]
    if met:
        cpu = met[0].cpu_s / met[0].call_seconds()
        rows.append(("  CPU-bound estimate at that N", f"{1 / cpu:.0f} calls per core", "", ""))
    recorded = "calls recorded and written" if args.record else "calls not recorded"
    print_table(
        f"phone calls on the framework alone (fake engines, {recorded}); {load_note()}; "
        f"{CPU_SPLIT.note()}",
        rows,
    )
    return {
        "mode": "fake",
        "recorded": bool(args.record),
        "load": load_note(),
        "cpus": CPU_SPLIT.note(),
        "fakes": "FakeInstantSTT, FakeScriptedLLM (first token 50 ms, a word per 20 ms), "
        "FakeSilentEngine behind bench.silent_server (ulaw_8000)",
        "reply": FAKE_REPLY,
        "calls_per_core": best,
        "rss_base_bytes": base,
        "stages": [s.to_json() for s in stages],
    }


async def real_mode(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from agent.app.compose import (
        AgentSettings,
        llm_endpoint,
        load_stt,
        make_llm,
        stderr_progress,
        tts_endpoint,
    )
    from agent.app.demo import DEMO_PROMPT, add_tts_timings
    from agent.app.phone import DEFAULT_GREETING, PhoneBot
    from agent.audio import read_wav
    from bench.phone_vs_demo import (
        Pair,
        Turn,
        answered,
        demo_turn,
        forget_prompt,
        paired_turns,
        versus_demo,
    )
    from bench.voice_to_voice import QUESTIONS, breakdown

    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL"):
        if os.environ.get(key):
            raise SystemExit(f"--mode real measures the embedded engines: unset {key}")
    texts = list(QUESTIONS[: args.questions])
    voices = await anyio.to_thread.run_sync(make_voices, folder, texts)
    demo_voices: list[bytes] = []
    if args.demo_turns:  # the same questions in the demo's user voice, at the demo's rate
        paths = await anyio.to_thread.run_sync(make_voices, folder / "demo", texts, 16000)
        demo_voices = [read_wav(path).pcm for path in paths]
    progress = stderr_progress("bench")
    # temperature 0: one question gets one answer, so the two paths' LLM stages compare
    settings = AgentSettings(instructions=DEMO_PROMPT, max_tokens=90, temperature=0.0)
    stt = await load_stt(None, progress=progress)
    async with (
        llm_endpoint(None, progress=progress) as llm_ep,
        tts_endpoint(None, progress=progress) as tts_ep,
        make_llm(settings, llm_ep) as llm,
    ):
        server = tts_ep.server

        def turns_of(conversation: Any) -> list[Any]:
            if server is not None:
                add_tts_timings(conversation.log, server)
            return breakdown(conversation.log)

        bot = PhoneBot(
            settings=settings,
            options=bot_options(),
            stt=stt,
            llm=llm,
            tts_endpoint=tts_ep,
            out_dir=folder / "calls" if args.record else None,  # --record: as `voxloop phone`
            say=lambda _line: None,
        )
        app = PhoneApp(bot, PhoneConfig(max_calls=args.max_calls + 10))
        stages: list[Stage] = []
        best, base = 0, rss_bytes()
        caller_firsts: list[float] = []
        pairs: list[Pair] = []
        async with serving(app, args.helper_socket) as url:
            if args.demo_turns:

                async def on_demo(i: int) -> list[Turn]:
                    voice = demo_voices[i % len(demo_voices)]
                    return await demo_turn(
                        voice,
                        stt=stt,
                        llm=llm,
                        tts_ep=tts_ep,
                        settings=settings,
                        greeting=DEFAULT_GREETING,
                    )

                async def on_phone(i: int) -> list[Turn]:
                    one_call = [voices[i % len(voices)]]
                    stage = await run_stage(
                        app, bot, url, one_call, 1, rss_bytes(), args, turns_of, rounds=1
                    )
                    caller_firsts.extend(stage.first_audio())
                    # the call's log (run_stage's turns_of has added the TTS server's timings)
                    return [t for conversation in bot.finished for t in answered(conversation.log)]

                def say(line: str) -> None:
                    print(line, file=sys.stderr, flush=True)

                async def forget() -> None:
                    await forget_prompt(llm)

                say(f"phone vs demo: a warm-up turn each, then {args.demo_turns} in turn")
                await paired_turns(1, on_demo, on_phone, lambda _line: None)
                caller_firsts.clear()
                pairs = await paired_turns(args.demo_turns, on_demo, on_phone, say, forget)
            if not args.no_ladder:
                stages, best, base = await ladder(
                    app, bot, url, voices, args, FIRST_AUDIO_LIMIT, turns_of
                )
    rows: list[Row] = []
    for stage in stages:
        rows += stage_rows(stage, FIRST_AUDIO_LIMIT)
    rows.append(("calls this machine sustains (real engines)", f"{best}", "", ""))
    one = next((s for s in stages if s.n == 1), None)
    data: dict[str, Any] = {
        "mode": "real",
        "load": load_note(),
        "engines": f"STT faster-whisper tiny.en; LLM {llm_ep.describe()}; TTS {tts_ep.describe()}",
        "calls_sustained": best,
        "rss_base_bytes": base,
        "stages": [s.to_json() for s in stages],
    }
    if one is not None and one.bot_turns:
        med = {k: statistics.median(t[k] for t in one.bot_turns) for k in one.bot_turns[0]}
        data["n1_median_ms"] = med
        rows.append(
            (
                "N=1: first audio at the caller (median)",
                f"{statistics.median(one.first_audio()) * 1000:.0f} ms",
                "",
                "",
            )
        )
        rows.append(
            ("N=1: bot's voice-to-voice (median)", f"{med['voice_to_voice']:.0f} ms", "", "")
        )
        rows.append(("N=1: phone framework share (median)", f"{med['framework']:.1f} ms", "", ""))
    if stages:
        print_table(f"phone calls on the real local engines; {load_note()}", rows)
    if args.demo_turns:
        compared, data["versus_demo"] = versus_demo(pairs, caller_firsts)
        print_table(
            "time to first audio: a phone call vs the demo's line, same engines, taking turns "
            f"(medians over {data['versus_demo']['pairs']} questions; {load_note()})",
            compared,
        )
        print(
            "  phone: `voxloop phone`'s bot + our caller, 8 kHz μ-law, first media frame out; "
            "demo: the virtual transport, 16 kHz, first sample played. Differences are medians "
            "of per-question differences; the engine stages vary with the audio path and the "
            "load, the framework share is the like-for-like part."
        )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("tone", "fake", "real"), default="tone")
    parser.add_argument("--calls", type=int, nargs="+", help="the N to try, in order")
    parser.add_argument("--max-calls", type=int, help="cap on N (tone 16, fake 300, real 8)")
    parser.add_argument("--max-seconds", type=float, help="per call (fake 20, real 60)")
    parser.add_argument("--stagger", type=float, default=2.0, help="spread call starts (s)")
    parser.add_argument("--rounds", type=int, help="calls each caller places in turn (2; real 3)")
    parser.add_argument(
        "--hang-up-after", type=float, help="caller hangs up after this silence (2 s; real 10)"
    )
    parser.add_argument("--questions", type=int, default=3, help="real: how many questions")
    parser.add_argument(
        "--helper-socket",
        action="store_true",
        help="serve through plugins.twilio.server.running_phone_server (Nagle left on)",
    )
    parser.add_argument(
        "--cpu-split",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the bot on CPU 0 alone, the callers and servers on the other cores (default: on "
        "in fake mode, off otherwise)",
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="measure every N, even after a miss"
    )
    parser.add_argument(
        "--record", action="store_true",
        help="record every call and write its files, as `voxloop phone` does (default: as a "
        "bot on the public API, such as examples/telephony_bot.py, runs: no recording)",
    )
    parser.add_argument(
        "--demo-turns",
        type=int,
        default=0,
        help="real: this many questions asked both on the phone and on the demo's line, in "
        "turn, on the same engines (time to first audio vs the demo's voice-to-voice)",
    )
    parser.add_argument(
        "--no-ladder", action="store_true", help="real: only the --demo-turns comparison"
    )
    args = parser.parse_args()
    defaults = {
        "tone": ([1, 4, 8], 16, 10.0, 1, 0.0),
        "fake": ([10, 25, 50, 100, 150, 200, 250, 300], 300, 20.0, 2, 2.0),
        "real": ([1, 2, 4], 8, 60.0, 3, 10.0),
    }[args.mode]
    args.rounds = args.rounds or defaults[3]
    args.hang_up_after = args.hang_up_after or defaults[4]
    args.calls = args.calls or defaults[0]
    args.max_calls = args.max_calls or defaults[1]
    args.max_seconds = args.max_seconds or defaults[2]
    global CPU_SPLIT
    split = args.mode == "fake" if args.cpu_split is None else args.cpu_split
    CPU_SPLIT = CpuSplit(split)
    if args.mode == "tone":
        main_tone(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        mode = fake_mode if args.mode == "fake" else real_mode
        data = anyio.run(mode, args, Path(tmp))
    write_json(f"phone_calls_{args.mode}", data)


if __name__ == "__main__":
    main()
