"""Barge-in: what the agent does when the user speaks over it.

Two cheap, synchronous pieces that the voice loop calls for every microphone frame:

- :class:`EchoGuard` keeps the agent's own voice, coming back through the speaker, from
  interrupting the agent. It learns how strongly the output leaks into the microphone (the
  coupling) while the user is quiet, and passes a frame only when the microphone is louder than
  that leak by a margin. With headphones the coupling learns to ~0 and every word passes.
- :class:`BargeInPolicy` turns VAD events into actions on the output and the turn:
  at the first voiced frame the output PAUSES at once (nothing is dropped, nothing counted as
  heard); if the speech is confirmed (min speech) the turn is cancelled and the queued audio
  cleared; if it is not (a cough, a click), playback RESUMES where it stopped: a false alarm
  costs no words, and a real interruption silences the agent within one output block.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from agent.audio import pcm_to_array
from agent.vad import SpeechStarted, VadEvent, VoiceLost, VoiceOnset


@dataclass(frozen=True)
class BargeInConfig:
    """How the agent yields the floor. Switch `echo_guard` off with headphones or a device
    that cancels echo itself; switch `pause_on_onset` off to react only to confirmed speech."""

    enabled: bool = True
    pause_on_onset: bool = True
    echo_guard: bool = True
    echo_margin: float = 2.0  # the mic must be this many times louder than the expected echo
    initial_coupling: float = 0.5  # assumed echo/output ratio before any learning
    audible_level: float = 30.0  # output RMS above which the agent counts as audible


class EchoGuard:
    """Gates microphone frames that are no louder than the agent's own echo.

    ``process(pcm, output_level)`` returns the frame, or silence of the same length when it is
    probably echo. The coupling estimate is learned only from frames judged to be echo.
    """

    def __init__(self, config: BargeInConfig) -> None:
        self.config = config
        self.coupling = config.initial_coupling
        self.gated_frames = 0

    def process(self, pcm: bytes, output_level: float) -> bytes:
        if not self.config.echo_guard or output_level < self.config.audible_level or not pcm:
            return pcm
        samples = pcm_to_array(pcm).astype(np.float32)
        mic = float(np.sqrt(np.mean(samples**2)))
        expected = self.coupling * output_level
        if mic > self.config.echo_margin * expected:
            return pcm  # louder than any echo could be: the user
        # The coupling follows the loudest recent echo: fast attack, slow release. Frames in
        # the gaps between the agent's words (no echo yet) must not talk the estimate down.
        # A ratio far above the estimate is more likely the user talking over the agent
        # (double talk) than echo: it is gated this once, but not learned from.
        ratio = min(2.0, mic / output_level)
        if ratio <= 1.5 * self.coupling:
            weight = 0.5 if ratio > self.coupling else 0.01
            self.coupling += weight * (ratio - self.coupling)
        self.gated_frames += 1
        return bytes(len(pcm))


class Action(enum.Enum):
    """What the voice loop must do after a VAD event."""

    NONE = "none"
    PAUSE = "pause"  # tentative voice: stop playout at once, keep the queue
    RESUME = "resume"  # it was not speech: continue where playout stopped
    INTERRUPT = "interrupt"  # confirmed speech over the agent: cancel the turn, clear the queue


class BargeInPolicy:
    """Maps VAD events to actions, given whether the agent holds the floor."""

    def __init__(self, config: BargeInConfig) -> None:
        self.config = config
        self.paused = False

    def decide(self, event: VadEvent, agent_has_floor: bool) -> Action:
        if not self.config.enabled:
            return Action.NONE
        if isinstance(event, VoiceOnset):
            if agent_has_floor and self.config.pause_on_onset and not self.paused:
                self.paused = True
                return Action.PAUSE
            return Action.NONE
        if isinstance(event, VoiceLost):
            if self.paused:
                self.paused = False
                return Action.RESUME
            return Action.NONE
        if isinstance(event, SpeechStarted):
            if agent_has_floor:
                return Action.INTERRUPT
            if self.paused:  # the turn ended meanwhile: nothing left to pause
                self.paused = False
                return Action.RESUME
        return Action.NONE

    def turn_finished(self) -> bool:
        """Called when a turn's cleanup is done. True if the output must be un-paused."""
        was = self.paused
        self.paused = False
        return was
