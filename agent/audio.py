"""Audio frames, formats and the playout buffer.

Everything in voxloop speaks one format internally: 16-bit signed little-endian mono PCM at a
stated sample rate. This module holds the small pieces around it:

- `AudioFrame`: PCM plus its sample rate.
- Resampling with soxr: `resample` (one-shot) and `StreamResampler` (chunked, no clicks at chunk
  boundaries because the filter state carries over).
- G.711 codecs (`ulaw_encode`/`ulaw_decode`, `alaw_encode`/`alaw_decode`), bit-exact with the
  ITU-T G.191 reference implementation, vectorised with numpy lookup tables.
- `pcm_to_float` / `float_to_pcm`, `read_wav` / `write_wav` (stdlib `wave`).
- `PlayoutBuffer`: the bounded queue between the agent's voice and a speaker callback.
"""

from __future__ import annotations

import threading
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import numpy as np
import numpy.typing as npt
import soxr

SAMPLE_WIDTH = 2
"""Bytes per sample of voxloop's PCM (16-bit)."""

ResampleQuality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]


def _check_pcm(pcm: bytes | bytearray | memoryview, what: str = "pcm") -> None:
    if len(pcm) % SAMPLE_WIDTH:
        raise ValueError(
            f"{what} must be 16-bit PCM (an even number of bytes), got {len(pcm)} bytes"
        )


def _check_rate(sample_rate: int, what: str = "sample_rate") -> None:
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"{what} must be a positive integer (Hz), got {sample_rate!r}")


def pcm_to_array(pcm: bytes | bytearray | memoryview) -> Int16Array:
    """View 16-bit little-endian PCM as a read-only int16 numpy array (no copy)."""
    _check_pcm(pcm)
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A piece of 16-bit little-endian mono PCM and its sample rate."""

    pcm: bytes
    sample_rate: int

    def __post_init__(self) -> None:
        _check_pcm(self.pcm, "AudioFrame.pcm")
        _check_rate(self.sample_rate, "AudioFrame.sample_rate")

    @property
    def samples(self) -> int:
        """Number of samples in the frame."""
        return len(self.pcm) // SAMPLE_WIDTH

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.samples / self.sample_rate

    def to_array(self) -> Int16Array:
        """The samples as an int16 numpy array (read-only view)."""
        return pcm_to_array(self.pcm)

    @classmethod
    def silence(cls, sample_rate: int, seconds: float) -> AudioFrame:
        """`seconds` of digital silence (rounded to whole samples)."""
        _check_rate(sample_rate)
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        return cls(bytes(round(seconds * sample_rate) * SAMPLE_WIDTH), sample_rate)


# --------------------------------------------------------------------------------------------
# Resampling


def resample(pcm: bytes, src_rate: int, dst_rate: int, quality: ResampleQuality = "HQ") -> bytes:
    """Resample a whole PCM16 mono signal at once (soxr). Returns `pcm` itself if rates match."""
    _check_rate(src_rate, "src_rate")
    _check_rate(dst_rate, "dst_rate")
    _check_pcm(pcm)
    if src_rate == dst_rate or not pcm:
        return pcm
    out = soxr.resample(pcm_to_array(pcm), src_rate, dst_rate, quality=quality)
    return np.asarray(out, dtype="<i2").tobytes()


class StreamResampler:
    """Resample a PCM16 mono stream chunk by chunk.

    The filter state carries over between `process` calls, so chunk boundaries leave no clicks
    and the output, concatenated, equals a one-shot resampling of the whole signal. soxr holds
    back a little audio (its filter delay, plus internal blocking at higher qualities); `flush`
    returns that tail at the end of the stream and resets the resampler for a new stream.
    Output sample *k* always corresponds to input time *k / dst_rate*.

    "LQ" emits output smoothly with every chunk (good for VAD); "HQ" (default) emits in bursts of
    ~30 ms but is transparent for listening.
    """

    def __init__(self, src_rate: int, dst_rate: int, quality: ResampleQuality = "HQ") -> None:
        _check_rate(src_rate, "src_rate")
        _check_rate(dst_rate, "dst_rate")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._stream: soxr.ResampleStream | None = None
        if src_rate != dst_rate:
            self._stream = soxr.ResampleStream(
                src_rate, dst_rate, 1, dtype="int16", quality=quality
            )

    def process(self, pcm: bytes) -> bytes:
        """Resample the next chunk; may return less (or more) than the proportional amount."""
        _check_pcm(pcm)
        if self._stream is None:
            return bytes(pcm)
        if not pcm:
            return b""
        out = self._stream.resample_chunk(pcm_to_array(pcm))
        return np.asarray(out, dtype="<i2").tobytes()

    def flush(self) -> bytes:
        """Return the audio still held back, then reset for a new stream."""
        if self._stream is None:
            return b""
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream.clear()
        return np.asarray(out, dtype="<i2").tobytes()


# --------------------------------------------------------------------------------------------
# G.711 (ITU-T G.191 reference semantics: negative samples use their one's complement
# magnitude, mu-law works on the top 14 bits and A-law on the top 13 bits of the 16-bit sample).


def _build_ulaw_tables() -> tuple[npt.NDArray[np.uint8], Int16Array]:
    linear = np.arange(-32768, 32768, dtype=np.int32)
    magnitude = np.where(linear < 0, ~linear, linear) >> 2  # 14-bit magnitude
    biased = np.minimum(magnitude + 33, 0x1FFF)
    thresholds = np.array([64, 128, 256, 512, 1024, 2048, 4096], dtype=np.int32)
    segment = np.searchsorted(thresholds, biased, side="right") + 1  # 1..8
    high = 8 - segment
    low = 0xF - ((biased >> segment) & 0xF)
    code = (high << 4) | low | np.where(linear >= 0, 0x80, 0)
    # Index the encoder by the sample's bit pattern read as uint16.
    encode = np.empty(65536, dtype=np.uint8)
    encode[linear.astype(np.uint16)] = code.astype(np.uint8)

    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    exponent = (inverted >> 4) & 0x7
    mantissa = inverted & 0xF
    step = 4 << (exponent + 1)
    value = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33  # 16-bit scale
    decode = np.where(codes < 0x80, -value, value).astype(np.int16)
    return encode, decode


def _build_alaw_tables() -> tuple[npt.NDArray[np.uint8], Int16Array]:
    linear = np.arange(-32768, 32768, dtype=np.int32)
    magnitude = np.where(linear < 0, ~linear, linear) >> 4  # 12-bit magnitude
    # Segment 0 (< 16) is linear; segment e >= 1 keeps 4 bits after the leading one.
    thresholds = np.array([16, 32, 64, 128, 256, 512, 1024], dtype=np.int32)
    segment = np.searchsorted(thresholds, magnitude, side="right")  # 0..7
    in_segment = (magnitude >> np.maximum(segment - 1, 0)) - 16 + (segment << 4)
    code = np.where(segment == 0, magnitude, in_segment) | np.where(linear >= 0, 0x80, 0)
    encode = np.empty(65536, dtype=np.uint8)
    encode[linear.astype(np.uint16)] = (code ^ 0x55).astype(np.uint8)

    codes = np.arange(256, dtype=np.int32)
    ix = (codes ^ 0x55) & 0x7F
    iexp = ix >> 4
    m = ix & 0xF
    m = np.where(iexp > 0, m + 16, m)
    m = (m << 4) + 0x8
    m = np.where(iexp > 1, m << np.maximum(iexp - 1, 0), m)
    decode = np.where(codes > 127, m, -m).astype(np.int16)
    return encode, decode


_ULAW_ENCODE, _ULAW_DECODE = _build_ulaw_tables()
_ALAW_ENCODE, _ALAW_DECODE = _build_alaw_tables()


def _g711_encode(pcm: bytes, table: npt.NDArray[np.uint8]) -> bytes:
    samples = pcm_to_array(pcm)
    return table[samples.view(np.uint16)].tobytes()


def _g711_decode(data: bytes, table: Int16Array) -> bytes:
    codes = np.frombuffer(data, dtype=np.uint8)
    return table[codes].astype("<i2").tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """Encode PCM16 to G.711 mu-law, one byte per sample."""
    return _g711_encode(pcm, _ULAW_ENCODE)


def ulaw_decode(data: bytes) -> bytes:
    """Decode G.711 mu-law bytes to PCM16."""
    return _g711_decode(data, _ULAW_DECODE)


def alaw_encode(pcm: bytes) -> bytes:
    """Encode PCM16 to G.711 A-law, one byte per sample."""
    return _g711_encode(pcm, _ALAW_ENCODE)


def alaw_decode(data: bytes) -> bytes:
    """Decode G.711 A-law bytes to PCM16."""
    return _g711_decode(data, _ALAW_DECODE)


# --------------------------------------------------------------------------------------------
# Float conversion and WAV files


def decode_g711(encoding: str, data: bytes) -> bytes:
    """``data`` in G.711 ``encoding`` ("ulaw" or "alaw") as PCM16."""
    if encoding == "ulaw":
        return ulaw_decode(data)
    if encoding == "alaw":
        return alaw_decode(data)
    raise ValueError(f"cannot decode {encoding!r} audio here; ask the TTS for PCM or G.711")


def pcm_to_float(pcm: bytes) -> Float32Array:
    """PCM16 to float32 in [-1.0, 1.0) (sample / 32768)."""
    return pcm_to_array(pcm).astype(np.float32) / np.float32(32768.0)


def float_to_pcm(samples: npt.ArrayLike) -> bytes:
    """Float samples (nominally [-1, 1]) to PCM16: scaled by 32768, rounded, clipped.

    `float_to_pcm(pcm_to_float(pcm)) == pcm` for every PCM16 signal.
    """
    values = np.asarray(samples, dtype=np.float64) * 32768.0
    return np.clip(np.rint(values), -32768, 32767).astype("<i2").tobytes()


def read_wav(path: str | Path) -> AudioFrame:
    """Read a 16-bit PCM WAV file; multi-channel files are mixed down to mono (average)."""
    with wave.open(str(path), "rb") as wav:
        width = wav.getsampwidth()
        if width != SAMPLE_WIDTH:
            raise ValueError(
                f"{path}: only 16-bit PCM WAV is supported, this file has {8 * width}-bit "
                "samples; convert it first (e.g. `ffmpeg -i in.wav -c:a pcm_s16le out.wav`)"
            )
        channels = wav.getnchannels()
        rate = wav.getframerate()
        data = wav.readframes(wav.getnframes())
    if channels > 1:
        frames = pcm_to_array(data).reshape(-1, channels).astype(np.int32)
        data = np.rint(frames.mean(axis=1)).astype("<i2").tobytes()
    return AudioFrame(data, rate)


def write_wav(
    path: str | Path,
    audio: AudioFrame | bytes,
    sample_rate: int | None = None,
    channels: int = 1,
) -> None:
    """Write 16-bit PCM to a WAV file.

    `audio` is an `AudioFrame` (its rate is used unless `sample_rate` is given and differs, which
    is an error) or raw interleaved PCM16 bytes (then `sample_rate` is required).
    """
    if isinstance(audio, AudioFrame):
        if sample_rate is not None and sample_rate != audio.sample_rate:
            raise ValueError(
                f"sample_rate={sample_rate} contradicts the frame's rate {audio.sample_rate}; "
                "resample the frame first or leave sample_rate out"
            )
        pcm, rate = audio.pcm, audio.sample_rate
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when writing raw PCM bytes")
        pcm, rate = bytes(audio), sample_rate
    _check_rate(rate)
    if channels < 1 or len(pcm) % (SAMPLE_WIDTH * channels):
        raise ValueError(
            f"{len(pcm)} bytes is not a whole number of {channels}-channel 16-bit frames"
        )
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def write_stereo_wav(path: str | Path, user_pcm: bytes, agent_pcm: bytes, sample_rate: int) -> Path:
    """Write user (left) and agent (right) PCM16 mono, same clock, as one stereo WAV.

    The shorter side is padded with silence at the end; the folder is made if needed.
    """
    user = pcm_to_array(user_pcm)
    agent = pcm_to_array(agent_pcm)
    frames = max(user.size, agent.size)
    stereo = np.zeros((frames, 2), dtype="<i2")
    stereo[: user.size, 0] = user
    stereo[: agent.size, 1] = agent
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, stereo.tobytes(), sample_rate, channels=2)
    return out


# --------------------------------------------------------------------------------------------
# Playout buffer


class PlayoutBuffer:
    """A bounded PCM16 queue between the agent (producer) and a speaker clock (consumer).

    It satisfies `agent.interfaces.AudioOutput` (`play` is `write`).

    Threads: `read` is meant to be called from an audio callback thread (sounddevice) or a clock
    task; `write`, `clear`, `mark` and `drain` run on the event loop. One `threading.Lock`
    guards the queue and counters; it is held only for a copy, never across an await, so the
    audio thread never waits on the event loop. The event loop cannot be woken safely and
    cheaply from a real-time audio thread, so the waiting side polls: `write` and `drain` sleep
    for roughly the time the consumer needs to make the awaited progress at `sample_rate`
    (clamped to 2..20 ms) and check again. Simple, correct, and at most a few wakeups per block.

    Units: every count is in samples at `sample_rate`.
    """

    _MIN_POLL = 0.002
    _MAX_POLL = 0.02

    def __init__(self, sample_rate: int, max_seconds: float = 2.0) -> None:
        _check_rate(sample_rate)
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
        self.sample_rate = sample_rate
        self.capacity_samples = max(1, round(max_seconds * sample_rate))
        self._lock = threading.Lock()
        self._queue = bytearray()  # `del b[:n]` on a bytearray is amortised O(1) in CPython
        self._played = 0
        self._gain = 1.0
        self._paused = False
        self._position = 0  # samples read in all (padding included): the output clock
        self._first_real: int | None = None  # output clock at the first real sample since mark
        self._last_real_end: int | None = None  # output clock just after the last real sample
        self._level = 0.0  # recent output RMS (decaying peak), for echo estimation

    # -- properties ---------------------------------------------------------------------------

    @property
    def pending_samples(self) -> int:
        """Samples queued and not yet read."""
        with self._lock:
            return len(self._queue) // SAMPLE_WIDTH

    @property
    def samples_played(self) -> int:
        """Real (non-padding) samples read since the last `mark()`."""
        with self._lock:
            return self._played

    @property
    def gain(self) -> float:
        """Linear gain 0..1 applied when samples are read, so a change is heard at once."""
        return self._gain

    @gain.setter
    def gain(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"gain must be between 0.0 and 1.0, got {value!r}")
        with self._lock:
            self._gain = float(value)

    @property
    def paused(self) -> bool:
        """While paused, `read` plays silence and keeps the queue: nothing is lost or counted."""
        return self._paused

    def pause(self) -> float:
        """Hold playout from the next read on (`read` plays silence, the queue stays); return
        the output clock (seconds) where the silence begins."""
        with self._lock:
            self._paused = True
            return self._position / self.sample_rate

    def resume(self) -> None:
        """Play on from where `pause` held it."""
        with self._lock:
            self._paused = False

    @property
    def position(self) -> int:
        """The output clock: samples handed to the consumer so far, silence padding included."""
        with self._lock:
            return self._position

    @property
    def first_played_position(self) -> int | None:
        """Output clock at the first real sample read since the last `mark()` (None: none yet)."""
        with self._lock:
            return self._first_real

    @property
    def first_played_at(self) -> float | None:
        """`first_played_position` in seconds of the output clock."""
        first = self.first_played_position
        return None if first is None else first / self.sample_rate

    @property
    def last_played_end(self) -> float | None:
        """Output clock (seconds) right after the last real sample read (ever): where the
        output went silent, if nothing real has been read since."""
        with self._lock:
            end = self._last_real_end
        return None if end is None else end / self.sample_rate

    @property
    def level(self) -> float:
        """Recent output loudness (RMS, int16 scale): a peak that decays over ~100 ms of reads.
        The echo guard compares the microphone with it."""
        return self._level

    # -- producer side (event loop) -------------------------------------------------------------

    async def write(self, pcm: bytes) -> None:
        """Queue `pcm`, waiting while the buffer is full.

        A chunk is queued whole or not at all: it goes in once it fits next to what is queued
        (or, if it is larger than the whole capacity, once the buffer is empty). Cancelling
        while waiting queues nothing of this chunk.
        """
        _check_pcm(pcm)
        if not pcm:
            await anyio.lowlevel.checkpoint()
            return
        need = len(pcm) // SAMPLE_WIDTH
        while True:
            with self._lock:
                queued = len(self._queue) // SAMPLE_WIDTH
                if queued == 0 or queued + need <= self.capacity_samples:
                    self._queue += pcm
                    break
                deficit = queued + need - self.capacity_samples
            await anyio.sleep(self._poll_delay(deficit))
        await anyio.lowlevel.checkpoint()

    async def play(self, pcm: bytes) -> None:
        """Same as `write` (the `AudioOutput` name). Cancelling queues nothing of `pcm`."""
        await self.write(pcm)

    def clear(self, *, held_only: bool = False) -> int:
        """Drop everything queued at once; return the number of samples dropped. (Local
        playout: ``held_only`` changes nothing.)"""
        with self._lock:
            dropped = len(self._queue) // SAMPLE_WIDTH
            self._queue.clear()
        return dropped

    def mark(self) -> None:
        """Restart the `samples_played` count (and `first_played_position`) from zero."""
        with self._lock:
            self._played = 0
            self._first_real = None

    async def drain(self) -> None:
        """Wait until the consumer has read everything queued.

        Waits forever if nothing reads. Cancelling stops the waiting only.
        """
        while True:
            pending = self.pending_samples
            if pending == 0:
                await anyio.lowlevel.checkpoint()
                return
            await anyio.sleep(self._poll_delay(pending))

    def _poll_delay(self, samples: int) -> float:
        return min(self._MAX_POLL, max(self._MIN_POLL, samples / self.sample_rate))

    # -- consumer side (any thread, non-blocking) ----------------------------------------------

    def read(self, n_samples: int) -> bytes:
        """Take `n_samples` samples, padded with silence if fewer are queued. Never blocks.

        Only real samples count towards `samples_played`. The current `gain` is applied. While
        `paused`, returns silence and leaves the queue as it is.
        """
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        n_bytes = n_samples * SAMPLE_WIDTH
        with self._lock:
            take = 0 if self._paused else min(n_bytes, len(self._queue))
            chunk = bytes(self._queue[:take])
            del self._queue[:take]
            real = take // SAMPLE_WIDTH
            self._played += real
            if real:
                if self._first_real is None:
                    self._first_real = self._position
                self._last_real_end = self._position + real
            self._position += n_samples
            gain = self._gain
        if gain != 1.0 and chunk:
            scaled = pcm_to_array(chunk).astype(np.float32) * np.float32(gain)
            chunk = np.rint(scaled).astype("<i2").tobytes()
        rms = float(np.sqrt(np.mean(pcm_to_array(chunk).astype(np.float32) ** 2))) if chunk else 0.0
        decay = 0.7 ** (n_samples / (0.02 * self.sample_rate)) if n_samples else 1.0
        self._level = max(rms * take / max(1, n_bytes), self._level * decay)
        if take < n_bytes:
            chunk += bytes(n_bytes - take)
        return chunk
