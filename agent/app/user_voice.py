"""The scripted user's voice for the demo and tests: a TTS voice made to sound like someone else.

The agent speaks with the TTS engine's voice; if the scripted user spoke with the same voice, the
stereo recording and any listener would confuse the two. So each user line is synthesized slower
(speed ``1 / pitch``) and then played back ``pitch`` times faster by resampling (the samples are
read as if recorded at ``rate * pitch``). Pitch and formants rise together, as in a smaller
speaker, while the speaking rate comes back to about normal. Leading and trailing silence is
trimmed to ~50 ms so the demo's timing is set by the script, not by the engine's padding.

The engine is passed in (agent never imports plugins): anything with
``synthesize(text, *, speed=...)`` yielding chunks with ``.pcm`` (PCM16 mono) and
``.sample_rate`` works, e.g. ``plugins.local.piper_tts.PiperEngine``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from agent.audio import pcm_to_array, resample

__all__ = [
    "VoiceChunk",
    "VoiceEngine",
    "synthesize_user_line",
    "synthesize_user_lines",
    "trim_silence",
]

MIN_ENGINE_SPEED = 0.7
MAX_ENGINE_SPEED = 1.2
"""The speed range piper (and the ElevenLabs voice_settings) accept."""


class VoiceChunk(Protocol):
    """A piece of synthesized speech: PCM16 mono at ``sample_rate``."""

    @property
    def pcm(self) -> bytes: ...

    @property
    def sample_rate(self) -> int: ...


class VoiceEngine(Protocol):
    """A blocking TTS engine such as ``PiperEngine``."""

    def synthesize(self, text: str, *, speed: float = ...) -> Iterable[VoiceChunk]: ...


def trim_silence(
    pcm: bytes,
    sample_rate: int,
    *,
    keep_seconds: float = 0.05,
    frame_seconds: float = 0.01,
    threshold: float = 0.02,
) -> bytes:
    """Cut leading and trailing silence, keeping ``keep_seconds`` on each side.

    A frame is speech when its RMS exceeds ``threshold`` times the loudest frame's RMS.
    Audio with no speech at all comes back unchanged.
    """
    samples = pcm_to_array(pcm).astype(np.float32)
    frame = max(1, round(frame_seconds * sample_rate))
    n_frames = samples.size // frame
    if n_frames == 0:
        return pcm
    frames = samples[: n_frames * frame].reshape(n_frames, frame)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    loudest = float(rms.max())
    if loudest <= 0.0:
        return pcm
    voiced = np.flatnonzero(rms > threshold * loudest)
    keep = round(keep_seconds * sample_rate)
    start = max(0, int(voiced[0]) * frame - keep)
    end = min(samples.size, (int(voiced[-1]) + 1) * frame + keep)
    return pcm[start * 2 : end * 2]


def synthesize_user_line(
    text: str, engine: VoiceEngine, *, sample_rate: int = 16000, pitch: float = 1.18
) -> bytes:
    """One line in the user's voice: PCM16 mono at ``sample_rate``, silence trimmed.

    BLOCKING (runs the engine): call it through ``anyio.to_thread.run_sync`` from async code.
    ``pitch`` 1.0 is the engine's own voice; 1.18 sounds like a different, higher voice.
    """
    if not 0.75 <= pitch <= 1.5:
        raise ValueError(f"pitch must be between 0.75 and 1.5, got {pitch}")
    speed = min(MAX_ENGINE_SPEED, max(MIN_ENGINE_SPEED, 1.0 / pitch))
    pieces: list[bytes] = []
    engine_rate: int | None = None
    for chunk in engine.synthesize(text, speed=speed):
        if not chunk.pcm:
            continue
        if engine_rate is None:
            engine_rate = chunk.sample_rate
        elif chunk.sample_rate != engine_rate:
            raise ValueError(
                f"the engine changed sample rate mid-line ({engine_rate} -> {chunk.sample_rate})"
            )
        pieces.append(chunk.pcm)
    if engine_rate is None:
        return b""
    shifted_rate = round(engine_rate * pitch)  # read as if recorded faster: pitch goes up
    return trim_silence(resample(b"".join(pieces), shifted_rate, sample_rate), sample_rate)


def synthesize_user_lines(
    lines: list[str], engine: VoiceEngine, *, sample_rate: int = 16000, pitch: float = 1.18
) -> list[bytes]:
    """Each line in the user's voice (see `synthesize_user_line`). BLOCKING."""
    return [
        synthesize_user_line(line, engine, sample_rate=sample_rate, pitch=pitch) for line in lines
    ]
