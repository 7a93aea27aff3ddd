"""One phone call's I/O: the media-stream socket loop, the call object a handler gets, its output.

`run_call(socket, handler, ...)` drives a `BotProtocol` (protocol.py) and an `OutboundPacer`
(pacing.py) over any `MessageSocket` (server.py adapts Starlette's WebSocket). It runs three
tasks under one task group: the reader (frames in -> events), the writer (the only task that
writes to the socket: protocol messages, then paced frames and marks, sleeping until the next
deadline or until woken), and, once `start` arrived and was accepted, the handler.

A `TwilioCall` is what the handler receives, in the Transport shape the voice agent uses:
`mic_frames()` (the caller's voice as `AudioFrame` PCM16 at 8 kHz), `output` (a
`TwilioOutput`: an `AudioOutput` whose `samples_played` comes from echoed marks), `dtmf()`
(digits as they are pressed), `hang_up()`, and `info` (the start message, without our one-time
stream token).

Bad input is logged once per cause per call (logger ``voxloop.twilio``) with the call sid; a
fatal one closes this call's socket with a clear reason and touches no other call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent.audio import AudioFrame, ulaw_decode, ulaw_encode

from .pacing import FRAME_SECONDS, OutboundPacer, SendFrame
from .protocol import (
    SAMPLE_RATE,
    BotProtocol,
    Close,
    DtmfReceived,
    Limits,
    MarkEchoed,
    MediaReceived,
    Started,
    StartInfo,
    Stopped,
    Violation,
)

log = logging.getLogger("voxloop.twilio")

ULAW_SILENCE = b"\xff"  # μ-law's code for zero

STREAM_TOKEN_PARAM = "voxloop_stream_token"
"""The `<Parameter>` that carries a validated webhook's one-time token to the media stream."""


def loop_time() -> float:
    """The running event loop's clock: what `anyio.current_time()` returns on asyncio, without
    its backend lookup (~150 ns against ~800 ns; a call reads it several times per 20 ms frame).
    The call loop needs asyncio anyway (see `_Alarm`)."""
    return asyncio.get_running_loop().time()


class MessageSocket(Protocol):
    """The little the call loop needs from a WebSocket."""

    async def receive(self) -> str | bytes | None:
        """The next message (text or binary), or None once the peer closed."""
        ...

    async def send_text(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class TwilioOutput:
    """The call's speaker: an `AudioOutput` whose "played" comes from Twilio's echoed marks.

    `play(pcm)` takes PCM16 at 8 kHz and encodes it to mu-law; `play_ulaw(ulaw)` takes the TTS's
    `ulaw_8000` bytes as they are. Audio goes out in paced 20 ms frames (pacing.py).
    `samples_played` counts 8 kHz samples before the last mark Twilio echoed, since `mark()`;
    `clear()` sends Twilio's `clear` at once and returns the samples dropped.
    """

    sample_rate = SAMPLE_RATE
    encodings = ("ulaw",)  # the TTS's ulaw_8000 passes through (see `play_encoded`)

    def __init__(
        self,
        pacer: OutboundPacer,
        protocol: BotProtocol,
        wake: Callable[[], None],
        max_queue_seconds: float = 2.0,
    ) -> None:
        self._pacer = pacer
        self._protocol = protocol
        self._wake = wake
        self._max_queue = round(max_queue_seconds * SAMPLE_RATE)
        self._changed = anyio.Event()
        self.closed = False
        self.clears = 0
        self.passed_through = 0  # bytes of TTS μ-law sent as they came (`play_encoded`)
        #: the conversation's clock (the call's stream time); set by `TwilioCall`
        self.clock: Callable[[], float] = loop_time
        self._first_at: float | None = None  # when this turn's first frame went out
        self._end_at: float | None = None  # when what was sent so far ends playing
        #: set to a bytearray to record what went out on the call's clock: μ-law as sent, one
        #: byte per 8 kHz sample, silence (0xFF) where nothing played; `ulaw_decode` it
        self.recording: bytearray | None = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_change(self, limit: float) -> None:
        with anyio.move_on_after(limit):
            await self._changed.wait()

    async def play(self, pcm: bytes) -> None:
        """Queue PCM16 mono at 8 kHz. Waits while 2 s are queued; cancelling queues nothing
        more of this chunk."""
        await self.play_ulaw(ulaw_encode(pcm))

    async def play_encoded(self, encoding: str, data: bytes) -> None:
        """Queue audio in one of `encodings` as it is: μ-law goes out undecoded."""
        if encoding != "ulaw":
            raise ValueError(f"a phone line takes ulaw audio, not {encoding!r}")
        self.passed_through += len(data)
        await self.play_ulaw(data)

    async def play_ulaw(self, ulaw: bytes) -> None:
        """Queue 8 kHz mu-law as it is (no decoding). Waits while `max_queue_seconds` are
        queued (backpressure); cancelling while waiting queues nothing of this chunk."""
        while not self.closed and self._pacer.queued_bytes >= self._max_queue:
            await self._wait_change(0.1)
        # A producer cancelled (a barge-in) just as a change woke it must not queue audio the
        # `clear` that comes with the cancel has dropped: with room, nothing else checks.
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self.closed:
            return
        self._pacer.push(ulaw, loop_time())
        self._wake()

    def clear(self, *, held_only: bool = False) -> int:
        """Drop everything not yet heard and send `clear` now; returns the samples dropped.
        ``held_only`` (a tentative answer, held since it began): the pacer sent none of it
        while paused, so it is dropped here and Twilio is not told; what Twilio has (an
        earlier answer's end) plays on, and its marks still count."""
        if self.closed:
            return 0
        if held_only:
            dropped = self._pacer.drop_unsent()
            self._wake()
            self._notify()
            return dropped
        dropped = self._pacer.clear()
        if self._protocol.start is not None:
            self._protocol.send_clear()
        now = self.clock()  # Twilio drops what it had not played: the line is silent from now
        if self._end_at is not None and self._end_at > now:
            self._end_at = now
            if self.recording is not None:
                del self.recording[round(now * SAMPLE_RATE) :]
        self.clears += 1
        self._wake()
        self._notify()
        return dropped

    @property
    def samples_played(self) -> int:
        """8 kHz samples Twilio confirmed played (echoed marks) since `mark()`."""
        return self._pacer.samples_played

    def mark(self) -> None:
        self._pacer.mark()
        self._first_at = None

    def pause(self) -> float:
        """Hold queued audio; return when the caller's line falls silent (what Twilio already
        has, at most the pacer's lead, still plays), on the call's clock."""
        self._pacer.pause()
        now = self.clock()
        return now if self._end_at is None else max(now, self._end_at)

    @property
    def first_played_at(self) -> float | None:
        """When this turn's first frame went out (the far end plays it on arrival)."""
        return self._first_at

    @property
    def last_played_end(self) -> float | None:
        """When the audio sent so far ends playing at the far end."""
        return self._end_at

    @property
    def level(self) -> float:
        """The phone network cancels line echo: nothing for an echo guard to compare."""
        return 0.0

    def _frame_sent(self, ulaw: bytes) -> None:
        """The write loop sent one 20 ms frame: it plays after what was sent before it."""
        now = self.clock()
        if self._first_at is None:
            self._first_at = now
        start = max(now, self._end_at or now)
        self._end_at = start + FRAME_SECONDS
        if self.recording is not None:
            at = round(start * SAMPLE_RATE)
            if len(self.recording) < at:
                self.recording.extend(ULAW_SILENCE * (at - len(self.recording)))
            self.recording[at:] = ulaw

    def resume(self) -> None:
        self._pacer.resume()
        self._wake()

    async def drain(self, echo_grace: float = 1.0) -> None:
        """Wait until everything queued has been played, as Twilio's mark echoes say.

        If the echoes stop coming (a peer that does not echo), gives up `echo_grace` seconds
        after the estimated end of playout. Cancelling stops waiting only.
        """
        self._pacer.finish()
        self._wake()
        while not self.closed and not self._pacer.all_heard():
            end = self._pacer.play_end
            if self._pacer.all_sent() and end is not None:
                left = end + echo_grace - loop_time()
                if left <= 0:
                    return
                await self._wait_change(min(left, 0.1))
            else:
                await self._wait_change(0.1)

    def _close(self) -> None:
        self.closed = True
        self._notify()


class TwilioCall:
    """One live call, as a call handler sees it (the Transport shape: `mic_frames`, `output`)."""

    def __init__(
        self,
        info: StartInfo,
        output: TwilioOutput,
        mic: MemoryObjectReceiveStream[AudioFrame],
        dtmf: MemoryObjectReceiveStream[str],
        hang_up: Callable[[str], None],
    ) -> None:
        self.info = info
        self.output = output
        self.sample_rate = SAMPLE_RATE
        self._mic = mic
        self._dtmf = dtmf
        self._hang_up = hang_up
        self.ended = anyio.Event()
        self.end_reason = ""
        self.mic_overruns = 0
        self._mic_samples = 0
        self._mic_seen_at = loop_time()
        self._sink: Callable[[AudioFrame], None] | None = None
        self._sink_stopped: anyio.Event | None = None
        self._sink_error: BaseException | None = None
        output.clock = self.now

    def now(self) -> float:
        """The call's stream time: seconds of caller audio received, plus the time since the
        last frame (at most one frame), so marks between frames keep their order."""
        since = min(loop_time() - self._mic_seen_at, FRAME_SECONDS)
        return self._mic_samples / SAMPLE_RATE + max(0.0, since)

    @property
    def call_sid(self) -> str:
        return self.info.call_sid

    async def mic_frames(self) -> AsyncIterator[AudioFrame]:
        """The caller's voice, 20 ms PCM16 frames at 8 kHz, until the call ends. Cancelling
        stops reading (frames keep arriving and are dropped once 1 s is queued)."""
        async for frame in self._mic:
            self._took(frame)
            yield frame

    async def deliver_frames(self, sink: Callable[[AudioFrame], None]) -> None:
        """The caller's voice as `mic_frames` gives it, but each frame handed to ``sink`` in
        the call's reader as it arrives (no queue, no task switch: a server with many calls
        spends a good part of its CPU on those). Frames queued before are handed over first.
        Returns when the call ends; an exception from ``sink`` stops the delivery and is
        raised here. Cancelling stops the delivery: later frames queue for `mic_frames`."""
        if self._sink is not None:
            raise RuntimeError("this call already delivers its frames to a sink")
        while True:
            try:
                frame = self._mic.receive_nowait()
            except anyio.WouldBlock:
                break
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self._took(frame)
            sink(frame)
        if self.ended.is_set():
            return
        stopped = self._sink_stopped = anyio.Event()
        self._sink_error = None
        self._sink = sink
        try:
            await stopped.wait()
        finally:
            self._sink = None
        if self._sink_error is not None:
            raise self._sink_error

    def _end(self, reason: str) -> None:
        """The call ended (`run_call` calls this): `ended` is set, a delivery returns."""
        self.end_reason = reason
        self.ended.set()
        if self._sink_stopped is not None:
            self._sink_stopped.set()

    def _took(self, frame: AudioFrame) -> None:
        self._mic_samples += len(frame.pcm) // 2
        self._mic_seen_at = loop_time()

    def _push(self, frame: AudioFrame) -> bool:
        """Hand ``frame`` to the sink `deliver_frames` set, if any (the reader calls this)."""
        sink = self._sink
        if sink is None:
            return False
        self._took(frame)
        try:
            sink(frame)
        except Exception as err:  # raised from deliver_frames, in the conversation's task
            self._sink = None
            self._sink_error = err
            if self._sink_stopped is not None:
                self._sink_stopped.set()
        return True

    async def dtmf(self) -> AsyncIterator[str]:
        """Digits the caller pressed, in order, until the call ends. Cancelling stops reading."""
        async for digit in self._dtmf:
            yield digit

    def hang_up(self, reason: str = "bot hung up") -> None:
        """End the call: the media socket closes (Twilio then goes on with the TwiML after
        `<Connect>`, by default hanging up)."""
        self._hang_up(reason)


CallHandler = Callable[[TwilioCall], Awaitable[None]]
"""The per-call work: gets the call, returns when done (returning hangs up)."""

StartCheck = Callable[[StartInfo], str | None]
"""Decides whether a started stream may go on: None, or the reason to refuse it."""


@dataclass(frozen=True, slots=True)
class CallSettings:
    limits: Limits = field(default_factory=Limits)
    lead: float = 0.1
    mark_every: int = 5
    mic_queue_frames: int = 50
    #: after the caller hangs up, how long the handler may take to return before it is cancelled
    handler_grace: float = 2.0


@dataclass(slots=True)
class CallRecord:
    """What happened on one call (kept by the server, readable by tests and reports)."""

    call_sid: str = ""
    end_reason: str = ""
    violations: dict[str, int] | None = None
    frames_in: int = 0
    frames_out: int = 0
    marks_echoed: int = 0
    stale_marks: int = 0
    clears: int = 0
    dtmf: str = ""
    refused: str | None = None


class _Alarm:
    """The writer's sleep: until a deadline or a `wake()`, whichever comes first; a wake that
    comes while the writer works makes its next sleep return at once.

    A cancel scope that times out costs ~30 µs on asyncio (its cancellation is delivered as
    an exception), and the writer sleeps until its next frame's deadline 50 times a second
    per call while the bot speaks; so it waits on a bare asyncio future with a timer. That
    needs the asyncio backend, as uvicorn and websockets do. Cancelling `sleep` (any anyio
    cancel scope around it) cancels the future and stops waiting.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if self._woken or seconds <= 0:
            await anyio.lowlevel.checkpoint()
        else:
            waiter = self._waiter = self._loop.create_future()
            timer = None if math.isinf(seconds) else self._loop.call_later(
                seconds, _settle, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        self._woken = False


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def run_call(
    socket: MessageSocket,
    handler: CallHandler,
    *,
    settings: CallSettings = CallSettings(),
    check_start: StartCheck | None = None,
    record: CallRecord | None = None,
) -> CallRecord:
    """Serve one media stream until it ends; returns what happened.

    Ends when the caller sends `stop` or closes, when the handler returns or hangs up, or on
    fatal bad input. Cancelling it cancels the handler and leaves the socket to its owner.
    """
    rec = record if record is not None else CallRecord()
    protocol = BotProtocol(limits=settings.limits)
    pacer = OutboundPacer(lead=settings.lead, mark_every=settings.mark_every)
    alarm = _Alarm()
    wake = alarm.wake
    done = anyio.Event()
    counts: dict[str, int] = {}
    rec.violations = counts

    output = TwilioOutput(pacer, protocol, wake)
    mic_send: MemoryObjectSendStream[AudioFrame]
    mic_send, mic_recv = anyio.create_memory_object_stream[AudioFrame](settings.mic_queue_frames)
    dtmf_send, dtmf_recv = anyio.create_memory_object_stream[str](64)
    call: TwilioCall | None = None
    handler_started = anyio.Event()
    handler_done = anyio.Event()
    writer_done = anyio.Event()

    def end(reason: str, close: Close | None = None) -> None:
        if done.is_set():
            return
        rec.end_reason = reason
        close = close or Close(1000, reason)
        protocol.close(close.code, close.reason)
        mic_send.close()
        dtmf_send.close()
        output._close()
        if call is not None:
            call._end(reason)
        done.set()
        wake()

    def label() -> str:
        return protocol.start.call_sid if protocol.start else "(not started)"

    def on_violation(v: Violation) -> None:
        counts[v.kind] = v.count
        if v.count == 1:
            log.warning(
                "call %s: bad media-stream input (%s): %s%s",
                label(),
                v.kind,
                v.detail,
                "; closing the call" if v.fatal else "; ignored, the call goes on",
            )
        if v.fatal:
            closed = protocol.closed
            end(closed.reason if closed else f"{v.kind}: {v.detail}", closed)

    async def reader(tg: anyio.abc.TaskGroup) -> None:
        nonlocal call
        while not done.is_set():
            message = await socket.receive()
            now = loop_time()
            if message is None:
                end("caller closed the socket")
                return
            events = protocol.receive(message, now)
            only_media = True
            for event in events:
                if type(event) is MediaReceived:
                    rec.frames_in += 1
                    frame = AudioFrame(ulaw_decode(event.payload), SAMPLE_RATE)
                    if call is not None and call._push(frame):
                        continue
                    try:
                        mic_send.send_nowait(frame)
                    except anyio.WouldBlock:
                        if call is not None:
                            call.mic_overruns += 1
                    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                        pass
                    continue
                only_media = False
                if isinstance(event, MarkEchoed):
                    rec.marks_echoed += 1
                    if pacer.mark_echoed(event.name):
                        output._notify()
                    rec.stale_marks = pacer.stale_marks
                elif isinstance(event, DtmfReceived):
                    rec.dtmf += event.digit
                    try:
                        dtmf_send.send_nowait(event.digit)
                    except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                        pass
                elif isinstance(event, Started):
                    rec.call_sid = event.info.call_sid
                    refusal = check_start(event.info) if check_start is not None else None
                    if refusal is not None:
                        rec.refused = refusal
                        log.warning("call %s: media stream refused: %s", label(), refusal)
                        end(f"refused: {refusal}", Close(1008, refusal))
                        break
                    params = {
                        k: v
                        for k, v in event.info.custom_parameters.items()
                        if k != STREAM_TOKEN_PARAM
                    }
                    info = replace(event.info, custom_parameters=params)
                    call = TwilioCall(info, output, mic_recv, dtmf_recv, hang_up)
                    tg.start_soon(run_handler, call)
                elif isinstance(event, Stopped):
                    end(event.reason)
                elif isinstance(event, Violation):
                    on_violation(event)
            # The writer only has work after an echoed mark (room ahead of the far end), a
            # reply or close the protocol queued, or the end; not after each caller frame.
            if protocol.has_data_to_send or done.is_set() or not only_media:
                wake()

    def hang_up(reason: str) -> None:
        end(reason, Close(1000, reason))

    async def run_handler(c: TwilioCall) -> None:
        handler_started.set()
        try:
            await handler(c)
        except Exception:
            log.exception("call %s: the call handler failed; hanging up", c.call_sid)
            end("call handler failed", Close(1011, "call handler failed"))
            return
        finally:
            handler_done.set()
        end("bot hung up", Close(1000, "bot hung up"))

    async def writer() -> None:
        try:
            await write_loop()
        finally:
            writer_done.set()

    async def write_loop() -> None:
        while True:
            now = loop_time()
            for event in protocol.tick(now):
                if isinstance(event, Violation):
                    on_violation(event)
            if protocol.start is not None and not done.is_set():
                for action in pacer.tick(now):
                    if isinstance(action, SendFrame):
                        protocol.send_media(action.ulaw)
                        output._frame_sent(action.ulaw)
                        rec.frames_out += 1
                    else:
                        protocol.send_mark(action.name)
            for item in protocol.data_to_send():
                if isinstance(item, Close):
                    await socket.close(item.code, item.reason)
                    return
                await socket.send_text(item)
            if done.is_set():
                return
            deadlines = [
                d for d in (protocol.next_deadline(), pacer.next_deadline()) if d is not None
            ]
            timeout = min(deadlines) - loop_time() if deadlines else math.inf
            await alarm.sleep(timeout)

    protocol.connection_made(loop_time())
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, tg)
            tg.start_soon(writer)
            await done.wait()
            # The writer sends what is queued (a clear, the close) and returns; the handler
            # sees the mic stream end and gets `handler_grace` seconds to return. Then the
            # rest (a reader blocked on a socket, a slow handler) is cancelled.
            with anyio.move_on_after(settings.handler_grace):
                await writer_done.wait()
                if handler_started.is_set():
                    await handler_done.wait()
            tg.cancel_scope.cancel()
    finally:
        rec.frames_out = pacer.frames_sent
        rec.stale_marks = pacer.stale_marks
        rec.clears = output.clears
    return rec
