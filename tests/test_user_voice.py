"""The scripted user's voice: still intelligible to whisper, and clearly not the agent's voice."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.app.user_voice import synthesize_user_lines, trim_silence
from agent.audio import pcm_to_array
from tests.textmetrics import wer

RATE = 16000
LINES = [
    "What is the capital of France?",
    "Tell me a long story about a dragon.",
    "Thanks, that is all.",
]


def _average_log_spectrum(pcm: bytes, n: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, log power) averaged over the loud frames of the signal."""
    x = pcm_to_array(pcm).astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2]
    energy = (frames**2).sum(axis=1)
    frames = frames[energy > 0.05 * energy.max()]
    power = (np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2).mean(axis=0)
    return np.fft.rfftfreq(n, 1 / RATE), np.log(power + 1e-9)


def spectral_shift(reference: bytes, shifted: bytes) -> float:
    """The factor k that best maps the reference's average spectrum onto the shifted one's
    (shifted(k * f) ~ reference(f), 80 Hz..4 kHz): ~1.18 for a 1.18 pitch/formant shift."""
    freqs, ref = _average_log_spectrum(reference)
    _, other = _average_log_spectrum(shifted)
    band = (freqs > 80) & (freqs < 4000)
    factors = np.arange(0.8, 1.6, 0.01)
    scores = [
        np.corrcoef(ref[band], np.interp(freqs[band] * k, freqs, other))[0, 1] for k in factors
    ]
    return float(factors[int(np.argmax(scores))])


@pytest.mark.engines
def test_user_voice_is_intelligible_and_different(piper_engine: Any, whisper_stt: Any) -> None:
    shifted = synthesize_user_lines(LINES, piper_engine, sample_rate=RATE)
    plain = synthesize_user_lines(LINES, piper_engine, sample_rate=RATE, pitch=1.0)

    heard = [whisper_stt.transcribe_sync(pcm, RATE).text for pcm in shifted]
    errors = wer(" ".join(LINES), " ".join(heard))
    assert errors < 0.15, f"whisper heard {heard!r} (WER {errors:.0%})"

    # pitch and formants moved up together: the whole spectrum is stretched by ~1.18
    factor = spectral_shift(b"".join(plain), b"".join(shifted))
    assert 1.1 <= factor <= 1.3, factor
    assert spectral_shift(b"".join(plain), b"".join(plain)) == pytest.approx(1.0)

    # the speaking rate stays natural: synthesized slower, then sped up by the shift
    duration_ratio = sum(map(len, shifted)) / sum(map(len, plain))
    assert 0.85 < duration_ratio < 1.15, duration_ratio


def test_trim_silence_keeps_50_ms_around_speech() -> None:
    t = np.arange(RATE // 2) / RATE
    tone = (10000 * np.sin(2 * np.pi * 200 * t)).astype("<i2")
    pcm = np.concatenate([np.zeros(RATE, "<i2"), tone, np.zeros(RATE, "<i2")]).tobytes()
    trimmed = trim_silence(pcm, RATE)
    assert len(trimmed) // 2 == pytest.approx(tone.size + 2 * 800, abs=2 * 160)
    assert trim_silence(bytes(3200), RATE) == bytes(3200)  # nothing to find: unchanged
