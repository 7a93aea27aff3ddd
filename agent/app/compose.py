"""The composition root: picks, for each stage, the real service or the embedded local one.

This is the one module of `agent` (with `agent.app.cli`) that names plugins, and it imports them
lazily so that `import agent` stays vendor-free.

Rules, per stage:
- An address given (argument or environment variable) is used as it is; nothing local starts.
- Otherwise a key in the environment selects the real service.
- Otherwise the embedded default starts on 127.0.0.1 for the life of the ``async with`` block.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import VoxloopError
from agent.interfaces import STT, TurnDetector
from agent.tools import Tool

if TYPE_CHECKING:
    from plugins.elevenlabs.client import ElevenLabsTTS
    from plugins.elevenlabs.server import LocalTTSServer
    from plugins.local.llm_server import LocalLLMServer
    from plugins.openai.llm import OpenAILLM

Progress = Callable[[str], None]

DEFAULT_INSTRUCTIONS = (
    "You are a friendly voice assistant. Answer in one or two short, plain sentences."
)
LOCAL_MODEL = "smollm2-135m-instruct"
REMOTE_MODEL = "gpt-4o-mini"
# A conversational turn wants its first words fast: start generating at 50 buffered characters
# (the protocol's minimum) instead of 120; the flush ends each turn anyway.
AGENT_SCHEDULE = (50, 120, 160, 250)


@dataclass
class AgentSettings:
    """What the conversational commands share: models, addresses, instructions."""

    llm_url: str | None = None
    tts_url: str | None = None
    model: str | None = None
    voice: str | None = None
    tts_model: str = "eleven_flash_v2_5"
    instructions: str = DEFAULT_INSTRUCTIONS
    max_tokens: int = 80
    temperature: float = 0.3
    sentence_mode: bool = False
    sample_rate: int = 16000
    tools_file: str | None = None
    end_of_turn: str = "smart"  # or "silence"


def stderr_progress(prefix: str = "voxloop") -> Progress:
    """A progress printer for long steps (model loading, server start), with elapsed time."""
    start = time.monotonic()

    def emit(message: str) -> None:
        print(f"[{prefix} {time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    return emit


@dataclass
class Endpoint:
    """Where a stage is reached. ``api_key`` is never printed (see ``__repr__``)."""

    url: str
    api_key: str | None = field(default=None, repr=False)
    local: bool = False

    def describe(self) -> str:
        """A one-line description for status output (never the key)."""
        where = "embedded local server" if self.local else "remote service"
        return f"{self.url} ({where}{', key set' if self.api_key else ''})"


@dataclass
class TTSEndpoint(Endpoint):
    """The TTS socket; ``server`` is the local server when it runs in this process."""

    server: LocalTTSServer | None = field(default=None, repr=False)


@dataclass
class LLMEndpoint(Endpoint):
    """The OpenAI-compatible endpoint; ``server`` is the local llama.cpp server we started."""

    server: LocalLLMServer | None = field(default=None, repr=False)

    def describe(self) -> str:
        """A one-line description for status output (never the key)."""
        where = "embedded local server" if self.local else "remote service"
        return f"{self.url} ({where}{', key set' if self.api_key else ''})"


@asynccontextmanager
async def tts_endpoint(
    url: str | None = None,
    *,
    progress: Progress | None = None,
    strict_voices: bool = False,
    clients: int | None = None,
) -> AsyncIterator[TTSEndpoint]:
    """The TTS socket to use: ``url`` / $ELEVENLABS_BASE_URL, the real service with
    $ELEVENLABS_API_KEY, else the local server started here (taking at least ``clients``
    sockets from this machine, e.g. one per phone call). Leaving the block stops it."""
    key = os.environ.get("ELEVENLABS_API_KEY") or None
    url = url or os.environ.get("ELEVENLABS_BASE_URL") or None
    if url:
        yield TTSEndpoint(url, key)
        return
    if key:
        from plugins.elevenlabs.client import DEFAULT_BASE_URL

        yield TTSEndpoint(DEFAULT_BASE_URL, key)
        return
    from plugins.elevenlabs.server import (
        MAX_CONNECTIONS,
        MAX_CONNECTIONS_PER_ADDRESS,
        running_server,
    )

    if progress:
        progress("no ELEVENLABS_API_KEY: starting the local TTS server (piper voice)")
    wanted = 0 if clients is None else clients + 4  # every client is on 127.0.0.1
    async with running_server(
        progress=progress,
        strict_voices=strict_voices,
        max_connections=max(MAX_CONNECTIONS, wanted),
        max_connections_per_address=max(MAX_CONNECTIONS_PER_ADDRESS, wanted),
    ) as server:
        if progress:
            progress(f"local TTS server ready on {server.url}")
        yield TTSEndpoint(server.url, None, local=True, server=server)


@asynccontextmanager
async def llm_endpoint(
    url: str | None = None, *, progress: Progress | None = None
) -> AsyncIterator[LLMEndpoint]:
    """The OpenAI-compatible endpoint: ``url`` / $OPENAI_BASE_URL, the real service with
    $OPENAI_API_KEY, else the local llama.cpp server started here. Leaving the block stops it."""
    key = os.environ.get("OPENAI_API_KEY") or None
    url = url or os.environ.get("OPENAI_BASE_URL") or None
    if url:
        yield LLMEndpoint(url, key)
        return
    if key:
        yield LLMEndpoint("https://api.openai.com/v1", key)
        return
    from plugins.local.llm_server import LocalLLMServer

    if progress:
        progress("no OPENAI_API_KEY: starting the local LLM server (SmolLM2-135M, llama.cpp)")
    async with LocalLLMServer(progress=progress) as server:
        yield LLMEndpoint(server.base_url, None, local=True, server=server)


async def load_turn_detector(mode: str, *, progress: Progress | None = None) -> TurnDetector | None:
    """The end-of-turn model for ``mode`` "smart" (Smart Turn v3, loaded here, once), or None
    for "silence" (turns end on silence alone). If the model is not installed, says so and
    falls back to silence: a conversation never fails for want of it."""
    if mode == "silence":
        return None
    if mode != "smart":
        raise ValueError(f"end of turn must be 'smart' or 'silence', got {mode!r}")
    import anyio

    try:
        from plugins.local.smart_turn import SmartTurn

        detector = SmartTurn()
        if progress:
            progress("end of turn: loading Smart Turn v3 (the end-of-turn model)")
        await anyio.to_thread.run_sync(detector.load)
    except (ImportError, RuntimeError) as err:
        if progress:
            progress(f"end of turn: {err}; ending turns on silence instead")
        return None
    return detector


def remote_stt(url: str | None = None) -> bool:
    """Whether `load_stt` picks an STT service (``url``, or $OPENAI_API_KEY) over the embedded
    whisper: a service bills by the request, so the apps do not transcribe early for it."""
    return bool(url or os.environ.get("OPENAI_API_KEY"))


async def load_stt(url: str | None = None, *, progress: Progress | None = None) -> STT:
    """The STT: an OpenAI-compatible transcription endpoint when ``url`` is given or
    $OPENAI_API_KEY is set, else the embedded faster-whisper tiny.en (loaded here, once)."""
    key = os.environ.get("OPENAI_API_KEY") or None
    if remote_stt(url):
        from plugins.openai.stt import OpenAISTT

        if progress:
            progress(f"STT: OpenAI-compatible transcription at {url or 'the OpenAI service'}")
        return OpenAISTT(base_url=url, api_key=key)
    import anyio

    from plugins.local.whisper_stt import WhisperSTT

    stt = WhisperSTT(progress=progress)
    await anyio.to_thread.run_sync(stt.load)
    return stt


def make_llm(settings: AgentSettings, ep: Endpoint) -> OpenAILLM:
    """The OpenAI-compatible LLM for an endpoint (open it with ``async with``)."""
    from plugins.openai.llm import OpenAILLM

    model = settings.model or (LOCAL_MODEL if ep.local else REMOTE_MODEL)
    return OpenAILLM(
        model,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        base_url=ep.url,
        api_key=ep.api_key,
        # The embedded SmolLM2-135M never calls a tool (measured), and llama-cpp-python's
        # server cannot stream a freely chosen call: say so once instead of pretending.
        can_call_tools=not ep.local,
    )


def load_tools(path: str | None) -> list[Tool[..., Any]]:
    """The `@tool` functions defined in the Python file ``path`` (none when ``path`` is None).

    Raises `VoxloopError` naming the file when it cannot be loaded or defines no tool."""
    if path is None:
        return []
    file = Path(path)
    if not file.is_file():
        raise VoxloopError(
            f"--tools {path}: no such file (give a Python file with @tool functions)"
        )
    spec = importlib.util.spec_from_file_location(f"voxloop_tools_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise VoxloopError(f"--tools {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise VoxloopError(f"--tools {path}: loading it failed: {err!r}") from err
    found = [value for value in vars(module).values() if isinstance(value, Tool)]
    if not found:
        raise VoxloopError(
            f"--tools {path}: defines no tool; decorate functions with @tool "
            "(from agent import tool)"
        )
    return found


def tools_notice(llm: OpenAILLM, tools: Sequence[Tool[..., Any]], progress: Progress) -> None:
    """Say once, at start, which tools the agent has, or that its model cannot call them."""
    if not tools:
        return
    warning = llm.tool_warning([each.schema for each in tools])
    progress(warning or f"tools: {', '.join(each.name for each in tools)}")


def make_tts(
    settings: AgentSettings,
    ep: Endpoint,
    sample_rate: int,
    *,
    output_format: str | None = None,
    decode_audio: bool = True,
) -> ElevenLabsTTS:
    """The ElevenLabs-protocol TTS connection for an endpoint, producing PCM at ``sample_rate``
    (or ``output_format``, e.g. ulaw_8000 for phone lines, passed through undecoded when
    ``decode_audio`` is False). Open it with ``async with``."""
    from plugins.elevenlabs.client import DEFAULT_VOICE_ID, ElevenLabsTTS, TTSConfig
    from plugins.elevenlabs.protocol import GenerationConfig

    config = TTSConfig(
        voice_id=settings.voice or DEFAULT_VOICE_ID,
        model_id=settings.tts_model,
        output_format=output_format or f"pcm_{sample_rate}",
        generation_config=GenerationConfig(chunk_length_schedule=AGENT_SCHEDULE),
        decode_audio=decode_audio,
    )
    return ElevenLabsTTS(config, api_key=ep.api_key, base_url=ep.url)
