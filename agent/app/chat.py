"""`voxloop chat`: type a line, hear the answer (or get it written to WAV files).

When standard input is not a terminal it reads one user turn per line and exits at the end, so
it can be scripted: ``printf 'Hi\\nWhat is two plus two?\\n' | voxloop chat``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from agent.app.compose import (
    DEFAULT_INSTRUCTIONS,
    REMOTE_MODEL,
    AgentSettings,
    Progress,
    llm_endpoint,
    load_tools,
    make_llm,
    make_tts,
    stderr_progress,
    tools_notice,
    tts_endpoint,
)
from agent.conversation import TurnRecord
from agent.events import AgentText, Event
from agent.file_output import WavFileOutput
from agent.interfaces import AudioOutput
from agent.session import Session
from agent.timeline import MonotonicClock
from agent.tools import ToolBox


def add_agent_options(p: argparse.ArgumentParser) -> None:
    """The options shared by the conversational commands."""
    p.add_argument(
        "--llm-url",
        help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL, the "
        "real service with OPENAI_API_KEY, else the local llama.cpp server)",
    )
    p.add_argument(
        "--model",
        help=f"chat model (default: {REMOTE_MODEL} with a key, else the embedded SmolLM2-135M)",
    )
    p.add_argument(
        "--tts-url",
        help="ElevenLabs-protocol server (default: $ELEVENLABS_BASE_URL, "
        "the real service with ELEVENLABS_API_KEY, else the local TTS server)",
    )
    p.add_argument("--voice", help="TTS voice id")
    p.add_argument(
        "--instructions",
        "--system",
        default=DEFAULT_INSTRUCTIONS,
        help="the agent's instructions (system prompt)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=80,
        help="cap on each answer's length (default: %(default)s)",
    )
    p.add_argument(
        "--tools",
        metavar="FILE",
        help="a Python file whose @tool functions the agent may call (see examples/tool_agent.py)",
    )
    p.add_argument(
        "--sentence-mode",
        action="store_true",
        help="send whole sentences to TTS instead of words as they arrive",
    )


def settings_from(args: argparse.Namespace) -> AgentSettings:
    return AgentSettings(
        llm_url=args.llm_url,
        tts_url=args.tts_url,
        model=args.model,
        voice=args.voice,
        instructions=args.instructions,
        max_tokens=args.max_tokens,
        sentence_mode=args.sentence_mode,
        tools_file=args.tools,
    )


def _read_lines(interactive: bool) -> list[str] | None:
    if interactive:
        return None
    return [line.strip() for line in sys.stdin if line.strip()]


@asynccontextmanager
async def speaker_or_files(
    rate: int, out: str | None, clock: MonotonicClock, progress: Progress
) -> AsyncIterator[tuple[AudioOutput, WavFileOutput | None]]:
    """The speaker when one exists (and --out was not given), else WAV files in --out."""
    if out is None:
        from agent.errors import AudioDeviceError
        from plugins.sounddevice import SoundDeviceTransport

        speaker = SoundDeviceTransport(rate, use_input=False)
        try:
            async with speaker.running():
                progress("playing answers on the speaker")
                yield speaker.output, None
                await speaker.output.drain()
            return
        except AudioDeviceError as err:
            progress(f"no speaker ({err}); writing answers to output/ instead")
            out = "output"
    files = WavFileOutput(rate, Path(out), clock)
    yield files, files


def metrics_writer(path: str | None) -> Callable[[TurnRecord], None]:
    """Per-turn metrics as structured events: JSON lines in ``path`` (and the
    `voxloop.metrics` logger at INFO, for any log pipeline)."""
    metrics_log = logging.getLogger("voxloop.metrics")

    def write(record: TurnRecord) -> None:
        event = {"event": "turn", "turn": record.index, **record.to_dict()}
        metrics_log.info(json.dumps(event))
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(event) + "\n")

    return write


class Typist:
    """Lines typed at the terminal, read by a daemon thread one at a time, on request: a
    `input()` blocked in a worker thread would hold the process at exit after SIGTERM or
    SIGHUP, while a daemon thread does not."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self._wanted = threading.Event()
        self._send, self._lines = anyio.create_memory_object_stream[str | None](1)
        self._thread: threading.Thread | None = None

    async def next_line(self) -> str | None:
        """The next line (None at end of input). Cancelling stops waiting; the thread stays
        blocked in `input()` and dies with the process."""
        if self._thread is None:
            token = anyio.lowlevel.current_token()
            self._thread = threading.Thread(target=self._read, args=(token,), daemon=True)
            self._thread.start()
        self._wanted.set()
        return await self._lines.receive()

    def _read(self, token: anyio.lowlevel.EventLoopToken) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                line: str | None = input(self.prompt)
            except (EOFError, OSError):
                line = None
            try:
                anyio.from_thread.run_sync(self._send.send_nowait, line, token=token)
            except (RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the loop is gone
            if line is None:
                return


class ChatLine:
    """What the built-in voice tools reach in a typed chat: `end_call` ends it after the
    answer; there is no keypad."""

    def __init__(self) -> None:
        self.ended = False

    def end_after_turn(self) -> None:
        self.ended = True

    def take_digits(self) -> str:
        return ""


def cmd_chat(args: argparse.Namespace) -> int:
    """Type a line, hear the answer."""
    settings = settings_from(args)
    progress = stderr_progress()
    interactive = sys.stdin.isatty()
    scripted = _read_lines(interactive)
    structured = metrics_writer(args.metrics_json)

    def show_text(event: Event) -> None:
        if isinstance(event, AgentText):
            print(event.text, end="", flush=True)

    def turn_end(record: TurnRecord) -> None:
        print()
        print(f"  [turn {record.index}: {record.timeline.summary_line()}]", file=sys.stderr)
        if record.error is not None:
            print(f"  [turn ended early: {record.error}]", file=sys.stderr, flush=True)
        structured(record)

    clock = MonotonicClock()
    typist = Typist("you> ")
    tools = load_tools(settings.tools_file)
    chat = ChatLine()

    async def main() -> None:
        async with (
            llm_endpoint(settings.llm_url, progress=progress) as llm_ep,
            tts_endpoint(settings.tts_url, progress=progress) as tts_ep,
            speaker_or_files(settings.sample_rate, args.out, clock, progress) as (output, files),
        ):
            progress(f"LLM: {llm_ep.describe()}")
            progress(f"TTS: {tts_ep.describe()}")
            async with (
                make_llm(settings, llm_ep) as llm,
                make_tts(settings, tts_ep, settings.sample_rate) as tts,
                ToolBox(tools, context=chat) as toolbox,
            ):
                tools_notice(llm, tools, progress)
                session = Session(
                    llm,
                    tts,
                    output,
                    instructions=settings.instructions,
                    clock=clock,
                    sentence_mode=settings.sentence_mode,
                    on_event=show_text,
                    toolbox=toolbox if tools else None,
                )
                n = 0
                while not chat.ended:
                    if scripted is not None:
                        if n >= len(scripted):
                            break
                        line = scripted[n]
                        print(f"you> {line}")
                    else:
                        typed = await typist.next_line()
                        if typed is None:
                            break
                        line = typed.strip()
                        if not line:
                            continue
                    n += 1
                    print("agent> ", end="", flush=True)
                    record = TurnRecord(n)
                    record.timeline.mark("end_of_turn", clock.now())
                    await session.respond(line, record)
                    if output.first_played_at is not None:
                        record.timeline.mark("first_audio_played", output.first_played_at)
                    turn_end(record)
                    path = files.save(f"chat-turn-{n}.wav") if files is not None else None
                    if path is not None:
                        print(f"  [audio: {path}]", file=sys.stderr, flush=True)

    anyio.run(main)
    return 0


def register(sub: Any) -> None:
    """Add `chat` to the CLI's subcommands."""
    p = sub.add_parser(
        "chat",
        help="type a line, hear the answer (offline on the embedded defaults)",
        description="A text-in, voice-out conversation. Each answer streams into the TTS socket "
        "word by word as the LLM produces it and plays on the speaker (or, with no sound "
        "device or with --out, is written to WAV files). Piped input is read one user turn "
        "per line, and the command exits at its end.",
    )
    add_agent_options(p)
    p.add_argument(
        "--out",
        default=None,
        help="write each answer to a WAV file in this folder instead of playing it "
        "(default: the speaker when there is one, else output/)",
    )
    p.add_argument(
        "--metrics-json", metavar="FILE", help="append each turn's metrics to FILE as JSON lines"
    )
    p.set_defaults(handler=cmd_chat)
