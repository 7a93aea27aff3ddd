"""Speech to text started when the voice fades, before the VAD is sure the user stopped.

webrtcvad goes on calling audio speech for ~100 ms after a voice stops (its hangover), so the
VAD's pause, where the words so far go to speech-to-text, comes ~120 ms after the last word.
The frames' energy tells sooner: `vad.SpeechFading` comes ~40 ms after it. `EarlyTranscriber`
starts the STT there; when the pause or the end of the turn follows with nothing but quiet
audio since (its ``faded_at`` names that fade), the turn takes that transcript, finished or
still running, instead of starting a second one. The words are the same: the two audios
differ only in how much quiet trails them.

A fade that is not the end (a stop consonant, a breath between words: about two per line of
`bench.turn_taking`'s corpus) costs one STT call whose result is thrown away. One call runs at
a time: a fade while one runs is skipped (the turn then transcribes at its pause, as without
this), since a second call would compete with the first for the same CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import anyio.abc

from agent import vad
from agent.errors import VoxloopError
from agent.interfaces import STT, Transcript

log = logging.getLogger(__name__)

FADE_MS = 40
"""Quiet after which the STT starts: two 20 ms frames. On `bench.turn_taking`'s corpus (clean
synthesized speech) every end of speech faded 60-100 ms before the VAD's pause, and about two
fades per line came inside the speech. Fewer frames would start sooner and fade inside words
more often; that was not measured."""


@dataclass
class _Attempt:
    fade: vad.SpeechFading
    done: anyio.Event = field(default_factory=anyio.Event)
    transcript: Transcript | None = None


class EarlyTranscriber:
    """Runs the STT on each `vad.SpeechFading` (one call at a time) and hands the result to the
    pause or end of turn that confirms it. Counts what it did for the benchmarks: ``started``,
    ``skipped`` (a call was running), ``used``."""

    def __init__(self, stt: STT) -> None:
        self.stt = stt
        self.started = 0
        self.skipped = 0
        self.used = 0
        self._attempt: _Attempt | None = None

    def faded(self, fade: vad.SpeechFading, tasks: anyio.abc.TaskGroup) -> None:
        """The voice faded: transcribe the utterance so far in ``tasks``, unless a call runs."""
        if self._attempt is not None and not self._attempt.done.is_set():
            self.skipped += 1
            return
        attempt = _Attempt(fade)
        self._attempt = attempt
        self.started += 1
        tasks.start_soon(self._run, attempt)

    async def _run(self, attempt: _Attempt) -> None:
        """One early call. A named STT failure is logged at debug level and leaves no result
        (the turn then transcribes on its own and reports the failure itself). Cancelling
        abandons the call."""
        audio = attempt.fade.audio
        try:
            attempt.transcript = await self.stt.transcribe(audio.pcm, audio.sample_rate)
        except VoxloopError as err:
            log.debug("early speech to text failed (the turn will retry): %s", err)
        finally:
            attempt.done.set()

    async def transcript_for(self, faded_at: float | None) -> Transcript | None:
        """The early transcript of an utterance whose ``faded_at`` is given, waiting for the
        call if it still runs; None when no call matches (or it failed). Cancelling abandons
        the wait, not the call."""
        attempt = self._attempt
        if faded_at is None or attempt is None or attempt.fade.t != faded_at:
            return None
        await attempt.done.wait()
        if attempt.transcript is not None:
            self.used += 1
        return attempt.transcript
