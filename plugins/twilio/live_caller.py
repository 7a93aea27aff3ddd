"""A live phone call from this machine: its microphone is the caller, its speaker the handset.

`live_call(base_url, microphone, speaker)` dials like `place_call` (the voice webhook, then the
media stream) and then, instead of a script:

- **uplink**: every block the microphone delivers (PCM16 at the device's own rate, 20 ms) is
  resampled to 8 kHz, μ-law-encoded and sent as one 160-byte `media` frame (`MicFramer`). The
  pace is the microphone's own clock: a frame goes out when the sound card has captured it,
  never on a timer of ours.
- **downlink**: the bot's μ-law is decoded, resampled to the speaker's rate and queued on the
  speaker (`SpeakerLine`). A mark is echoed once the speaker has played the audio before it
  (the speaker's own count of samples played), not when it arrives; `clear` drops the
  speaker's queued audio at once and, as Twilio does, echoes the marks still pending
  (``echo_marks_on_clear=False``: drops them, as some simulators do).
- **the record**: the same `CallResult` as a scripted call: the stereo recording (caller left:
  what was sent; bot right: what the speaker played, on the caller's clock), the bot's time to
  first audio after each time you stopped talking and its reaction to a barge-in (from a
  webrtcvad detector on what the microphone sent), marks, clears, how it ended.

The microphone is anything with `sample_rate` and `mic_frames()` (the `voxloop call --mic`
composition passes `plugins.sounddevice.SoundDeviceTransport`); the speaker any
`agent.interfaces.AudioOutput` (its `samples_played` must count what really played).

The call ends when the bot hangs up, after ``script.max_seconds``, when the microphone stops,
or when the task is cancelled (Ctrl-C): then it hangs up as a caller does (`stop`, then the
socket's close, shielded and bounded), and the result passed in holds the call so far.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.audio import AudioFrame, StreamResampler, ulaw_decode, ulaw_encode
from agent.interfaces import AudioOutput
from agent.vad import (
    SpeechDetector,
    SpeechEnded,
    SpeechStarted,
    VadConfig,
    VoiceLost,
    VoiceOnset,
)

from .caller import CallResult, CallScript, dial, plain_ws_on_loopback
from .pacing import FRAME_SECONDS
from .protocol import FRAME_BYTES, SAMPLE_RATE, BotClear, BotMark, BotMedia, CallerProtocol
from .protocol import Violation as ProtocolViolation
from .security import AuthToken

log = logging.getLogger("voxloop.twilio.caller")

FRAME_PCM_BYTES = FRAME_BYTES * 2  # one 20 ms frame as PCM16 at 8 kHz
#: How long hanging up may take (the `stop`, the socket's closing handshake).
HANG_UP_TIMEOUT_S = 2.0


class Microphone(Protocol):
    """What the live caller speaks from: PCM16 mono blocks at `sample_rate`, as captured."""

    @property
    def sample_rate(self) -> int: ...

    def mic_frames(self) -> AsyncIterator[AudioFrame]: ...


# ---- uplink, sans-I/O --------------------------------------------------------------------------


class _AntiAlias:
    """A low-pass FIR below 8 kHz's Nyquist (windowed sinc, Blackman, ~4 ms long) whose state
    carries across blocks: what the microphone hears above the phone band does not fold into
    it when the samples are thinned to 8 kHz. Delay: half its length, ~2 ms."""

    def __init__(self, rate: int, cutoff_hz: float = 3600.0) -> None:
        n = 4 * rate // 1000 | 1  # odd
        m = np.arange(n) - (n - 1) / 2
        taps = np.sinc(2 * cutoff_hz / rate * m) * np.blackman(n)
        self._taps = (taps / taps.sum()).astype(np.float32)
        self._history = np.zeros(n - 1, dtype=np.float32)

    def process(self, pcm: bytes) -> bytes:
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        signal = np.concatenate([self._history, x])
        y = np.convolve(signal, self._taps, mode="valid")  # one output per input sample
        self._history = signal[len(signal) - len(self._history) :]
        return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


class MicFramer:
    """Microphone blocks at the device's rate in, 20 ms μ-law frames at 8 kHz out.

    `push(pcm)` returns the frames to send now: one per 20 ms block. The resampling is a
    low-pass (`_AntiAlias`) then soxr's quick cubic interpolation, both streaming with ~2 ms of
    delay and output that follows the input sample for sample, so each block yields its frame
    at once (soxr's filtering qualities give theirs in bursts of 40-60 ms, which would need a
    jitter buffer, and add that much to the uplink). Only when more than `max_backlog` frames
    wait (a microphone whose blocks are not 20 ms) does a block send more than one.
    """

    def __init__(self, device_rate: int, max_backlog: int = 3) -> None:
        self._low_pass = _AntiAlias(device_rate) if device_rate > SAMPLE_RATE else None
        self._resampler = StreamResampler(device_rate, SAMPLE_RATE, "QQ")
        self._pending = bytearray()
        self.max_backlog = max_backlog

    def push(self, pcm: bytes) -> list[bytes]:
        if self._low_pass is not None:
            pcm = self._low_pass.process(pcm)
        self._pending += self._resampler.process(pcm)
        frames: list[bytes] = []
        while len(self._pending) >= FRAME_PCM_BYTES and (
            not frames or len(self._pending) > self.max_backlog * FRAME_PCM_BYTES
        ):
            frames.append(ulaw_encode(bytes(self._pending[:FRAME_PCM_BYTES])))
            del self._pending[:FRAME_PCM_BYTES]
        return frames


# ---- downlink, sans-I/O ------------------------------------------------------------------------


class SpeakerLine:
    """The bot's audio on a real speaker, and the mark echoes that say what it played.

    Counts are device samples since the last `clear` (an "epoch"). `receive_audio` returns
    the PCM to queue on the speaker; `tick(played)`, once per microphone frame, returns the
    resampler's held-back tail when the bot has paused (so the last words play and their mark
    can be echoed), the marks whose audio has played, and the bot audio (8 kHz) played since
    the previous tick, for the recording. `played` is always the speaker's `samples_played`.
    The speaker must hold `max_buffer_seconds` (beyond that, bot audio is dropped and counted).
    """

    #: Ticks without bot audio after which the bot has paused (the resampler's tail goes out).
    IDLE_TICKS = 2

    def __init__(
        self,
        device_rate: int,
        *,
        echo_marks: bool = True,
        echo_marks_on_clear: bool = True,
        max_buffer_seconds: float = 60.0,
    ) -> None:
        self.device_rate = device_rate
        self.echo_marks = echo_marks
        self.echo_marks_on_clear = echo_marks_on_clear
        self.max_buffer = round(max_buffer_seconds * device_rate)
        self.discarded = 0  # 8 kHz samples dropped because the bot sent far ahead of playout
        self._heard_before = 0  # 8 kHz samples played in earlier epochs
        self._new_epoch(0)

    def _new_epoch(self, played: int) -> None:
        self._resampler = StreamResampler(SAMPLE_RATE, self.device_rate, "LQ")
        self._base = played  # the speaker's count when the epoch began
        self._received = 0  # 8 kHz samples of bot audio in this epoch
        self._produced = 0  # device samples handed to the speaker in this epoch
        self._idle_ticks = 0  # ticks since audio last arrived
        self._flushed = True  # nothing held back in the resampler
        self._marks: deque[tuple[int, str]] = deque()  # (device sample the mark follows, name)
        self._mirror = bytearray()  # this epoch's bot audio at 8 kHz, not yet recorded
        self._recorded = 0  # 8 kHz samples of this epoch recorded

    def pending(self, played: int) -> int:
        """Device samples queued on the speaker and not yet played."""
        return max(0, self._produced - (played - self._base))

    def audible(self, played: int) -> bool:
        """The bot is talking: audio queued on the speaker, or some arrived a moment ago (the
        queue is only the bot's small lead, and may run dry for a block)."""
        return self.pending(played) > 0 or (
            self._received > 0 and self._idle_ticks <= self.IDLE_TICKS
        )

    def _heard(self, played: int) -> int:
        """8 kHz samples of this epoch's bot audio the speaker has played."""
        return min(self._received, (played - self._base) * SAMPLE_RATE // self.device_rate)

    def heard(self, played: int) -> int:
        """8 kHz samples of bot audio the speaker has played in the whole call."""
        return self._heard_before + self._heard(played)

    def receive_audio(self, ulaw: bytes, played: int) -> bytes:
        """Bot audio arrived: the PCM (device rate) to queue on the speaker."""
        if self.pending(played) + len(ulaw) * self.device_rate // SAMPLE_RATE > self.max_buffer:
            self.discarded += len(ulaw)
            return b""
        pcm8k = ulaw_decode(ulaw)
        self._mirror += pcm8k
        self._received += len(ulaw)
        out = self._resampler.process(pcm8k)
        self._produced += len(out) // 2
        self._idle_ticks = 0
        self._flushed = False
        return out

    def receive_mark(self, name: str) -> None:
        """A mark follows the audio received so far: echo it once that has played."""
        self._marks.append((self._received * self.device_rate // SAMPLE_RATE, name))

    def clear(self, played: int) -> tuple[int, list[str]]:
        """Call right after clearing the speaker (so `played` is final for the dropped audio).
        Returns (8 kHz samples dropped unheard, marks to echo now)."""
        heard = self._heard(played)
        names = [name for _, name in self._marks]
        dropped = self._received - heard
        self._heard_before += heard
        self._new_epoch(played)
        echo = self.echo_marks and self.echo_marks_on_clear
        return dropped, names if echo else []

    def tick(self, played: int) -> tuple[bytes, list[str], bytes]:
        """(tail to queue on the speaker, marks to echo now, bot audio played since the last
        tick at 8 kHz)."""
        tail = b""
        self._idle_ticks += 1
        if self._idle_ticks > self.IDLE_TICKS and not self._flushed:
            tail = self._resampler.flush()  # the bot paused: let its last words out
            self._produced += len(tail) // 2
            self._flushed = True
        done = played - self._base
        echoes: list[str] = []
        while self._marks and (
            self._marks[0][0] <= done or (self._flushed and done >= self._produced)
        ):
            echoes.append(self._marks.popleft()[1])
        n = max(0, self._heard(played) - self._recorded) * 2
        audio = bytes(self._mirror[:n])
        del self._mirror[:n]
        self._recorded += len(audio) // 2
        return tail, echoes if self.echo_marks else [], audio


# ---- what the caller measures ------------------------------------------------------------------


class _Measure:
    """The microphone's speech (webrtcvad on the frames sent) against the bot's audio: time to
    first audio after each time the caller stopped, barge-in reaction. Wall-clock seconds."""

    def __init__(self, result: CallResult) -> None:
        self.result = result
        self.vad = SpeechDetector(VadConfig(sample_rate=SAMPLE_RATE, min_silence_ms=300))
        self.sent_at: deque[float] = deque(maxlen=1024)  # when each recent frame went out
        self.frames = 0
        self.waiting_since: float | None = None  # the caller stopped; no bot audio since
        self.barging_since: float | None = None  # the caller's voice began over the bot
        self.cut = False  # the bot cleared for this utterance

    def _wall(self, stream_t: float) -> float:
        """The wall time a frame boundary of the caller's stream went out (approximately)."""
        back = self.frames - round(stream_t / FRAME_SECONDS)
        if not self.sent_at:
            return 0.0
        return self.sent_at[max(0, len(self.sent_at) - 1 - max(0, back))]

    def sent(self, pcm8k: bytes, t: float, bot_audible: bool) -> None:
        self.frames += 1
        self.sent_at.append(t)
        for event in self.vad.feed(AudioFrame(pcm8k, SAMPLE_RATE)):
            if isinstance(event, VoiceOnset):  # a bot reacts to the onset, not to our verdict
                self.waiting_since = None
                self.barging_since = self._wall(event.t) if bot_audible else None
            elif isinstance(event, VoiceLost):
                self.barging_since = None
            elif isinstance(event, SpeechStarted):
                barge = " (barge-in)" if self.barging_since is not None or self.cut else ""
                self.result.timeline.append((self._wall(event.t_onset), "say" + barge))
            elif isinstance(event, SpeechEnded):
                self.barging_since, self.cut = None, False
                self.waiting_since = self._wall(event.t_end)
                self.result.timeline.append((self.waiting_since, "said"))

    def bot_media(self, t: float) -> None:
        if self.waiting_since is not None:
            self.result.response_latencies.append(t - self.waiting_since)
            self.waiting_since = None

    def bot_cleared(self, t: float) -> None:
        if self.barging_since is not None:
            self.result.barge_in_reactions.append(t - self.barging_since)
            self.barging_since, self.cut = None, True


# ---- the call ----------------------------------------------------------------------------------


async def live_call(
    base_url: str,
    microphone: Microphone,
    speaker: AudioOutput,
    script: CallScript | None = None,
    *,
    auth_token: AuthToken | None = None,
    result: CallResult | None = None,
    max_buffer_seconds: float = 60.0,
) -> CallResult:
    """Dial `base_url`'s webhook and talk on the media stream from `microphone`, hearing the bot
    on `speaker`, until the bot hangs up, ``script.max_seconds`` pass, or the microphone stops.

    `script` gives the call's identity (sid, numbers), its length and the mark-echo behaviour;
    its steps are not used. Pass `result` to keep the call so far when this is cancelled.
    The speaker must hold `max_buffer_seconds` of audio (our bot keeps 0.1 s ahead of
    playout; one that sends much faster than real time has the excess dropped and counted).
    Cancelling (Ctrl-C) hangs up cleanly: `stop` is sent and the socket closed (shielded, at
    most `HANG_UP_TIMEOUT_S`), `result` is complete, and the cancellation propagates.
    """
    script = script or CallScript(max_seconds=600.0)
    result = result if result is not None else CallResult()
    target = await dial(base_url, script, auth_token)
    proto = CallerProtocol(call_sid=script.call_sid)
    framer = MicFramer(microphone.sample_rate)
    line = SpeakerLine(
        speaker.sample_rate,
        echo_marks=script.echo_marks,
        echo_marks_on_clear=script.echo_marks_on_clear,
        max_buffer_seconds=max_buffer_seconds,
    )
    measure = _Measure(result)
    caller_pcm = bytearray()
    bot_pcm = bytearray()
    t0 = anyio.current_time()

    def now() -> float:
        return anyio.current_time() - t0

    def echo(names: list[str]) -> None:
        for name in names:
            proto.send_mark(name)
            result.marks_echoed.append(name)

    url = plain_ws_on_loopback(target.url)
    try:
        async with connect(url, max_size=1 << 20, open_timeout=10) as ws:

            async def flush() -> None:
                for item in proto.data_to_send():
                    if isinstance(item, str):
                        await ws.send(item)

            async def receive(scope: anyio.CancelScope) -> None:
                try:
                    async for message in ws:
                        t = now()
                        for event in proto.receive(message, t):
                            if isinstance(event, BotMedia):
                                result.bot_media_at(t)
                                measure.bot_media(t)
                                pcm = line.receive_audio(event.payload, speaker.samples_played)
                                if pcm:
                                    await speaker.play(pcm)  # returns at once: line bounds it
                            elif isinstance(event, BotMark):
                                result.marks_in += 1
                                line.receive_mark(event.name)
                            elif isinstance(event, BotClear):
                                speaker.clear()  # the queued audio goes, at once
                                dropped, names = line.clear(speaker.samples_played)
                                played = line.heard(speaker.samples_played)
                                result.bot_cleared_at(t, played=played, dropped=dropped)
                                measure.bot_cleared(t)
                                echo(names)
                            elif isinstance(event, ProtocolViolation):
                                result.violations.append(f"{event.kind}: {event.detail}")
                        await flush()
                except ConnectionClosed:
                    pass
                result.close_code = ws.close_code
                result.close_reason = ws.close_reason or ""
                if not result.hung_up_by:
                    result.hung_up_by = "bot"
                scope.cancel()  # the call is over: stop listening to the microphone

            async def talk() -> None:
                proto.send_connected()
                proto.send_start(target.parameters)
                await flush()
                async for block in microphone.mic_frames():
                    for frame in framer.push(block.pcm):
                        pcm8k = ulaw_decode(frame)
                        caller_pcm.extend(pcm8k)
                        n = len(caller_pcm) // FRAME_PCM_BYTES - 1
                        proto.send_media(frame, timestamp_ms=round(n * FRAME_SECONDS * 1000))
                        measure.sent(pcm8k, now(), line.audible(speaker.samples_played))
                    tail, names, played = line.tick(speaker.samples_played)
                    if tail:
                        await speaker.play(tail)
                    echo(names)
                    # the speaker's audio of this frame, on the caller's clock
                    at = max(0, len(caller_pcm) - FRAME_PCM_BYTES)
                    if len(bot_pcm) < at:
                        bot_pcm.extend(bytes(at - len(bot_pcm)))
                    bot_pcm.extend(played)
                    await flush()
                    if now() >= script.max_seconds:
                        break
                result.hung_up_by = result.hung_up_by or "caller"

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(receive, tg.cancel_scope)
                    await talk()
                    tg.cancel_scope.cancel()
            finally:
                # hang up as a caller does: `stop`, then close (also when cancelled: Ctrl-C)
                with anyio.move_on_after(HANG_UP_TIMEOUT_S, shield=True):
                    if result.hung_up_by != "bot":
                        result.hung_up_by = "caller"
                        proto.send_stop()
                        try:
                            await flush()
                        except ConnectionClosed:
                            pass
                    await ws.close()
                if result.close_code is None:
                    result.close_code = ws.close_code
    finally:
        if line.discarded:
            log.warning(
                "the bot sent %.1f s of audio far ahead of playout; dropped it",
                line.discarded / SAMPLE_RATE,
            )
        result.caller_pcm = bytes(caller_pcm)
        result.bot_pcm = bytes(bot_pcm)
    return result
