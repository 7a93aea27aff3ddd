"""`voxloop chat`: type a line, hear the answer (or get it written to WAV files).

When standard input is not a terminal it reads one user turn per line and exits at the end, so
it can be scripted: ``printf 'Hi\\nWhat is two plus two?\\n' | voxloop chat``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from agent.app.compose import Endpoint, llm_endpoint, stderr_progress, tts_endpoint
from agent.file_output import WavFileOutput
from agent.session import Session, SessionHooks, TurnResult

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short, plain sentences."
)
LOCAL_MODEL = "smollm2-135m-instruct"
AGENT_SCHEDULE = (50, 120, 160, 250)
REMOTE_MODEL = "gpt-4o-mini"


@dataclass
class AgentSettings:
    """What `chat`, `run` and `demo` share: models, addresses, prompt."""

    llm_url: str | None = None
    tts_url: str | None = None
    model: str | None = None
    voice: str | None = None
    tts_model: str = "eleven_flash_v2_5"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 80
    temperature: float = 0.3
    sentence_mode: bool = False
    sample_rate: int = 16000


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
    p.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT, help="system prompt")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=80,
        help="cap on each answer's length (default: %(default)s)",
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
        system_prompt=args.system,
        max_tokens=args.max_tokens,
        sentence_mode=args.sentence_mode,
    )


def make_llm(settings: AgentSettings, ep: Endpoint) -> Any:
    """The OpenAI-compatible LLM for an endpoint."""
    from plugins.openai.llm import OpenAILLM

    model = settings.model or (LOCAL_MODEL if ep.local else REMOTE_MODEL)
    return OpenAILLM(
        model,
        system_prompt=settings.system_prompt,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        base_url=ep.url,
        api_key=ep.api_key,
    )


def make_tts(settings: AgentSettings, ep: Endpoint, sample_rate: int) -> Any:
    """The ElevenLabs-protocol TTS connection for an endpoint, producing PCM at ``sample_rate``."""
    from plugins.elevenlabs.client import DEFAULT_VOICE_ID, ElevenLabsTTS, TTSConfig
    from plugins.elevenlabs.protocol import GenerationConfig

    config = TTSConfig(
        voice_id=settings.voice or DEFAULT_VOICE_ID,
        model_id=settings.tts_model,
        output_format=f"pcm_{sample_rate}",
        # A conversational turn wants its first words fast: start generating at 50 buffered
        # characters (the protocol's minimum) instead of 120; the flush ends each turn anyway.
        generation_config=GenerationConfig(chunk_length_schedule=AGENT_SCHEDULE),
    )
    return ElevenLabsTTS(config, api_key=ep.api_key, base_url=ep.url)


def _read_lines(interactive: bool) -> list[str] | None:
    if interactive:
        return None
    return [line.strip() for line in sys.stdin if line.strip()]


@asynccontextmanager
async def speaker_or_files(
    rate: int, out: str | None, progress: Any
) -> AsyncIterator[tuple[Any, WavFileOutput | None]]:
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
    files = WavFileOutput(rate, Path(out))
    yield files, files


def metrics_writer(path: str | None) -> Any:
    """Per-turn metrics as structured events: JSON lines in ``path`` (and the
    `voxloop.metrics` logger at INFO, for any log pipeline)."""
    metrics_log = logging.getLogger("voxloop.metrics")

    def write(result: TurnResult) -> None:
        event = {"event": "turn", **result.metrics.to_dict(), "interrupted": result.interrupted}
        metrics_log.info(json.dumps(event))
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(event) + "\n")

    return write


def cmd_chat(args: argparse.Namespace) -> int:
    """Type a line, hear the answer."""
    settings = settings_from(args)
    progress = stderr_progress()
    interactive = sys.stdin.isatty()
    scripted = _read_lines(interactive)
    structured = metrics_writer(args.metrics_json)

    def show_text(piece: str) -> None:
        print(piece, end="", flush=True)

    def turn_end(result: TurnResult) -> None:
        print()
        print(f"  [{result.metrics.summary_line()}]", file=sys.stderr, flush=True)
        if result.error is not None:
            print(f"  [turn ended early: {result.error}]", file=sys.stderr, flush=True)
        structured(result)

    async def main() -> None:
        async with (
            llm_endpoint(settings.llm_url, progress=progress) as llm_ep,
            tts_endpoint(settings.tts_url, progress=progress) as tts_ep,
            speaker_or_files(settings.sample_rate, args.out, progress) as (output, files),
        ):
            progress(f"LLM: {llm_ep.describe()}")
            progress(f"TTS: {tts_ep.describe()}")
            async with (
                make_llm(settings, llm_ep) as llm,
                make_tts(settings, tts_ep, settings.sample_rate) as tts,
            ):
                session = Session(
                    llm,
                    tts,
                    output,
                    sentence_mode=settings.sentence_mode,
                    hooks=SessionHooks(on_text_sent=show_text, on_turn_end=turn_end),
                )
                n = 0
                while True:
                    if scripted is not None:
                        if n >= len(scripted):
                            break
                        line = scripted[n]
                        print(f"you> {line}")
                    else:
                        try:
                            line = (await anyio.to_thread.run_sync(input, "you> ")).strip()
                        except EOFError:
                            break
                        if not line:
                            continue
                    n += 1
                    print("agent> ", end="", flush=True)
                    started = time.monotonic()
                    await session.respond(line, user_speech_end=started)
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
