"""AudioOutputs that keep the agent's voice instead of playing it on a speaker.

Used by `voxloop chat --out`, wherever no sound device exists, and by tests. Audio is "played"
as soon as it arrives (no real-time pacing), so `samples_played` counts everything written
since `mark()`.
"""

from __future__ import annotations

import time
import wave
from pathlib import Path


class MemoryOutput:
    """Keeps the current turn's PCM16 mono in `pcm`; `first_play_at` is when it began."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self.pcm = bytearray()
        self.first_play_at: float | None = None
        self._played = 0

    async def play(self, pcm: bytes) -> None:
        """Take PCM at once. Cancelling has no effect (nothing waits)."""
        if self.first_play_at is None:
            self.first_play_at = time.monotonic()
        self.pcm += pcm
        self._played += len(pcm) // 2

    def clear(self) -> int:
        return 0

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

    def __init__(self, sample_rate: int, folder: Path) -> None:
        super().__init__(sample_rate)
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
