"""Output formats of the ElevenLabs TTS protocol, with streaming encoders and decoders.

The `output_format` query parameter names what the audio frames carry: raw PCM16 mono
(`pcm_<rate>`), G.711 (`ulaw_8000`, `alaw_8000`) or MP3 (`mp3_<rate>_<kbps>`). The server side
uses one `Encoder` per context stream (resampling the engine's PCM with a streaming soxr
resampler, then lameenc for MP3); the client side uses one `Decoder` per context stream (PyAV's
incremental MP3 parser, so MP3 frames may be split across audio messages). G.711 and the
resampler come from `agent.audio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from agent.audio import (
    StreamResampler,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

__all__ = [
    "DEFAULT_OUTPUT_FORMAT",
    "SUPPORTED_FORMATS",
    "Decoder",
    "Encoder",
    "OutputFormat",
    "audio_duration_seconds",
    "parse_output_format",
]

Codec = Literal["pcm", "ulaw", "alaw", "mp3"]

_LAME_QUALITY = 5  # 2 = best/slowest, 7 = fastest; 5 is lame's "good" default


@dataclass(frozen=True)
class OutputFormat:
    """One `output_format` value: codec, sample rate, and the bitrate for MP3."""

    name: str
    codec: Codec
    sample_rate: int
    bitrate_kbps: int | None = None


def _build_formats() -> dict[str, OutputFormat]:
    formats: list[OutputFormat] = [
        OutputFormat(f"pcm_{rate}", "pcm", rate)
        for rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000)
    ]
    formats.append(OutputFormat("ulaw_8000", "ulaw", 8000))
    formats.append(OutputFormat("alaw_8000", "alaw", 8000))
    formats.append(OutputFormat("mp3_22050_32", "mp3", 22050, 32))
    formats.extend(
        OutputFormat(f"mp3_44100_{kbps}", "mp3", 44100, kbps) for kbps in (32, 64, 96, 128, 192)
    )
    return {fmt.name: fmt for fmt in formats}


SUPPORTED_FORMATS: dict[str, OutputFormat] = _build_formats()

# Short names the service accepts: mp3 without a bitrate means its default bitrate.
_ALIASES: dict[str, str] = {"mp3_44100": "mp3_44100_128", "mp3_22050": "mp3_22050_32"}

DEFAULT_OUTPUT_FORMAT = SUPPORTED_FORMATS["mp3_44100_128"]


def parse_output_format(name: str) -> OutputFormat:
    """Look up an `output_format` value ("mp3_44100" means mp3_44100_128).

    Raises ValueError naming every supported format when `name` is unknown.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    fmt = SUPPORTED_FORMATS.get(key)
    if fmt is None:
        supported = ", ".join(SUPPORTED_FORMATS)
        aliases = ", ".join(f"{alias} (= {target})" for alias, target in _ALIASES.items())
        raise ValueError(
            f"Unsupported output_format {name!r}. Supported: {supported}; aliases: {aliases}."
        )
    return fmt


def audio_duration_seconds(fmt: OutputFormat, n_bytes: int) -> float:
    """Seconds of audio in `n_bytes` of `fmt`-encoded data (MP3: estimated from the bitrate)."""
    if fmt.codec == "pcm":
        return n_bytes / 2 / fmt.sample_rate
    if fmt.codec in ("ulaw", "alaw"):
        return n_bytes / fmt.sample_rate
    assert fmt.bitrate_kbps is not None
    return n_bytes * 8 / (fmt.bitrate_kbps * 1000)


class _ByteCarry:
    """Splits a byte stream into whole PCM16 samples, keeping an odd trailing byte for later."""

    def __init__(self) -> None:
        self._leftover = b""

    def take(self, data: bytes) -> bytes:
        data = self._leftover + data
        cut = len(data) - len(data) % 2
        self._leftover = data[cut:]
        return data[:cut]

    @property
    def pending(self) -> int:
        return len(self._leftover)


class Encoder:
    """Turns one stream of PCM16 mono at `input_rate` into `fmt`-encoded bytes, chunk by chunk.

    `encode()` returns whatever is ready (possibly b"": the resampler and the MP3 encoder hold
    back a few milliseconds); `finish()` flushes the rest. One Encoder per context stream.
    """

    def __init__(self, fmt: OutputFormat, input_rate: int) -> None:
        self.format = fmt
        self.input_rate = input_rate
        self._carry = _ByteCarry()
        self._resampler = StreamResampler(input_rate, fmt.sample_rate)
        self._lame: Any = None
        self._lame_fed = False
        self._finished = False
        if fmt.codec == "mp3":
            import lameenc

            assert fmt.bitrate_kbps is not None
            lame = lameenc.Encoder()
            lame.set_bit_rate(fmt.bitrate_kbps)
            lame.set_in_sample_rate(fmt.sample_rate)
            lame.set_out_sample_rate(fmt.sample_rate)
            lame.set_channels(1)
            lame.set_quality(_LAME_QUALITY)
            self._lame = lame

    def encode(self, pcm: bytes) -> bytes:
        """Encode the next piece of PCM16 mono (any length; an odd byte waits for the next)."""
        if self._finished:
            raise RuntimeError("Encoder.encode() called after finish(); create a new Encoder")
        return self._compress(self._resampler.process(self._carry.take(pcm)))

    def finish(self) -> bytes:
        """Flush the resampler and the codec; returns the last bytes of the stream."""
        if self._finished:
            return b""
        self._finished = True
        tail = self._compress(self._resampler.flush())
        if self._lame is not None and self._lame_fed:
            tail += bytes(self._lame.flush())  # lame refuses to flush a stream it never saw
        return tail

    def _compress(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        codec = self.format.codec
        if codec == "pcm":
            return pcm
        if codec == "ulaw":
            return ulaw_encode(pcm)
        if codec == "alaw":
            return alaw_encode(pcm)
        self._lame_fed = True
        return bytes(self._lame.encode(pcm))


class Decoder:
    """Turns one stream of `fmt`-encoded bytes back into PCM16 mono at `fmt.sample_rate`.

    Accepts arbitrary splits: an odd PCM byte or a partial MP3 frame waits for the next call.
    One Decoder per context stream.
    """

    def __init__(self, fmt: OutputFormat) -> None:
        self.format = fmt
        self._carry = _ByteCarry()
        self._codec_context: Any = None
        self._resampler: StreamResampler | None = None
        self._mp3_rate: int | None = None
        self._finished = False
        if fmt.codec == "mp3":
            import av

            self._codec_context = av.CodecContext.create("mp3", "r")

    def decode(self, data: bytes) -> bytes:
        """Decode the next piece of the stream; returns the PCM16 that is ready (maybe b"")."""
        if self._finished:
            raise RuntimeError("Decoder.decode() called after finish(); create a new Decoder")
        codec = self.format.codec
        if codec == "pcm":
            return self._carry.take(data)
        if codec == "ulaw":
            return ulaw_decode(data)
        if codec == "alaw":
            return alaw_decode(data)
        return self._decode_mp3(data)

    def finish(self) -> bytes:
        """Flush buffered frames (MP3). A dangling odd PCM byte cannot form a sample: dropped."""
        if self._finished:
            return b""
        self._finished = True
        if self.format.codec != "mp3":
            return b""
        pieces = [self._decode_mp3(None)]
        pieces.extend(self._frames_to_pcm(self._codec_context.decode(None)))
        if self._resampler is not None:
            pieces.append(self._resampler.flush())
        return b"".join(pieces)

    def _decode_mp3(self, data: bytes | None) -> bytes:
        pieces: list[bytes] = []
        for packet in self._codec_context.parse(data):
            pieces.extend(self._frames_to_pcm(self._codec_context.decode(packet)))
        return b"".join(pieces)

    def _frames_to_pcm(self, frames: Any) -> list[bytes]:
        out: list[bytes] = []
        for frame in frames:
            pcm = _frame_to_mono_int16(frame).astype("<i2", copy=False).tobytes()
            rate = int(frame.sample_rate)
            if rate != self.format.sample_rate:
                if self._resampler is None or self._mp3_rate != rate:
                    self._resampler = StreamResampler(rate, self.format.sample_rate)
                    self._mp3_rate = rate
                pcm = self._resampler.process(pcm)
            out.append(pcm)
        return out


def _frame_to_mono_int16(frame: Any) -> npt.NDArray[np.int16]:
    """A PyAV audio frame (any sample format and channel count) as int16 mono samples."""
    array = np.asarray(frame.to_ndarray())
    channels = max(1, len(frame.layout.channels))
    if frame.format.is_planar:
        array = array.reshape(channels, -1)
    else:
        array = array.reshape(-1, channels).T
    if np.issubdtype(array.dtype, np.floating):
        mono = array.astype(np.float64).mean(axis=0) * 32767.0
    elif array.dtype == np.int32:
        mono = (array.astype(np.float64) / 65536.0).mean(axis=0)
    elif array.dtype == np.uint8:
        mono = (array.astype(np.float64) - 128.0).mean(axis=0) * 256.0
    else:
        mono = array.astype(np.float64).mean(axis=0)
    result: npt.NDArray[np.int16] = np.clip(np.round(mono), -32768, 32767).astype(np.int16)
    return result
