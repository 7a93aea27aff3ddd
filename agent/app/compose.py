"""The composition root: picks, for each stage, the real service or the embedded local one.

This is the one module of `agent` (with `agent.app.cli`) that names plugins, and it imports them
lazily so that `import agent` stays vendor-free.

Rules, per stage:
- An address given (argument or environment variable) is used as it is; nothing local starts.
- Otherwise a key in the environment selects the real service.
- Otherwise the embedded default starts on 127.0.0.1 for the life of the ``async with`` block.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

Progress = Callable[[str], None]


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
    handle: Any = field(default=None, repr=False)

    def describe(self) -> str:
        """A one-line description for status output (never the key)."""
        where = "embedded local server" if self.local else "remote service"
        return f"{self.url} ({where}{', key set' if self.api_key else ''})"


@asynccontextmanager
async def tts_endpoint(
    url: str | None = None, *, progress: Progress | None = None, strict_voices: bool = False
) -> AsyncIterator[Endpoint]:
    """The TTS socket to use: ``url`` / $ELEVENLABS_BASE_URL, the real service with
    $ELEVENLABS_API_KEY, else the local server started here. Leaving the block stops it."""
    key = os.environ.get("ELEVENLABS_API_KEY") or None
    url = url or os.environ.get("ELEVENLABS_BASE_URL") or None
    if url:
        yield Endpoint(url, key)
        return
    if key:
        from plugins.elevenlabs.client import DEFAULT_BASE_URL

        yield Endpoint(DEFAULT_BASE_URL, key)
        return
    from plugins.elevenlabs.server import running_server

    if progress:
        progress("no ELEVENLABS_API_KEY: starting the local TTS server (piper voice)")
    async with running_server(progress=progress, strict_voices=strict_voices) as server:
        if progress:
            progress(f"local TTS server ready on {server.url}")
        yield Endpoint(server.url, None, local=True, handle=server)


@asynccontextmanager
async def llm_endpoint(
    url: str | None = None, *, progress: Progress | None = None
) -> AsyncIterator[Endpoint]:
    """The OpenAI-compatible endpoint: ``url`` / $OPENAI_BASE_URL, the real service with
    $OPENAI_API_KEY, else the local llama.cpp server started here. Leaving the block stops it."""
    key = os.environ.get("OPENAI_API_KEY") or None
    url = url or os.environ.get("OPENAI_BASE_URL") or None
    if url:
        yield Endpoint(url, key)
        return
    if key:
        yield Endpoint("https://api.openai.com/v1", key)
        return
    from plugins.local.llm_server import LocalLLMServer

    if progress:
        progress("no OPENAI_API_KEY: starting the local LLM server (SmolLM2-135M, llama.cpp)")
    async with LocalLLMServer(progress=progress) as server:
        yield Endpoint(server.base_url, None, local=True, handle=server)


async def load_stt(url: str | None = None, *, progress: Progress | None = None) -> Any:
    """The STT: an OpenAI-compatible transcription endpoint when ``url`` is given or
    $OPENAI_API_KEY is set, else the embedded faster-whisper tiny.en (loaded here, once)."""
    key = os.environ.get("OPENAI_API_KEY") or None
    if url or key:
        from plugins.openai.stt import OpenAISTT

        if progress:
            progress(f"STT: OpenAI-compatible transcription at {url or 'the OpenAI service'}")
        return OpenAISTT(base_url=url, api_key=key)
    import anyio

    from plugins.local.whisper_stt import WhisperSTT

    stt = WhisperSTT(progress=progress)
    await anyio.to_thread.run_sync(stt.load)
    return stt
