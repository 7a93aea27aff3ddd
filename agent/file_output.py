"""An AudioOutput that writes the agent's voice to WAV files instead of a speaker.

Used by `voxloop chat --out` and wherever no sound device exists. Audio is "played" as soon as it
arrives (no real-time pacing), so `samples_played` counts everything written since `mark()`.
"""

from __future__ import annotations

import wave
from pathlib import Path


class WavFileOutput:
    """Collects PCM16 mono per turn; :meth:`save` writes the turn to ``folder/name``."""

    def __init__(self, sample_rate: int, folder: Path) -> None:
        self.sample_rate = sample_rate
        self.folder = folder
        self._turn = bytearray()
        self._played = 0

    async def play(self, pcm: bytes) -> None:
        """Take PCM at once. Cancelling has no effect (nothing waits)."""
        self._turn += pcm
        self._played += len(pcm) // 2

    def clear(self) -> int:
        return 0

    @property
    def samples_played(self) -> int:
        return self._played

    def mark(self) -> None:
        self._played = 0
        self._turn = bytearray()

    async def drain(self) -> None:
        """Nothing is queued: returns at once."""

    def save(self, name: str) -> Path | None:
        """Write the current turn's audio; None when the turn produced none."""
        if not self._turn:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(self.sample_rate)
            wav.writeframes(bytes(self._turn))
        return path
