"""Fakes for benchmarks, named so: they script timing, they are not the product.

- `FakeTokenLLM`: an in-process LLM that yields a scripted token list as fast as possible (or
  with a delay), recording when each delta was handed to the framework.
- `FakeSilentEngine`: a speech engine that returns short silence at once, so a benchmark of the
  framework's own overhead is not dominated by synthesis. The server and socket stay real.
- `FakeInstantSTT`: a speech-to-text that returns one fixed `Transcript` at once, whatever it
  is given (the utterance still went through the real VAD and turn-taking to get there).
- `FakeScriptedLLM`: an in-process LLM that yields a fixed reply word by word, one
  `TextDelta` every `delay` seconds after a `first_token` wait: a fast model with known pacing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from agent.interfaces import ChatMessage, LLMChunk, TextDelta, ToolSchema, Transcript


class FakeTokenLLM:
    """Yields `tokens` per call of `stream`; `yielded_at[i]` is when token i was yielded."""

    def __init__(self, tokens: Sequence[str], delay: float = 0.0, *, spin: bool = False) -> None:
        self.tokens = list(tokens)
        self.delay = delay
        self.spin = spin  # pace by busy-waiting: the CPU never idles between tokens
        self.yielded_at: list[float] = []
        self.ended_at: float | None = None

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        self.yielded_at = []
        for token in self.tokens:
            if self.delay and self.spin:
                until = time.monotonic() + self.delay
                while time.monotonic() < until:
                    pass
                await anyio.lowlevel.checkpoint()
            elif self.delay:
                await anyio.sleep(self.delay)
            self.yielded_at.append(time.monotonic())
            yield TextDelta(token)
        self.ended_at = time.monotonic()


class FakeInstantSTT:
    """Returns `Transcript(text)` at once for any utterance; counts the calls."""

    def __init__(self, text: str = "What time do you open tomorrow?") -> None:
        self.text = text
        self.calls = 0

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        return Transcript(self.text, audio_seconds=len(pcm) / 2 / sample_rate)


class FakeScriptedLLM:
    """Yields `reply` word by word: the first word after `first_token` seconds, then one every
    `delay` seconds (anyio sleeps: the loop is free in between, as with a remote model).
    Stateless across calls, so one instance serves any number of concurrent conversations."""

    def __init__(self, reply: str, *, first_token: float = 0.05, delay: float = 0.02) -> None:
        words = reply.split(" ")
        self.tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        self.first_token = first_token
        self.delay = delay
        self.streams = 0

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        self.streams += 1
        await anyio.sleep(self.first_token)
        for i, token in enumerate(self.tokens):
            if i:
                await anyio.sleep(self.delay)
            yield TextDelta(token)


@dataclass(frozen=True)
class _Chunk:
    pcm: bytes
    sample_rate: int
    chars: tuple[str, ...]
    char_start_ms: tuple[float, ...]
    char_duration_ms: tuple[float, ...]


class FakeSilentEngine:
    """10 ms of silence per character, produced instantly, with exact alignment."""

    sample_rate = 16000

    def voices(self) -> list[str]:
        return ["silent"]

    def synthesize(self, text: str, *, speed: float = 1.0) -> Iterator[_Chunk]:
        n = len(text)
        yield _Chunk(
            pcm=bytes(2 * 160 * n),
            sample_rate=self.sample_rate,
            chars=tuple(text),
            char_start_ms=tuple(10.0 * i for i in range(n)),
            char_duration_ms=(10.0,) * n,
        )


async def serve_silent(max_connections: int) -> None:
    """`bench.silent_server`'s server, taking `max_connections` sockets from one address (the
    local server's default of 16 per address would refuse a phone bench's 17th call)."""
    from plugins.elevenlabs.server import LocalTTSServer

    async with LocalTTSServer(
        FakeSilentEngine(),
        port=0,
        max_pending_chars=10**7,
        max_connections=max_connections,
        max_connections_per_address=max_connections,
    ) as server:
        print(f"ready {server.url}", flush=True)
        await anyio.sleep_forever()


@asynccontextmanager
async def silent_server_process(max_connections: int | None = None) -> AsyncIterator[str]:
    """Start `bench.silent_server` in a child process (with `max_connections`: `serve_silent`);
    yield its URL; stop it after."""
    cmd = [sys.executable, "-m", "bench.silent_server", "--port", "0"]
    if max_connections is not None:
        cmd = [sys.executable, "-m", "bench.fakes", "silent-server", str(max_connections)]
    process = await anyio.open_process(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
        text = line.decode().strip()
        if not text.startswith("ready "):
            raise RuntimeError(f"silent server did not start: {text!r}")
        yield text.split(" ", 1)[1]
    finally:
        process.terminate()
        with anyio.move_on_after(5, shield=True):
            await process.wait()


if __name__ == "__main__":  # python -m bench.fakes silent-server MAX_CONNECTIONS
    if sys.argv[1:2] != ["silent-server"] or len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.fakes silent-server MAX_CONNECTIONS")
    anyio.run(serve_silent, int(sys.argv[2]))
