"""One browser tab's I/O: the socket loop, the line a handler converses on, and its output.

`run_tab(socket, handler, ...)` drives a `PageProtocol` (protocol.py) over any `MessageSocket`
(server.py adapts Starlette's WebSocket) with two tasks, the reader (messages in -> events) and
the writer (the only task that writes to the socket), and, once the page's hello was accepted,
the handler with a `PageLine`.

A `PageLine` is a `Transport`: `mic_frames()` (the page's microphone, resampled to 16 kHz),
`output` (a `PageOutput`), `now()` (the tab's stream clock: seconds of microphone received,
interpolated by at most one frame), `send_event(dict)` (something for the page to show) and
`hang_up()`.

Playout is remote: the page plays the agent's voice from its own jitter buffer and reports,
after every microphone frame, how many samples it really played, where in the received audio it
is, and the stream time just after its last real sample. `samples_played`, `first_played_at`
and `last_played_end` come from those reports alone, never from bytes sent; a clear is
acknowledged with the count at the moment the page dropped its queue, so a new turn starts
counting from exactly there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent.audio import AudioFrame, StreamResampler

from .protocol import (
    FRAME_MS,
    OUTPUT_RATE,
    Cleared,
    Close,
    Hello,
    Limits,
    MicAudio,
    PageProtocol,
    PlayoutReport,
    TurnAudio,
    Violation,
)

log = logging.getLogger("voxloop.web")

FRAME_SECONDS = FRAME_MS / 1000


class MessageSocket(Protocol):
    """The little the tab loop needs from a WebSocket."""

    async def receive(self) -> str | bytes | None:
        """The next message (text or binary), or None once the peer closed. Cancelling
        abandons the wait (no message is lost)."""
        ...

    async def send_text(self, text: str) -> None:
        """Send a text message (a no-op once closed). Cancelling may cut it off."""
        ...

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary message (a no-op once closed). Cancelling may cut it off."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason``. Cancelling leaves the socket closing."""
        ...


class PageOutput:
    """The tab's speaker: an `AudioOutput` whose "played" comes from the page's reports.

    `play(pcm)` takes PCM16 at 16 kHz and sends it in pieces of at most 100 ms, keeping at most
    `max_lead` seconds ahead of what the page has consumed (backpressure). `clear()` sends
    ``clear`` at once; the page drops its queue on arrival.
    """

    sample_rate = OUTPUT_RATE

    def __init__(
        self,
        protocol: PageProtocol,
        wake: Callable[[], None],
        *,
        max_lead: float = 1.0,
        report_grace: float = 1.0,
    ) -> None:
        self._protocol = protocol
        self._wake = wake
        self._max_lead = round(max_lead * OUTPUT_RATE)
        self._grace = report_grace
        self._changed = anyio.Event()
        self.closed = False
        self.clock: Callable[[], float] = anyio.current_time  # set by `PageLine`
        self.sent = 0  # samples sent, since the tab opened
        self.clears = 0
        self.audio_messages = 0
        self._pos = 0  # the page's position in what was sent (played or dropped)
        self._pos_floor = 0  # a clear drops everything sent before it
        self._played = 0  # the page's reported count of samples really played
        self._end: float | None = None
        self._level = 0.0
        self._level_at = -math.inf
        self._report_at = -math.inf
        self._base = 0
        self._base_clear: int | None = None  # the mark waits for this clear's acknowledgement
        self._pending_clears: set[int] = set()
        self._first_at: float | None = None
        self._turn = 0
        self._turn_started = False
        self.turn_sent_wall: dict[int, float] = {}
        self.paused = False
        self.pauses = 0
        self._latency = 0.0  # the page's output latency (worklet to speaker), as reported

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_change(self, limit: float) -> None:
        with anyio.move_on_after(limit):
            await self._changed.wait()

    # -- AudioOutput ---------------------------------------------------------------------------

    async def play(self, pcm: bytes) -> None:
        """Send PCM16 mono at 16 kHz to the page. Waits while `max_lead` seconds are ahead of
        the page's playout; cancelling sends nothing more of this chunk."""
        piece = OUTPUT_RATE // 10 * 2
        pcm = pcm[: len(pcm) - len(pcm) % 2]  # whole samples only
        for at in range(0, len(pcm), piece):
            while not self.closed and self.sent - self._pos >= self._max_lead:
                await self._wait_change(0.1)
            if self.closed:
                return
            chunk = pcm[at : at + piece]
            if not self._turn_started:
                self._turn_started = True
                wall = time.time() * 1000
                self.turn_sent_wall[self._turn] = wall
                self._protocol.send_json({"type": "turn", "turn": self._turn, "wall": wall})
            self._protocol.send_audio(chunk)
            self.sent += len(chunk) // 2
            self.audio_messages += 1
            self._wake()
        await anyio.lowlevel.checkpoint()

    def clear(self, *, held_only: bool = False) -> int:
        """Tell the page to drop everything not yet played, now; returns the samples that were
        still ahead of the page's last report. The page holds paused audio itself, so a
        ``held_only`` clear is sent as well: the held audio is there."""
        if self.closed:
            return 0
        dropped = max(0, self.sent - self._pos)
        self.clears += 1
        self._pending_clears.add(self.clears)
        self._protocol.send_json({"type": "clear", "id": self.clears})
        self._pos_floor = self._pos = self.sent
        now = self.clock() + self._latency  # what the worklet rendered still sounds
        if self._end is not None and self._end > now:
            self._end = now
        self._wake()
        self._notify()
        return dropped

    def pause(self) -> float:
        """Hold the page's playout (it keeps its queue); return when its speaker falls silent,
        on the tab's clock: after the output latency the page reports (what its worklet already
        rendered still sounds), if it was playing."""
        now = self.clock()
        if not self.closed and not self.paused:
            self.paused = True
            self.pauses += 1
            self._protocol.send_json({"type": "pause"})
            self._wake()
        if self._end is not None and self._end > now - self._latency:
            return now + self._latency
        return now

    def resume(self) -> None:
        if not self.closed and self.paused:
            self.paused = False
            self._protocol.send_json({"type": "resume"})
            self._wake()

    @property
    def samples_played(self) -> int:
        """16 kHz samples the page reported played since `mark()`."""
        if self._base_clear is not None:
            return 0
        return max(0, self._played - self._base)

    def mark(self) -> None:
        self._base = self._played
        self._base_clear = max(self._pending_clears) if self._pending_clears else None
        self._first_at = None
        self._turn += 1
        self._turn_started = False

    @property
    def turn(self) -> int:
        """How many times `mark()` was called (the page's turn numbers for `turn_audio`)."""
        return self._turn

    @property
    def first_played_at(self) -> float | None:
        """When the page played this turn's first sample, on the tab's clock."""
        return self._first_at

    @property
    def last_played_end(self) -> float | None:
        """When the page's last real sample ended, on the tab's clock."""
        return self._end

    @property
    def level(self) -> float:
        """The page's recent output RMS, as it reported it (0 once reports are 200 ms old)."""
        if anyio.current_time() - self._level_at > 0.2:
            return 0.0
        return self._level

    async def drain(self) -> None:
        """Wait until the page has played (or dropped) everything sent.

        If its reports stop, gives up `report_grace` seconds after the audio still ahead
        should have played. Cancelling stops waiting only.
        """
        if not self.closed:
            self._protocol.send_json({"type": "flush"})
            self._wake()
        limit = anyio.current_time() + (self.sent - self._pos) / OUTPUT_RATE + self._grace
        while not self.closed and self._pos < self.sent:
            now = anyio.current_time()
            if now >= limit or now - self._report_at > self._grace:
                return
            await self._wait_change(min(0.1, limit - now))

    # -- the page's reports -----------------------------------------------------------------------

    def _on_report(self, report: PlayoutReport) -> None:
        self._report_at = anyio.current_time()
        self._played = max(self._played, report.played)
        self._pos = max(self._pos_floor, min(self.sent, report.pos))
        if report.end is not None:
            self._end = report.end
        self._level, self._level_at = report.level, self._report_at
        self._latency = report.latency
        heard = self.samples_played
        if self._first_at is None and heard > 0:
            end = report.end if report.end is not None else self.clock()
            self._first_at = end - heard / OUTPUT_RATE
        self._notify()

    def _on_cleared(self, cleared: Cleared) -> None:
        self._pending_clears.discard(cleared.clear_id)
        self._played = max(self._played, cleared.played)
        if self._base_clear == cleared.clear_id:
            self._base = cleared.played
            self._base_clear = None
        self._notify()

    def _close(self) -> None:
        self.closed = True
        self._notify()


class PageLine:
    """One live tab, as a handler sees it (the Transport shape: `mic_frames`, `output`, `now`)."""

    sample_rate = 16000

    def __init__(
        self,
        hello: Hello,
        output: PageOutput,
        mic: MemoryObjectReceiveStream[bytes],
        protocol: PageProtocol,
        wake: Callable[[], None],
        hang_up: Callable[[str], None],
        tab_id: int = 0,
    ) -> None:
        self.page_rate = hello.sample_rate
        self.output = output
        self.tab_id = tab_id
        self._mic = mic
        self._protocol = protocol
        self._wake = wake
        self._hang_up = hang_up
        self._resampler = StreamResampler(self.page_rate, self.sample_rate, quality="LQ")
        self._mic_samples = 0
        self._mic_seen_at = anyio.current_time()
        self.ended = anyio.Event()
        self.end_reason = ""
        self.mic_overruns = 0
        output.clock = self.now

    def now(self) -> float:
        """The tab's stream time: seconds of microphone received, plus the time since the
        last frame (at most one frame), so marks between frames keep their order."""
        since = min(anyio.current_time() - self._mic_seen_at, FRAME_SECONDS)
        return self._mic_samples / self.page_rate + max(0.0, since)

    async def mic_frames(self) -> AsyncIterator[AudioFrame]:
        """The page's microphone as PCM16 at 16 kHz, until the tab closes. Cancelling stops
        reading (frames keep arriving and are dropped once 1 s is queued)."""
        async for pcm in self._mic:
            self._mic_samples += len(pcm) // 2
            self._mic_seen_at = anyio.current_time()
            out = self._resampler.process(pcm)
            if out:
                yield AudioFrame(out, self.sample_rate)

    def send_event(self, message: dict[str, Any]) -> None:
        """Send something for the page to show (a JSON object with a ``type``)."""
        self._protocol.send_json(message)
        self._wake()

    def hang_up(self, reason: str = "the agent hung up") -> None:
        """End the tab's conversation: the socket closes with ``reason``."""
        self._hang_up(reason)


TabHandler = Callable[[PageLine], Awaitable[None]]
"""The per-tab work: gets the line, returns when done (returning closes the socket)."""


@dataclass(frozen=True, slots=True)
class TabSettings:
    limits: Limits = field(default_factory=Limits)
    max_lead: float = 1.0
    mic_queue_frames: int = 50
    #: after the page closed, how long the handler may take to return before it is cancelled
    handler_grace: float = 2.0


@dataclass(slots=True)
class TabRecord:
    """What happened on one tab (kept by the server, readable by tests and the benchmark)."""

    tab_id: int = 0
    end_reason: str = ""
    violations: dict[str, int] = field(default_factory=dict)
    frames_in: int = 0
    audio_messages: int = 0
    clears: int = 0
    pauses: int = 0
    reports: int = 0
    uplink_ms: list[float] = field(default_factory=list)
    turn_audio: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    """turn -> (server sent, page received, page began playing), wall clock in ms."""


async def run_tab(
    socket: MessageSocket,
    handler: TabHandler,
    *,
    settings: TabSettings = TabSettings(),
    token: str | None = None,
    record: TabRecord | None = None,
) -> TabRecord:
    """Serve one tab's socket until it ends; returns what happened.

    Ends when the page closes, when the handler returns or hangs up, or on fatal bad input
    (then the page gets an ``error`` message and the socket a close reason). Cancelling it
    cancels the handler and leaves the socket to its owner.
    """
    rec = record if record is not None else TabRecord()
    protocol = PageProtocol(settings.limits, token=token)
    wake_event = anyio.Event()
    done = anyio.Event()
    mic_send: MemoryObjectSendStream[bytes]
    mic_send, mic_recv = anyio.create_memory_object_stream[bytes](settings.mic_queue_frames)
    line: PageLine | None = None
    handler_started = anyio.Event()
    handler_done = anyio.Event()
    writer_done = anyio.Event()

    def wake() -> None:
        wake_event.set()

    output = PageOutput(protocol, wake, max_lead=settings.max_lead)

    def end(reason: str, close: Close | None = None) -> None:
        if done.is_set():
            return
        rec.end_reason = reason
        close = close or Close(1000, reason[:120])
        protocol.close(close.code, close.reason)
        mic_send.close()
        output._close()
        if line is not None:
            line.end_reason = reason
            line.ended.set()
        done.set()
        wake()

    def on_violation(v: Violation) -> None:
        rec.violations[v.kind] = v.count
        if v.count == 1 or v.fatal:
            log.warning(
                "tab %d: bad input from the page (%s): %s%s",
                rec.tab_id,
                v.kind,
                v.detail,
                "; closing this tab" if v.fatal else "; dropped, the tab goes on",
            )
        if v.fatal:
            closed = protocol.closed
            end(closed.reason if closed else f"{v.kind}: {v.detail}", closed)

    async def reader(tg: anyio.abc.TaskGroup) -> None:
        nonlocal line
        while not done.is_set():
            message = await socket.receive()
            now = anyio.current_time()
            if message is None:
                end("the page closed")
                return
            events = (
                protocol.receive_text(message, now)
                if isinstance(message, str)
                else protocol.receive_binary(message, now)
            )
            for event in events:
                if isinstance(event, MicAudio):
                    rec.frames_in += 1
                    try:
                        mic_send.send_nowait(event.pcm)
                    except anyio.WouldBlock:
                        if line is not None:
                            line.mic_overruns += 1
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        pass
                elif isinstance(event, PlayoutReport):
                    rec.reports += 1
                    if event.wall is not None and len(rec.uplink_ms) < 100_000:
                        rec.uplink_ms.append(time.time() * 1000 - event.wall)
                    output._on_report(event)
                elif isinstance(event, Cleared):
                    output._on_cleared(event)
                elif isinstance(event, TurnAudio):
                    sent = output.turn_sent_wall.get(event.turn)
                    if sent is not None and len(rec.turn_audio) < 10_000:
                        rec.turn_audio[event.turn] = (sent, event.recv_wall, event.play_wall)
                elif isinstance(event, Hello):
                    line = PageLine(event, output, mic_recv, protocol, wake, hang_up, rec.tab_id)
                    tg.start_soon(run_handler, line)
                elif isinstance(event, Violation):
                    on_violation(event)
            wake()

    def hang_up(reason: str) -> None:
        end(reason, Close(1000, reason[:120]))

    async def run_handler(tab: PageLine) -> None:
        handler_started.set()
        try:
            await handler(tab)
        except Exception:
            log.exception("tab %d: the conversation failed; closing the tab", rec.tab_id)
            protocol.send_json(
                {"type": "error", "message": "the conversation failed on the server (see its log)"}
            )
            end("conversation failed", Close(1011, "conversation failed"))
            return
        finally:
            handler_done.set()
        end("the agent hung up", Close(1000, "the agent hung up"))

    async def writer() -> None:
        try:
            await write_loop()
        finally:
            writer_done.set()

    async def write_loop() -> None:
        nonlocal wake_event
        while True:
            for event in protocol.tick(anyio.current_time()):
                if isinstance(event, Violation):
                    on_violation(event)
            for item in protocol.data_to_send():
                if isinstance(item, Close):
                    await socket.close(item.code, item.reason)
                    return
                if isinstance(item, bytes):
                    await socket.send_bytes(item)
                else:
                    await socket.send_text(item)
            if done.is_set():
                return
            deadline = protocol.next_deadline()
            timeout = deadline - anyio.current_time() if deadline is not None else math.inf
            if timeout > 0:
                with anyio.move_on_after(timeout):
                    await wake_event.wait()
            if wake_event.is_set():
                wake_event = anyio.Event()

    protocol.connection_made(anyio.current_time())
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, tg)
            tg.start_soon(writer)
            await done.wait()
            # The writer sends what is queued (a clear, an error, the close) and returns; the
            # handler sees the microphone end and gets `handler_grace` seconds to return.
            with anyio.move_on_after(settings.handler_grace):
                await writer_done.wait()
                if handler_started.is_set():
                    await handler_done.wait()
            tg.cancel_scope.cancel()
    finally:
        rec.audio_messages = output.audio_messages
        rec.clears = output.clears
        rec.pauses = output.pauses
    return rec
