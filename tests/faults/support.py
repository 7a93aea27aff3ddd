"""Helpers shared by the fault tests: wire capture, a byte-keeping output, log filtering.

None of these is a fake: `MemoryOutput` is a real AudioOutput that keeps what it plays, and
`TimedLLM` forwards to a real LLM while noting when deltas and failures arrived.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import anyio
import pytest

from agent.file_output import MemoryOutput as MemoryOutput  # re-exported for the tests
from agent.interfaces import LLM, ChatMessage, LLMChunk, ToolSchema


async def eventually(condition: Callable[[], bool], limit: float = 5.0) -> bool:
    """Poll `condition` every 20 ms for up to `limit` seconds; its last value.

    For state that has no event to wait on (a peer's task count, a server's counters).
    """
    for _ in range(max(1, int(limit / 0.02))):
        if condition():
            return True
        await anyio.sleep(0.02)
    return condition()


class WireLog:
    """Every frame our TTS client writes or reads, with its time (a `frame_listener`)."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, float, str]] = []

    def __call__(self, direction: str, when: float, frame: str) -> None:
        self.frames.append((direction, when, frame))

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(f) for d, _, f in self.frames if d == "out"]

    def sent_to(self, context_id: str) -> list[dict[str, Any]]:
        return [m for m in self.sent() if m.get("context_id") == context_id]


def assert_turn_closed_on_wire(wire: WireLog, context_id: str, *, spoke: bool) -> None:
    """The context got at most one flush, after its last text, and a close_context last."""
    frames = wire.sent_to(context_id)
    assert frames and frames[0]["text"] == " ", "the context starts with its init"
    flushes = [i for i, m in enumerate(frames) if m.get("flush")]
    texts = [i for i, m in enumerate(frames[1:], 1) if m.get("text")]
    if spoke:
        assert len(flushes) == 1 and max(texts) < flushes[0], frames
    assert frames[-1] == {"context_id": context_id, "close_context": True}, frames


class TimedLLM:
    """Forwards to a real LLM; notes when each delta arrived and when (and how) it failed."""

    def __init__(self, inner: LLM) -> None:
        self.inner = inner
        self.delta_times: list[float] = []
        self.failed_at: float | None = None
        self.failure: BaseException | None = None

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        """The inner stream. Cancelling closes it (it is consumed under `aclosing`).

        `failed_at`/`failure` keep the last failure (a later good stream does not clear them).
        """
        self.delta_times = []
        gen = self.inner.stream(messages, tools=tools)
        try:
            async for delta in gen:
                self.delta_times.append(time.monotonic())
                yield delta
        except Exception as err:
            self.failed_at, self.failure = time.monotonic(), err
            raise
        finally:
            await gen.aclose()


def loud_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """WARNING-and-above records from the code under test (the fakes' own logs excluded)."""
    ours = [r for r in caplog.records if not r.name.startswith("tests.")]
    return [r for r in ours if r.levelno >= logging.WARNING]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records that carry a traceback (a "traceback flood" shows up here)."""
    return [r for r in caplog.records if r.exc_info and not r.name.startswith("tests.")]
