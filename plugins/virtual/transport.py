"""A virtual audio transport: scripted microphone, recorded speaker, one shared sample clock.

The clock ticks once per block (`block_ms`). Tick *n* happens at stream time *n·block*:

1. the speaker pulls output block *n* (samples [n·B, (n+1)·B)) from the `PlayoutBuffer` and
   records it, silence included;
2. the microphone delivers input block *n−1* (samples [(n−1)·B, n·B)), which has just been
   "captured" — like a sound card, input is only available once its block has passed.

So `recorded_input()[i]` and `recorded_output()[i]` (as samples) describe the same instant,
and a test can say "user speech started at sample N; the output was silent from sample M".
A reaction to mic block *k* can be heard at the earliest in output block *k + 2*.

Pacing:
- `realtime=True`: tick *n* runs at `start + n·block` on `anyio.current_time()` (absolute
  schedule, no drift). If the event loop falls behind, ticks run back to back until caught up;
  no sample is skipped. Mic blocks nobody takes are dropped after `mic_queue_blocks` (counted
  in `mic_overruns`), as with a real device.
- `realtime=False`: lockstep, driven by the consumer: each time it asks `mic_frames()` for
  the next block, one tick runs (at the first request, ticks 0 and 1). Everything the consumer
  does between two requests therefore happens "within" one block, and its reaction to mic
  block *k* is heard exactly from output block *k + 2* — deterministic, as fast as the
  consumer runs, and the clock stands still while nobody reads the mic. Queue output before
  or from the consumer's loop: a separate player task waiting for room in the `PlayoutBuffer`
  polls in wall time and may fall behind the fast clock (that is an underrun: silence).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, Protocol

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent.audio import (
    SAMPLE_WIDTH,
    AudioFrame,
    Int16Array,
    PlayoutBuffer,
    pcm_to_array,
    read_wav,
    resample,
    ulaw_decode,
    ulaw_encode,
    write_stereo_wav,
    write_wav,
)
from agent.interfaces import AudioOutput

MicSource = AudioFrame | bytes | str | Path


class SpeechChunkLike(Protocol):
    @property
    def pcm(self) -> bytes: ...

    @property
    def sample_rate(self) -> int: ...


class SpeechSource(Protocol):
    """A blocking speech engine (e.g. `plugins.local.PiperEngine`)."""

    def synthesize(self, text: str) -> Iterable[SpeechChunkLike]: ...


class VirtualTransport:
    """Microphone from a WAV file / PCM plus scripted injections; speaker into a recording.

    Use::

        transport = VirtualTransport(mic="user.wav", duration_s=5)
        transport.inject(more_pcm, at_seconds=2.0)
        async with transport.running():
            async for frame in transport.mic_frames(): ...
            await transport.output.play(pcm)
        write_wav("out.wav", transport.recorded_output(), transport.sample_rate)

    `mic` (and injected audio) given as `AudioFrame` or WAV path is resampled to `sample_rate`;
    raw bytes must already be PCM16 mono at `sample_rate`. After the scripted audio the mic
    delivers silence. With `duration_s`, the clock stops after that much mic audio and
    `mic_frames()` ends; otherwise it runs until `running()` exits. ``line="ulaw"`` passes the
    user's voice through G.711 μ-law, as a phone network does.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        block_ms: int = 20,
        realtime: bool = True,
        mic: MicSource | None = None,
        duration_s: float | None = None,
        max_output_seconds: float = 2.0,
        max_record_s: float = 600.0,
        mic_queue_blocks: int = 50,
        echo_gain: float = 0.0,
        echo_delay_ms: int = 40,
        line: Literal["clean", "ulaw"] = "clean",
    ) -> None:
        if block_ms <= 0 or sample_rate * block_ms % 1000:
            raise ValueError(
                f"block_ms={block_ms} must be > 0 and a whole number of samples at "
                f"{sample_rate} Hz (e.g. 10, 20 or 30)"
            )
        if duration_s is not None and duration_s <= 0:
            raise ValueError(f"duration_s must be > 0 seconds or None, got {duration_s!r}")
        self.sample_rate = sample_rate
        self.line = line
        self.block_ms = block_ms
        self.block_samples = sample_rate * block_ms // 1000
        self.realtime = realtime
        self._duration_samples = None if duration_s is None else round(duration_s * sample_rate)
        self._max_record_bytes = round(max_record_s * sample_rate) * SAMPLE_WIDTH
        self._speaker = PlayoutBuffer(sample_rate, max_output_seconds)
        self._script: list[tuple[int, Int16Array]] = []
        self._script_end = 0
        self._mic_delivered = 0  # samples of mic audio delivered (= the shared clock)
        self._tick_at = 0.0  # anyio time of the last tick (real time only)
        self._record_in = bytearray()
        self._record_out = bytearray()
        # Speaker-to-mic bleed, as on a laptop without an echo canceller (0 = headphones).
        self.echo_gain = echo_gain
        self._echo_delay = round(echo_delay_ms * sample_rate / 1000)
        self.recording_truncated = False
        self.mic_overruns = 0
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._tick = 0
        self._started = False
        self._running = False
        self._stopped = anyio.Event()
        self._mic_send: MemoryObjectSendStream[AudioFrame]
        self._mic_receive: MemoryObjectReceiveStream[AudioFrame]
        self._mic_send, self._mic_receive = anyio.create_memory_object_stream[AudioFrame](
            mic_queue_blocks
        )
        if mic is not None:
            self.inject(mic, at_seconds=0.0)

    # -- scripting ------------------------------------------------------------------------------

    def _to_pcm(self, audio: MicSource) -> bytes:
        if isinstance(audio, str | Path):
            audio = read_wav(audio)
        if isinstance(audio, AudioFrame):
            pcm = resample(audio.pcm, audio.sample_rate, self.sample_rate)
        else:
            pcm = bytes(audio)
        if self.line == "ulaw":  # what a phone network does to the caller's voice
            pcm = ulaw_decode(ulaw_encode(pcm))
        return pcm

    def speak(self, engine: SpeechSource, text: str, at_seconds: float | None = None) -> int:
        """Have the scripted user say ``text`` with ``engine`` (anything whose
        ``synthesize(text)`` yields chunks with ``.pcm`` and ``.sample_rate``, such as
        `plugins.local.PiperEngine`), starting at ``at_seconds`` as `inject` does. Blocking:
        synthesis runs here. Returns the start sample."""
        chunks = list(engine.synthesize(text))
        if not chunks:
            raise ValueError(f"the engine produced no audio for {text!r}")
        pcm = b"".join(chunk.pcm for chunk in chunks)
        return self.inject(AudioFrame(pcm, chunks[0].sample_rate), at_seconds)

    def inject(self, audio: MicSource, at_seconds: float | None = None) -> int:
        """Mix `audio` into the microphone starting at `at_seconds` (None: the next block not
        yet delivered). Overlapping audio is summed and clipped. Returns the start sample.

        Raises `ValueError` if that moment has already been delivered.
        """
        pcm = self._to_pcm(audio)
        start = self._mic_delivered if at_seconds is None else round(at_seconds * self.sample_rate)
        if start < self._mic_delivered:
            raise ValueError(
                f"cannot inject at {start / self.sample_rate:.3f} s: the microphone already "
                f"delivered audio up to {self._mic_delivered / self.sample_rate:.3f} s"
            )
        samples = pcm_to_array(pcm).copy()
        if len(samples):
            self._script.append((start, samples))
            self._script_end = max(self._script_end, start + len(samples))
        return start

    @property
    def script_end_seconds(self) -> float:
        """Where the last scripted microphone audio ends."""
        return self._script_end / self.sample_rate

    def _mic_block(self, start: int) -> bytes:
        end = start + self.block_samples
        mixed = np.zeros(self.block_samples, dtype=np.int32)
        keep: list[tuple[int, Int16Array]] = []
        for item_start, samples in self._script:
            item_end = item_start + len(samples)
            if item_end <= start:
                continue  # fully delivered: forget it
            keep.append((item_start, samples))
            lo, hi = max(start, item_start), min(end, item_end)
            if lo < hi:
                mixed[lo - start : hi - start] += samples[lo - item_start : hi - item_start]
        self._script = keep
        return np.clip(mixed, -32768, 32767).astype("<i2").tobytes()

    # -- the two sides --------------------------------------------------------------------------

    def mic_frames(self) -> AsyncIterator[AudioFrame]:
        """The microphone: one `AudioFrame` per block. Ends when the clock stops.

        Realtime: every call returns the same underlying stream (frames are not duplicated).
        Lockstep (`realtime=False`): iterating drives the clock; call it inside `running()`.
        """
        if self.realtime:
            return self._mic_receive
        return self._lockstep_frames()

    async def _lockstep_frames(self) -> AsyncIterator[AudioFrame]:
        if not self._running:
            raise RuntimeError(
                "with realtime=False the mic drives the clock: iterate mic_frames() inside "
                "`async with transport.running():`"
            )
        while self._running and not self._duration_reached():
            await anyio.lowlevel.checkpoint()
            if self._tick == 0:
                self._pull_output()
            self._pull_output()
            yield self._capture_mic_block()
        self._stop()

    @property
    def output(self) -> AudioOutput:
        """The speaker (a `PlayoutBuffer` at `sample_rate`)."""
        return self._speaker

    @property
    def playout(self) -> PlayoutBuffer:
        """The speaker's buffer itself (for `gain` ducking and `pending_samples`)."""
        return self._speaker

    # -- clock ----------------------------------------------------------------------------------

    @property
    def clock_samples(self) -> int:
        """Shared clock: microphone samples delivered so far (= stream time × rate)."""
        return self._mic_delivered

    @property
    def clock_seconds(self) -> float:
        """`clock_samples` in seconds."""
        return self._mic_delivered / self.sample_rate

    def now(self) -> float:
        """The conversation's clock: `clock_seconds`, and in real time also the time since the
        last tick (at most one block), so marks between ticks keep their order. In lockstep the
        clock stands still between ticks (virtual time)."""
        if not self.realtime:
            return self.clock_seconds
        since = min(anyio.current_time() - self._tick_at, self.block_samples / self.sample_rate)
        return self.clock_seconds + max(0.0, since)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[VirtualTransport]:
        """Run the clock for the duration of the block. Exiting stops it and ends the mic.

        One use per transport. Cancelling the enclosing scope stops the clock.
        """
        if self._started:
            raise RuntimeError("a VirtualTransport runs once; create a new one")
        self._started = self._running = True
        try:
            if self.realtime:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._realtime_clock)
                    try:
                        yield self
                    finally:
                        tg.cancel_scope.cancel()
            else:
                yield self
        finally:
            self._stop()

    async def wait_until(self, seconds: float) -> None:
        """Wait until the clock has reached `seconds` (or has stopped).

        Cancelling stops the waiting only.
        """
        target = round(seconds * self.sample_rate)
        if self._mic_delivered >= target or self._stopped.is_set():
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        waiter = (target, event)
        self._waiters.append(waiter)
        try:
            await event.wait()  # set by the clock when it gets there or stops
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _duration_reached(self) -> bool:
        return self._duration_samples is not None and self._mic_delivered >= self._duration_samples

    def _pull_output(self) -> None:
        """Tick step 1: the speaker takes output block `_tick`."""
        self._record(self._record_out, self._speaker.read(self.block_samples))
        self._tick += 1

    def _capture_mic_block(self) -> AudioFrame:
        """Tick step 2: mic block `_tick - 2` (just captured) advances the clock."""
        pcm = self._mic_block(self._mic_delivered)
        if self.echo_gain:
            pcm = self._add_echo(pcm, self._mic_delivered)
        self._record(self._record_in, pcm)
        self._mic_delivered += self.block_samples
        self._tick_at = anyio.current_time()
        self._wake_waiters()
        return AudioFrame(pcm, self.sample_rate)

    def _stop(self) -> None:
        self._running = False
        self._mic_send.close()
        self._stopped.set()
        for _, event in self._waiters:
            event.set()
        self._waiters.clear()

    async def _realtime_clock(self) -> None:
        block_s = self.block_samples / self.sample_rate
        start = anyio.current_time()
        try:
            self._pull_output()  # tick 0: output only, no mic block has passed yet
            while not self._duration_reached():
                await anyio.sleep_until(start + self._tick * block_s)
                self._pull_output()
                frame = self._capture_mic_block()
                try:
                    self._mic_send.send_nowait(frame)
                except anyio.WouldBlock:
                    self.mic_overruns += 1
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # nobody listens any more; the clock keeps time for the speaker
        finally:
            self._stop()

    def _wake_waiters(self) -> None:
        remaining: list[tuple[int, anyio.Event]] = []
        for target, event in self._waiters:
            if self._mic_delivered >= target:
                event.set()
            else:
                remaining.append((target, event))
        self._waiters = remaining

    def _add_echo(self, pcm: bytes, start: int) -> bytes:
        """Mix what the speaker played ``echo_delay_ms`` earlier into this mic block."""
        lo = max(0, start - self._echo_delay) * SAMPLE_WIDTH
        played = bytes(self._record_out[lo : lo + len(pcm)])
        if not played or start < self._echo_delay:
            return pcm
        echo = pcm_to_array(played).astype(np.float32) * np.float32(self.echo_gain)
        mixed = pcm_to_array(pcm).astype(np.float32)
        mixed[: len(echo)] += echo
        return np.clip(np.rint(mixed), -32768, 32767).astype("<i2").tobytes()

    def _record(self, recording: bytearray, pcm: bytes) -> None:
        room = self._max_record_bytes - len(recording)
        if room < len(pcm):
            self.recording_truncated = True
        if room > 0:
            recording += pcm[:room]

    # -- recordings -----------------------------------------------------------------------------

    def recorded_input(self) -> bytes:
        """Everything the microphone delivered, from sample 0 (PCM16 at `sample_rate`)."""
        return bytes(self._record_in)

    def recorded_output(self) -> bytes:
        """Everything the speaker played, silence included, from sample 0."""
        return bytes(self._record_out)

    def save_input_wav(self, path: str | Path) -> None:
        """Write `recorded_input()` as a WAV file."""
        write_wav(path, self.recorded_input(), self.sample_rate)

    def save_output_wav(self, path: str | Path) -> None:
        """Write `recorded_output()` as a WAV file."""
        write_wav(path, self.recorded_output(), self.sample_rate)

    def save_stereo_wav(self, path: str | Path) -> Path:
        """Write the microphone (left) and the speaker (right) as one stereo WAV on the shared
        clock (the shorter side padded with silence); the folder is made if needed."""
        return write_stereo_wav(
            path, self.recorded_input(), self.recorded_output(), self.sample_rate
        )
