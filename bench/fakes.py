"""Fakes for benchmarks, named so: they script timing, they are not the product.

- `FakeTokenLLM`: an in-process LLM that yields a scripted token list as fast as possible (or
  with a delay), recording when each delta was handed to the framework.
- `FakeSilentEngine`: a speech engine that returns short silence at once, so a benchmark of the
  framework's own overhead is not dominated by synthesis. The server and socket stay real.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import anyio

from agent.interfaces import ChatMessage


class FakeTokenLLM:
    """Yields `tokens` per call of `stream`; `yielded_at[i]` is when token i was yielded."""

    def __init__(self, tokens: Sequence[str], delay: float = 0.0) -> None:
        self.tokens = list(tokens)
        self.delay = delay
        self.yielded_at: list[float] = []
        self.ended_at: float | None = None

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        self.yielded_at = []
        for token in self.tokens:
            if self.delay:
                await anyio.sleep(self.delay)
            self.yielded_at.append(time.monotonic())
            yield token
        self.ended_at = time.monotonic()


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
