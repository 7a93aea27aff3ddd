"""AudioOutputs that keep the agent's voice instead of playing it on a speaker.

Used by `voxloop chat --out`, wherever no sound device exists, and by tests. Audio is "played"
as soon as it arrives (no real-time pacing), so `samples_played` counts everything written
since `mark()`.
"""

from __future__ import annotations

import wave
from pathlib import Path

from agent.timeline import Clock, MonotonicClock


class MemoryOutput:
    """Keeps the current turn's PCM16 mono in `pcm`. Audio counts as played when it arrives,
    at ``clock.now()`` (the session's clock, so its times line up with the turn's marks)."""

    def __init__(self, sample_rate: int = 16000, clock: Clock | None = None) -> None:
        self.sample_rate = sample_rate
        self.clock: Clock = clock or MonotonicClock()
        self.pcm = bytearray()
        self.first_play_at: float | None = None
        self._last_end: float | None = None
        self._played = 0

    async def play(self, pcm: bytes) -> None:
        """Take PCM at once. Cancelling has no effect (nothing waits)."""
        now = self.clock.now()
        if self.first_play_at is None:
            self.first_play_at = now
        self.pcm += pcm
        self._played += len(pcm) // 2
        self._last_end = now

    def clear(self, *, held_only: bool = False) -> int:
        """Nothing is ever queued: drops nothing."""
        return 0

    def pause(self) -> float:
        """Nothing plays later than it arrives: silent at once."""
        return self.clock.now()

    def resume(self) -> None:
        """Nothing to resume."""

    @property
    def first_played_at(self) -> float | None:
        return self.first_play_at

    @property
    def last_played_end(self) -> float | None:
        return self._last_end

    @property
    def level(self) -> float:
        """No speaker, no echo."""
        return 0.0

    @property
    def samples_played(self) -> int:
        return self._played

    def mark(self) -> None:
        self._played = 0
        self.pcm = bytearray()
        self.first_play_at = None

    async def drain(self) -> None:
        """Nothing is queued: returns at once."""


class WavFileOutput(MemoryOutput):
    """A `MemoryOutput` whose turn :meth:`save` writes to ``folder/name`` as a WAV file."""

    def __init__(self, sample_rate: int, folder: Path, clock: Clock | None = None) -> None:
        super().__init__(sample_rate, clock)
        self.folder = folder

    def save(self, name: str) -> Path | None:
        """Write the current turn's audio; None when the turn produced none."""
        if not self.pcm:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(self.sample_rate)
            wav.writeframes(bytes(self.pcm))
        return path
