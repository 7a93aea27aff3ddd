"""voxloop and Pipecat side by side: the same scripted LLM, the same TTS server, turns interleaved.

What is measured, per turn, in each framework's own process and on its monotonic clock (Linux's
CLOCK_MONOTONIC, one clock for every process of the machine, so the bench can line the turns up
with the servers' times too):

  time to first audio   the user's text handed to the framework -> the first audio bytes of the
                        answer reach the framework's output (voxloop: its AudioOutput; Pipecat:
                        a sink processor where the output transport would be)
  CPU per turn          the framework process's CPU seconds (user + system, all threads) over
                        the whole turn: from the hand-over until the answer's audio has all
                        arrived
  peak RSS              the framework process's ru_maxrss at the end of the run

and, from the two servers' records, where the time to first audio went:

  to LLM request        hand-over -> the request reaches the LLM server (the framework's start)
  TTS starts            hand-over -> the TTS server starts synthesizing: the framework has sent
                        it enough text (its text aggregation, and the server's chunk schedule
                        or auto_mode as the framework asks for it)
  engine 1st chunk      the TTS engine's time to its first chunk (piper; the same engine and
                        server for both, and the term the machine's load swells most)
  TTFA less engine      time to first audio minus that: what the frameworks themselves decide

The sides, each a process of its own, driven turn by turn over stdin/stdout JSON lines:
- voxloop (the project's venv, `bench/_side_voxloop.py`): built as `voxloop chat` builds it
  (`make_llm`, `make_tts`, `Session.respond`), pcm_16000;
- Pipecat 1.14 "sentence" (its default text aggregation) and "token"
  (`TextAggregationMode.TOKEN`), in a venv of the bench's own under bench/work/pipecat-venv
  (created on the first run with pip; not a project dependency; `bench/_side_pipecat.py`):
  `OpenAILLMService` -> `ElevenLabsTTSService` -> sink, pcm_16000.
Shared by all three: `ScriptedChatServer` (a fake OpenAI-compatible streaming server from
tests/fakes, on 127.0.0.1, in this process), which answers every request with the same
three-sentence answer, word by word: the first token after 100 ms, then one every 30 ms; and
one local ElevenLabs-compatible TTS server with the piper voice, in its own process
(`bench/_tts_server.py`: `running_server` as `voxloop tts-server --exact-schedule` starts it,
plus its timings). It buffers text as the ElevenLabs service does (the chunk schedule exactly,
without the local server's own early first clause), so each framework meets the server as it
would meet the service, with its own way of getting the first words spoken (voxloop flushes
its first clause; Pipecat's sentence mode asks for auto_mode, its token mode sends tokens).
Each framework's audio is discarded as it arrives (no real-time playout), the same for both.

Turns are interleaved (voxloop, sentence, token, then the next round starting one further on),
--turns each (default 12) after --warmup turns each that are not counted. Targets (issue 13):
voxloop's median time to first audio <= 0.5x Pipecat's, in both modes; CPU per turn <= 1.0x.
The machine is shared: run it under `nice` and read the load average printed with the table.
Each child's standard error goes to bench/work/logs/NAME.log.

    python -m bench.vs_pipecat --turns 12
    python -m bench.vs_pipecat --sides voxloop --turns 2     # no Pipecat venv needed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from agent.app import lifecycle
from agent.app.compose import stderr_progress
from bench._report import print_grid, print_table, summary, verdict, write_json
from plugins.elevenlabs.settings import DEFAULT_VOICE_ID
from tests.fakes.scripted_llm import ScriptedChatServer, StreamReply, Token

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
VENV = WORK / "pipecat-venv"
LOGS = WORK / "logs"
PIPECAT_VERSION = "1.14.0"
PIPECAT_REQUIREMENT = f"pipecat-ai[elevenlabs,openai]=={PIPECAT_VERSION}"
#: Written into the venv once pip has installed Pipecat there, so a broken install is redone.
MARKER = ".voxloop-bench-installed"
INSTALL_DEADLINE_S = 1200.0

ANSWER = (
    "The museum opens at nine tomorrow morning and closes at five, with the last entry at "
    "four. Adult tickets are twelve dollars, and children under six get in free. You can buy "
    "them at the front desk or online before you come."
)
QUESTIONS = (
    "When does the museum open tomorrow?",
    "What time do you open tomorrow, and how much are tickets?",
    "Can I visit the museum tomorrow morning?",
    "Are you open tomorrow?",
)
FIRST_TOKEN_S = 0.100
TOKEN_EVERY_S = 0.030
SAMPLE_RATE = 16000

#: The sides, in the order of a round: name -> what the table calls it.
SIDES = {"voxloop": "voxloop", "sentence": "pipecat sentence", "token": "pipecat token"}
READY_DEADLINE_S = 120.0
TURN_DEADLINE_S = 45.0
QUIT_DEADLINE_S = 8.0

Progress = Callable[[str], None]


def answer_tokens(answer: str = ANSWER) -> list[str]:
    """The answer as the scripted LLM streams it: words, each after its leading space."""
    words = answer.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def scripted_reply(answer: str = ANSWER) -> StreamReply:
    """The reply every request gets: the first token after 100 ms, then one every 30 ms."""
    return StreamReply(
        tuple(
            Token(t, FIRST_TOKEN_S if i == 0 else TOKEN_EVERY_S)
            for i, t in enumerate(answer_tokens(answer))
        )
    )


def first_sentence_at(answer: str = ANSWER) -> float:
    """When the scripted LLM has sent the whole first sentence, in seconds after the request."""
    for i, token in enumerate(answer_tokens(answer)):
        if token.rstrip().endswith((".", "!", "?")):
            return FIRST_TOKEN_S + i * TOKEN_EVERY_S
    return FIRST_TOKEN_S + (len(answer_tokens(answer)) - 1) * TOKEN_EVERY_S


# --- the Pipecat venv -----------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def installed_pipecat(venv: Path) -> str | None:
    """The Pipecat version a finished install left in ``venv``, or None."""
    python = venv_python(venv)
    if not python.exists() or not (venv / MARKER).is_file():
        return None
    if (venv / MARKER).read_text().strip() != PIPECAT_REQUIREMENT:
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    version = probe.stdout.strip()
    return version if probe.returncode == 0 and version == PIPECAT_VERSION else None


def _stream(cmd: Sequence[str], progress: Progress, deadline_s: float) -> tuple[int, list[str]]:
    """Run ``cmd``, telling its progress lines as they come; kill it past ``deadline_s``.
    Returns its exit code and its last lines."""
    keep = ("Collecting", "Building", "Installing", "Successfully", "ERROR")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(deadline_s, process.kill)
    timer.start()
    tail: list[str] = []
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail = [*tail[-19:], line]
            if line.lstrip().startswith(keep):
                progress(f"pip: {line.strip()[:110]}")
        return process.wait(), tail
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def ensure_pipecat_venv(progress: Progress, venv: Path = VENV) -> Path:
    """The Pipecat venv's python: reused when a finished install is there, else created with
    ``python -m venv`` and filled by pip (minutes, once). Exits with what to do if it fails."""
    version = installed_pipecat(venv)
    if version is not None:
        progress(f"Pipecat {version}: reusing {_shown(venv)}")
        return venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if venv.exists() and not venv_python(venv).exists():
        shutil.rmtree(venv)  # a venv whose creation broke off: start again
    if not venv.exists():
        progress(f"creating {_shown(venv)} (python -m venv)")
        created = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
        )
        if created.returncode != 0:
            raise SystemExit(
                f"vs_pipecat: could not create the Pipecat venv at {venv}:\n{created.stderr}"
                "Check that this Python has the venv module (Debian: apt-get install "
                "python3-venv), or run with --sides voxloop."
            )
    progress(f"installing {PIPECAT_REQUIREMENT} with pip: a few minutes, once")
    code, tail = _stream(
        [
            str(venv_python(venv)),
            "-m",
            "pip",
            "install",
            "--progress-bar",
            "off",
            PIPECAT_REQUIREMENT,
        ],
        progress,
        INSTALL_DEADLINE_S,
    )
    if code != 0:
        last = "\n".join(f"    {line}" for line in tail)
        raise SystemExit(
            f"vs_pipecat: pip could not install {PIPECAT_REQUIREMENT} into {_shown(venv)} "
            f"(exit {code}). Its last lines:\n{last}\n"
            "pip must be able to reach the package registry from this machine. Run again to "
            f"retry (the venv is reused), delete {_shown(venv)} to start over, or run with "
            "--sides voxloop to measure voxloop alone."
        )
    (venv / MARKER).write_text(PIPECAT_REQUIREMENT + "\n")
    version = installed_pipecat(venv)
    if version is None:
        raise SystemExit(
            f"vs_pipecat: pip finished but pipecat-ai {PIPECAT_VERSION} is not importable in "
            f"{_shown(venv)}; delete that folder and run again."
        )
    progress(f"Pipecat {version} installed")
    return venv_python(venv)


# --- processes ------------------------------------------------------------------------------


class LineReader:
    """JSON lines from a child's standard output."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._buffer = BufferedByteReceiveStream(stream)

    async def line(self) -> bytes:
        return await self._buffer.receive_until(b"\n", 1 << 20)


async def _stop(process: anyio.abc.Process, name: str) -> None:
    """Terminate, then kill, a child still running; bounded, and safe to call when cancelled."""
    with anyio.move_on_after(QUIT_DEADLINE_S, shield=True):
        if process.returncode is None:
            with anyio.move_on_after(QUIT_DEADLINE_S / 2):
                await process.wait()
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(QUIT_DEADLINE_S / 2):
                await process.wait()
    if process.returncode is None:
        print(f"vs_pipecat: {name} did not stop; killing it", file=sys.stderr)
        process.kill()
        with anyio.move_on_after(2, shield=True):
            await process.wait()


def _log(name: str) -> IO[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    return (LOGS / f"{name}.log").open("wb")


@dataclass
class TTSServer:
    """The shared TTS server's process (`bench._tts_server`) and its address."""

    process: anyio.abc.Process
    reader: LineReader
    url: str = ""

    async def new_contexts(self) -> list[dict[str, Any]]:
        """The server's timings of the contexts opened since the last call, on the shared
        monotonic clock."""
        assert self.process.stdin is not None
        await self.process.stdin.send(b"?\n")
        with anyio.fail_after(10):
            contexts: list[dict[str, Any]] = json.loads(await self.reader.line())["contexts"]
        return contexts


@asynccontextmanager
async def tts_server_process() -> AsyncIterator[TTSServer]:
    """The local TTS server with the piper voice, on a free loopback port, in its own
    process; stopped after."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    with _log("tts-server") as log:
        process = await anyio.open_process(
            [sys.executable, "-m", "bench._tts_server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            env=env,
        )
        try:
            assert process.stdout is not None
            server = TTSServer(process, LineReader(process.stdout))
            try:
                with anyio.fail_after(READY_DEADLINE_S):
                    server.url = json.loads(await server.reader.line())["url"]
            except (anyio.IncompleteRead, anyio.EndOfStream, TimeoutError) as err:
                raise RuntimeError(f"the TTS server did not start: see {log.name}") from err
            yield server
        finally:
            if process.stdin is not None:
                with anyio.move_on_after(1, shield=True):
                    try:
                        await process.stdin.aclose()  # its end of input: it stops
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
            await _stop(process, "the TTS server")


@dataclass
class Side:
    """One framework's process and what its turns measured."""

    name: str
    process: anyio.abc.Process
    reader: LineReader
    ready: dict[str, Any] = field(default_factory=dict)
    turns: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_kb: int = 0

    @property
    def label(self) -> str:
        return SIDES[self.name]

    async def ask(self, message: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        """Send one command, wait for its one-line answer."""
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send((json.dumps(message) + "\n").encode())
            with anyio.fail_after(deadline_s):
                answer: dict[str, Any] = json.loads(await self.reader.line())
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError) as err:
            raise RuntimeError(f"{self.label} stopped: see {LOGS / self.name}.log") from err
        except TimeoutError as err:
            raise RuntimeError(
                f"{self.label} did not answer within {deadline_s:.0f} s: see {LOGS / self.name}.log"
            ) from err
        return answer


def side_command(name: str, llm_url: str, tts_url: str, pipecat: Path | None) -> list[str]:
    urls = ["--llm-url", llm_url, "--tts-url", tts_url, "--sample-rate", str(SAMPLE_RATE)]
    if name == "voxloop":
        return [sys.executable, "-m", "bench._side_voxloop", *urls]
    assert pipecat is not None
    script = ROOT / "bench" / "_side_pipecat.py"
    return [str(pipecat), str(script), "--mode", name, "--voice", DEFAULT_VOICE_ID, *urls]


@asynccontextmanager
async def side_process(name: str, cmd: list[str]) -> AsyncIterator[Side]:
    """Start one side, wait for its ready line; tell it to quit (then stop it) after."""
    env = dict(os.environ)
    if name == "voxloop":
        env["PYTHONPATH"] = str(ROOT)
    else:
        env.pop("PYTHONPATH", None)  # the Pipecat side imports nothing of the project
    with _log(name) as log:
        process = await anyio.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env=env
        )
        try:
            assert process.stdout is not None
            side = Side(name, process, LineReader(process.stdout))
            try:
                with anyio.fail_after(READY_DEADLINE_S):
                    side.ready = json.loads(await side.reader.line())
            except (anyio.IncompleteRead, anyio.EndOfStream, TimeoutError) as err:
                raise RuntimeError(f"{side.label} did not start: see {log.name}") from err
            yield side
        finally:
            if process.stdin is not None:
                with anyio.move_on_after(1, shield=True):
                    try:
                        await process.stdin.send(b'{"op": "quit"}\n')
                        await process.stdin.aclose()
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
            await _stop(process, SIDES[name])


# --- turns ----------------------------------------------------------------------------------


def _words(text: str) -> str:
    return " ".join(text.split())


def turn_row(
    reply: dict[str, Any], requests: Sequence[Any], question: str, contexts: list[dict[str, Any]]
) -> dict[str, Any]:
    """One turn's figures, in ms, from a side's report and the LLM and TTS servers' records."""
    handed = reply["handed_at"]
    first = reply["first_audio_at"]
    row: dict[str, Any] = {
        "question": question,
        "ttfa_ms": None if first is None else (first - handed) * 1000,
        "cpu_ms": reply["cpu_s"] * 1000,
        "turn_ms": (reply["done_at"] - handed) * 1000,
        "audio_s": reply["audio_bytes"] / 2 / SAMPLE_RATE,
        "whole_answer": _words(reply["spoken"]) == _words(ANSWER),
        "llm_requests": len(requests),
        "error": reply.get("error"),
    }
    if requests:
        request = requests[0]
        asked = [m.get("content") for m in request.messages if m.get("role") == "user"]
        row["asked_right"] = bool(asked) and asked[-1] == question
        row["to_llm_request_ms"] = (request.received_at - handed) * 1000
        if request.step_times and first is not None:
            row["first_token_to_audio_ms"] = (first - request.step_times[0]) * 1000
    spoken = [c for c in contexts if c.get("first_synthesize_at") is not None]
    tts = min(spoken, key=lambda c: c["first_synthesize_at"]) if spoken else {}
    row["tts_contexts"] = len(spoken)
    if tts.get("first_synthesize_at") is not None:
        row["to_synthesis_ms"] = (tts["first_synthesize_at"] - handed) * 1000
    if tts.get("engine_first_chunk_s") is not None:
        row["engine_first_chunk_ms"] = tts["engine_first_chunk_s"] * 1000
        if row["ttfa_ms"] is not None:
            row["ttfa_less_engine_ms"] = row["ttfa_ms"] - row["engine_first_chunk_ms"]
    return row


def rounds(names: Sequence[str], count: int) -> list[list[str]]:
    """``count`` rounds of the sides, each starting one further on: A B C, B C A, C A B ..."""
    return [[names[(r + i) % len(names)] for i in range(len(names))] for r in range(count)]


async def measure(names: Sequence[str], turns: int, warmup: int, gap: float) -> dict[str, Any]:
    progress = stderr_progress("vs_pipecat")
    pipecat = None
    if any(n != "voxloop" for n in names):
        pipecat = await anyio.to_thread.run_sync(ensure_pipecat_venv, progress)
    load_before = os.getloadavg()
    async with AsyncExitStack() as stack:
        llm = await stack.enter_async_context(ScriptedChatServer([scripted_reply()]))
        progress("starting the local TTS server (piper voice)")
        tts = await stack.enter_async_context(tts_server_process())
        progress(f"TTS server on {tts.url}; scripted LLM on {llm.base_url}")
        sides: dict[str, Side] = {}
        for name in names:
            progress(f"starting {SIDES[name]}")
            cmd = side_command(name, llm.base_url, tts.url, pipecat)
            sides[name] = await stack.enter_async_context(side_process(name, cmd))
        total = warmup + turns
        for r, order in enumerate(rounds(names, total)):
            question = QUESTIONS[r % len(QUESTIONS)]
            for name in order:
                side = sides[name]
                seen = len(llm.chat_requests)
                await tts.new_contexts()  # forget contexts opened before this turn
                reply = await side.ask({"op": "turn", "text": question}, TURN_DEADLINE_S)
                contexts = await tts.new_contexts()
                row = turn_row(reply, llm.chat_requests[seen:], question, contexts)
                if r >= warmup:
                    side.turns.append(row)
                await anyio.sleep(gap)
            counted = "warm-up" if r < warmup else f"turn {r - warmup + 1}/{turns}"
            progress(f"round {r + 1}/{total} ({counted}) done")
        for side in sides.values():
            side.peak_rss_kb = (await side.ask({"op": "stats"}, 10))["peak_rss_kb"]
    return {
        "sides": {name: side_result(side) for name, side in sides.items()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


def side_result(side: Side) -> dict[str, Any]:
    rows = side.turns

    def values(key: str) -> list[float]:
        return [r[key] for r in rows if r.get(key) is not None]

    ttfa = values("ttfa_ms")
    return {
        "label": side.label,
        "ttfa_ms": summary(ttfa) if ttfa else None,
        "cpu_ms": summary(values("cpu_ms")),
        "turn_ms": summary(values("turn_ms")),
        "to_llm_request_ms": _median(values("to_llm_request_ms")),
        "first_token_to_audio_ms": _median(values("first_token_to_audio_ms")),
        "to_synthesis_ms": _median(values("to_synthesis_ms")),
        "engine_first_chunk_ms": _median(values("engine_first_chunk_ms")),
        "ttfa_less_engine_ms": _median(values("ttfa_less_engine_ms")),
        "audio_s": _median(values("audio_s")),
        "whole_answer_turns": sum(1 for r in rows if r["whole_answer"]),
        "errors": [r["error"] for r in rows if r["error"]],
        "peak_rss_mb": side.peak_rss_kb / 1024,
        "rss_at_ready_mb": side.ready.get("rss_kb", 0) / 1024,
        "turns": rows,
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --- the report -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def ratios(sides: dict[str, Any]) -> dict[str, dict[str, float]]:
    """voxloop / Pipecat for each Pipecat mode measured: medians of TTFA and CPU, peak RSS."""
    ours = sides.get("voxloop")
    out: dict[str, dict[str, float]] = {}
    if ours is None or ours["ttfa_ms"] is None:
        return out
    for mode in ("sentence", "token"):
        theirs = sides.get(mode)
        if theirs is None or theirs["ttfa_ms"] is None:
            continue
        out[mode] = {
            "ttfa_median": ours["ttfa_ms"]["median"] / theirs["ttfa_ms"]["median"],
            "ttfa_p95": ours["ttfa_ms"]["p95"] / theirs["ttfa_ms"]["p95"],
            "cpu_median": ours["cpu_ms"]["median"] / theirs["cpu_ms"]["median"],
            "ttfa_less_engine_median": _ratio(
                ours["ttfa_less_engine_ms"], theirs["ttfa_less_engine_ms"]
            ),
            "peak_rss": ours["peak_rss_mb"] / theirs["peak_rss_mb"],
        }
    return out


def _ratio(ours: float | None, theirs: float | None) -> float:
    return float("nan") if ours is None or not theirs else ours / theirs


def report(result: dict[str, Any], turns: int) -> None:
    sides = result["sides"]
    head = (
        "framework",
        "TTFA median",
        "TTFA p95",
        "to LLM request",
        "TTS starts",
        "engine 1st chunk",
        "TTFA less engine",
        "CPU/turn median",
        "peak RSS",
        "audio/turn",
        "whole answer",
    )
    grid = []
    for side in sides.values():
        ttfa = side["ttfa_ms"] or {}
        grid.append(
            (
                side["label"],
                _ms(ttfa.get("median")),
                _ms(ttfa.get("p95")),
                _ms(side["to_llm_request_ms"]),
                _ms(side["to_synthesis_ms"]),
                _ms(side["engine_first_chunk_ms"]),
                _ms(side["ttfa_less_engine_ms"]),
                f"{side['cpu_ms']['median']:.0f} ms",
                f"{side['peak_rss_mb']:.0f} MB",
                f"{side['audio_s']:.1f} s",
                f"{side['whole_answer_turns']}/{len(side['turns'])}",
            )
        )
    before = " ".join(f"{x:.1f}" for x in result["load_average_before"])
    after = " ".join(f"{x:.1f}" for x in result["load_average_after"])
    print_grid(
        f"voxloop vs Pipecat {PIPECAT_VERSION}, {turns} turns each, interleaved "
        f"(load average before {before}, after {after}; 2 shared cores: noisy)",
        head,
        grid,
    )
    print(
        f"  scripted LLM: first token {FIRST_TOKEN_S * 1000:.0f} ms, then one every "
        f"{TOKEN_EVERY_S * 1000:.0f} ms; {len(answer_tokens())} tokens, {len(ANSWER)} chars; "
        f"first sentence complete {first_sentence_at() * 1000:.0f} ms after the request"
    )
    rows = []
    for mode, r in result["ratios"].items():
        rows += [
            (
                f"TTFA median, voxloop / pipecat {mode}",
                f"{r['ttfa_median']:.2f}x",
                "<= 0.5x",
                verdict(r["ttfa_median"], 0.5),
            ),
            (f"TTFA p95, voxloop / pipecat {mode}", f"{r['ttfa_p95']:.2f}x", "", ""),
            (
                f"  TTFA less the engine's first chunk, voxloop / pipecat {mode}",
                f"{r['ttfa_less_engine_median']:.2f}x",
                "",
                "",
            ),
            (
                f"CPU per turn, voxloop / pipecat {mode}",
                f"{r['cpu_median']:.2f}x",
                "<= 1.0x",
                verdict(r["cpu_median"], 1.0),
            ),
            (f"peak RSS, voxloop / pipecat {mode}", f"{r['peak_rss']:.2f}x", "", ""),
        ]
    if rows:
        print_table("Ratios (medians)", rows)
    for side in sides.values():
        if side["errors"]:
            print(f"  {side['label']}: turns with errors: {side['errors'][:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=12, help="counted turns per side (default 12)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="uncounted turns per side first, to connect and warm up (default 2)",
    )
    parser.add_argument(
        "--sides",
        default=",".join(SIDES),
        help="which sides, comma-separated, from: voxloop, sentence, token (default: all); "
        "voxloop alone needs no Pipecat venv",
    )
    parser.add_argument(
        "--gap", type=float, default=0.3, help="seconds of rest between turns (default 0.3)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.sides.split(",") if n.strip()]
    unknown = [n for n in names if n not in SIDES]
    if unknown or not names or args.turns < 1 or args.warmup < 0:
        parser.error(f"--sides takes {', '.join(SIDES)}; --turns >= 1, --warmup >= 0")
    lifecycle.install()  # SIGTERM and SIGHUP stop the run as Ctrl-C does: children stopped
    try:
        result = anyio.run(measure, names, args.turns, args.warmup, args.gap)
    except KeyboardInterrupt:
        print("\nvs_pipecat: interrupted; every process it started has been stopped")
        raise SystemExit(lifecycle.exit_status(130)) from None
    result["ratios"] = ratios(result["sides"])
    report(result, args.turns)
    write_json(
        "vs_pipecat",
        {
            "pipecat": PIPECAT_REQUIREMENT,
            "turns": args.turns,
            "warmup": args.warmup,
            "order": [SIDES[n] for n in names],
            "llm": {
                "first_token_s": FIRST_TOKEN_S,
                "token_every_s": TOKEN_EVERY_S,
                "answer": ANSWER,
                "tokens": len(answer_tokens()),
                "first_sentence_complete_s": first_sentence_at(),
            },
            "sample_rate": SAMPLE_RATE,
            **result,
        },
    )


if __name__ == "__main__":
    main()
