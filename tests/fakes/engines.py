"""FakeToneEngine: a deterministic speech engine for exact audio checks (named a fake).

Piper varies its durations from run to run, so exact sample-rate checks use this engine: each
character becomes 20 ms of a 440 Hz tone at 22050 Hz, with exact alignment. The server, the
socket and the encoders under test stay real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

TONE_HZ = 440.0
MS_PER_CHAR = 20.0


@dataclass(frozen=True)
class ToneChunk:
    pcm: bytes
    sample_rate: int
    chars: tuple[str, ...]
    char_start_ms: tuple[float, ...]
    char_duration_ms: tuple[float, ...]


class FakeToneEngine:
    sample_rate = 22050

    def voices(self) -> list[str]:
        return ["tone"]

    def synthesize(self, text: str, *, speed: float = 1.0) -> Iterator[ToneChunk]:
        n = round(len(text) * MS_PER_CHAR / 1000 * self.sample_rate)
        t = np.arange(n) / self.sample_rate
        pcm = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype("<i2").tobytes()
        yield ToneChunk(
            pcm=pcm,
            sample_rate=self.sample_rate,
            chars=tuple(text),
            char_start_ms=tuple(MS_PER_CHAR * i for i in range(len(text))),
            char_duration_ms=(MS_PER_CHAR,) * len(text),
        )


def dominant_frequency(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])
