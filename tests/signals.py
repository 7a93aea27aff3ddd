"""Deterministic test signals (numpy only, no engine): the same samples on every machine, so a
reference computed elsewhere (e.g. by another project's implementation) can be checked here."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATE = 16000


def hashed_noise(n: int, seed: int) -> npt.NDArray[np.float64]:
    """``n`` uniform values in [-0.5, 0.5) from an integer hash of the sample index (exact
    integer arithmetic: identical everywhere)."""
    h = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B1) + np.uint64(seed)) & np.uint64(
        0xFFFFFFFF
    )
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(12)
    h = (h * np.uint64(0x297A2D39)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    return h.astype(np.float64) / 2.0**32 - 0.5


def synthetic_speech(seconds: float, *, seed: int = 1, trailing_silence: float = 0.3) -> bytes:
    """Speech-like PCM16 at 16 kHz: a buzz with a wandering pitch (12 harmonics), four
    "syllables" a second, a little noise, then ``trailing_silence`` seconds of near silence."""
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 140.0 + 30.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    buzz = sum(np.sin(k * phase) / k for k in range(1, 13))
    syllables = 0.5 * (1.0 - np.cos(2 * np.pi * 4.0 * t))
    voiced = t < seconds - trailing_silence
    signal = 0.2 * buzz * syllables * voiced + 0.01 * hashed_noise(n, seed)
    return np.asarray(np.rint(signal * 32767.0), dtype="<i2").tobytes()
