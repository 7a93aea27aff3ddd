"""Voice activity detection: webrtcvad frames in, speech events out.

`SpeechDetector` turns a stream of `AudioFrame`s of any length and rate into four events:

- `VoiceOnset(t)`: the first voiced frame. Tentative; meant for instant ducking of the agent.
- `SpeechStarted(t_onset, t_confirmed)`: voiced audio lasted `min_speech_ms`; a real turn.
- `VoiceLost(t_onset, t)`: a tentative onset that was not confirmed (a click, a cough).
- `SpeechEnded(t_end, t_confirmed, ...)`: `min_silence_ms` of silence after speech; end of turn.

and, when configured, `SpeechPaused` / `SpeechResumed` (a short silence, announced) and
`SpeechFading` (the voice fell to the noise floor while webrtcvad still calls it speech).

Times are stream positions in seconds: audio fed so far, counted from the first sample ever
fed (or from the last `reset()`). Positions where something *is* (`t`, `t_onset`, `t_end`) are
frame boundaries; positions where something was *decided* (`t_confirmed`, `VoiceLost.t`) are the
end of the frame that decided it, i.e. the earliest moment the event could be known.

webrtcvad keeps saying "voiced" for a few frames after voice stops (its hangover: 2–8 frames
for short bursts, 3–14 after longer speech, depending on aggressiveness and frame length; see
`hangover_frames`). Left alone, that would turn a 30 ms click into ~100 ms of "speech" and add
up to 140 ms to every end of turn. With `compensate_hangover` (default) the detector asks for
that many extra voiced frames before confirming speech, and dates the end of speech that many
frames before the first unvoiced frame, so `min_speech_ms` and `min_silence_ms` mean real audio.

That hangover also hides the end of speech for ~100 ms. With `fade_ms`, the detector watches the
frames' energy as well: `fade_ms` of frames within 6 dB of the noise floor (or 45 dB below the
utterance's loudest frame) is a `SpeechFading`, a likely end known before webrtcvad agrees, so
speech-to-text can start on the utterance at once. It decides nothing: the `SpeechPaused` or
`SpeechEnded` that follows says in ``faded_at`` whether the audio stayed that quiet since.

While a tentative onset waits for confirmation, up to `max_onset_gap_frames` (default 1)
consecutive unvoiced frames are tolerated (they do not count as voiced); one more and the onset
is a `VoiceLost`.

webrtcvad accepts 10/20/30 ms frames at 8, 16, 32 or 48 kHz. Other input rates are resampled to
16 kHz on the fly (soxr, low-latency quality), so the utterance audio is then 16 kHz.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import webrtcvad

from agent.audio import SAMPLE_WIDTH, AudioFrame, StreamResampler

VAD_RATES = (8000, 16000, 32000, 48000)
"""Sample rates webrtcvad works at natively."""

FRAME_MS_CHOICES = (10, 20, 30)
"""Frame lengths webrtcvad accepts."""

_FALLBACK_RATE = 16000

# webrtcvad's hangover, in frames, from WebRTC's vad_core.c (kOverHangMax1*/kOverHangMax2*):
# (after a short burst, after longer speech) per aggressiveness and frame length.
_HANGOVER: dict[int, dict[int, tuple[int, int]]] = {
    0: {10: (8, 14), 20: (4, 7), 30: (3, 5)},
    1: {10: (8, 14), 20: (4, 7), 30: (3, 5)},
    2: {10: (6, 9), 20: (3, 5), 30: (2, 3)},
    3: {10: (6, 9), 20: (3, 5), 30: (2, 3)},
}
# webrtcvad switches from the short to the long hangover after this many voiced frames.
_LONG_HANGOVER_AFTER = 6

# A frame is quiet (for `SpeechFading`) when its energy is within 6 dB of the noise floor or
# 45 dB below the utterance's loudest frame. Trailing fricatives ("please", "six") stay well
# above both; the floor is what the microphone gives between utterances.
_QUIET_ABOVE_FLOOR = 10 ** (6 / 10)
_QUIET_BELOW_PEAK = 10 ** (-45 / 10)
# How fast the noise floor follows louder silence (per frame); it follows quieter at once.
_FLOOR_RISE = 0.05


def hangover_frames(aggressiveness: int, frame_ms: int) -> tuple[int, int]:
    """webrtcvad's (short, long) hangover in frames for this mode and frame length."""
    return _HANGOVER[aggressiveness][frame_ms]


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Settings of a `SpeechDetector`. Invalid values raise `ValueError` naming what is allowed.

    - `sample_rate`: rate of the audio you feed (any rate; see module doc).
    - `frame_ms`: webrtcvad frame length, 10, 20 or 30.
    - `aggressiveness`: webrtcvad mode 0 (least) .. 3 (most eager to call audio non-speech).
    - `min_speech_ms`: voiced audio needed to confirm speech (`SpeechStarted`).
    - `min_silence_ms`: silence after speech that ends the turn (`SpeechEnded`).
    - `pause_ms`: a shorter silence after speech that is announced (`SpeechPaused`, once per
      silence; `SpeechResumed` if the voice comes back before the turn ends), so the voice loop
      can ask an end-of-turn model and start preparing its answer; None: no announcement.
    - `fade_ms`: quiet audio (by energy) during speech after which a `SpeechFading` is told
      (once per quiet stretch): a likely end of speech, before webrtcvad's hangover runs out;
      None: never.
    - `max_onset_gap_frames`: unvoiced frames tolerated inside a tentative onset.
    - `pre_roll_ms` / `post_roll_ms`: audio kept before the onset / after the end of speech in
      the utterance, so speech-to-text hears the first and last syllables whole.
    - `max_utterance_s`: the utterance audio keeps at most this much (the start); events go on.
    - `compensate_hangover`: account for webrtcvad's hangover (see module doc).
    """

    sample_rate: int = 16000
    frame_ms: int = 20
    aggressiveness: int = 2
    min_speech_ms: int = 120
    min_silence_ms: int = 500
    pause_ms: int | None = None
    fade_ms: int | None = None
    max_onset_gap_frames: int = 1
    pre_roll_ms: int = 200
    post_roll_ms: int = 200
    max_utterance_s: float = 60.0
    compensate_hangover: bool = True

    def __post_init__(self) -> None:
        if (
            not isinstance(self.sample_rate, int)
            or isinstance(self.sample_rate, bool)
            or self.sample_rate <= 0
        ):
            raise ValueError(
                f"VadConfig.sample_rate must be a positive integer in Hz, got {self.sample_rate!r}"
            )
        if self.frame_ms not in FRAME_MS_CHOICES:
            raise ValueError(
                f"VadConfig.frame_ms must be one of 10, 20 or 30 (webrtcvad frame lengths), "
                f"got {self.frame_ms!r}"
            )
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(
                f"VadConfig.aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness!r}"
            )
        for name in ("min_speech_ms", "min_silence_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"VadConfig.{name} must be a positive integer (ms), got {value!r}")
        for name in ("pause_ms", "fade_ms"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not 0 < value < self.min_silence_ms
            ):
                raise ValueError(
                    f"VadConfig.{name} must be None or a positive integer (ms) below "
                    f"min_silence_ms ({self.min_silence_ms}), got {value!r}"
                )
        for name in ("max_onset_gap_frames", "pre_roll_ms", "post_roll_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"VadConfig.{name} must be an integer >= 0, got {value!r}")
        if not self.max_utterance_s > 0:
            raise ValueError(
                f"VadConfig.max_utterance_s must be > 0 seconds, got {self.max_utterance_s!r}"
            )

    @property
    def processing_rate(self) -> int:
        """The rate webrtcvad runs at: `sample_rate` if it supports it, else 16000."""
        return self.sample_rate if self.sample_rate in VAD_RATES else _FALLBACK_RATE


@dataclass(frozen=True, slots=True)
class VoiceOnset:
    """First voiced frame after silence, starting at `t` (tentative)."""

    t: float


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech that began at `t_onset` was confirmed at `t_confirmed`."""

    t_onset: float
    t_confirmed: float


@dataclass(frozen=True, slots=True)
class VoiceLost:
    """The tentative onset at `t_onset` was abandoned at `t` (not speech after all)."""

    t_onset: float
    t: float


@dataclass(frozen=True, slots=True)
class SpeechFading:
    """The voice fell quiet at `t_end` and stayed quiet for `fade_ms`, told at `t`, while
    webrtcvad may still call it speech: a likely end of speech, not a decision. `audio` is the
    utterance so far (from stream time `audio_start`). A later `SpeechPaused` or `SpeechEnded`
    whose ``faded_at`` is this `t` had nothing but quiet audio since."""

    t_end: float
    t: float
    t_onset: float = 0.0
    audio_start: float = 0.0
    audio: AudioFrame = field(default=AudioFrame(b"", _FALLBACK_RATE), repr=False)


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """Speech (from `t_onset`) stopped at `t_end` and `pause_ms` of silence followed, decided at
    `t`: the turn may be over. `audio` is the utterance so far (as `SpeechEnded.audio` would be
    if the turn ended now), from stream time `audio_start`. ``faded_at``: the `t` of the
    `SpeechFading` whose quiet lasted until now (its audio holds the same words), or None."""

    t_end: float
    t: float
    t_onset: float = 0.0
    audio_start: float = 0.0
    audio: AudioFrame = field(default=AudioFrame(b"", _FALLBACK_RATE), repr=False)
    faded_at: float | None = None


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Voice came back at `t` after a `SpeechPaused`: the same utterance goes on."""

    t: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Speech (from `t_onset`) ended at `t_end`; the silence was confirmed at `t_confirmed`.

    `audio` is the utterance at the processing rate, with pre- and post-roll; its first sample
    is at stream time `audio_start`. ``faded_at``: as for `SpeechPaused`.
    """

    t_end: float
    t_confirmed: float
    t_onset: float = 0.0
    audio_start: float = 0.0
    audio: AudioFrame = field(default=AudioFrame(b"", _FALLBACK_RATE), repr=False)
    faded_at: float | None = None


VadEvent = (
    VoiceOnset
    | SpeechStarted
    | VoiceLost
    | SpeechFading
    | SpeechPaused
    | SpeechResumed
    | SpeechEnded
)

VadState = Literal["silent", "onset", "speaking"]


class SpeechDetector:
    """Stateful speech detector over a stream of audio. Not thread-safe; cheap (µs per frame)."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        cfg = self.config
        self.processing_rate = cfg.processing_rate
        self.frame_samples = self.processing_rate * cfg.frame_ms // 1000
        self._frame_bytes = self.frame_samples * SAMPLE_WIDTH
        self._frame_s = cfg.frame_ms / 1000
        short, long = hangover_frames(cfg.aggressiveness, cfg.frame_ms)
        if not cfg.compensate_hangover:
            short = long = 0
        self._hang_short, self._hang_long = short, long
        self._voiced_needed = math.ceil(cfg.min_speech_ms / cfg.frame_ms) + short
        self._silence_needed = math.ceil(cfg.min_silence_ms / cfg.frame_ms)
        self._pause_needed = (
            None if cfg.pause_ms is None else max(1, math.ceil(cfg.pause_ms / cfg.frame_ms))
        )
        self._fade_needed = (
            None if cfg.fade_ms is None else max(1, math.ceil(cfg.fade_ms / cfg.frame_ms))
        )
        self._pre_roll_frames = math.ceil(cfg.pre_roll_ms / cfg.frame_ms)
        self._post_roll_frames = math.ceil(cfg.post_roll_ms / cfg.frame_ms)
        self._max_utterance_bytes = round(cfg.max_utterance_s * self.processing_rate) * 2
        self.reset()

    def reset(self) -> None:
        """Forget everything: state, buffered audio, and the stream clock (back to 0)."""
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self._resampler: StreamResampler | None = None
        if self.config.sample_rate != self.processing_rate:
            self._resampler = StreamResampler(
                self.config.sample_rate, self.processing_rate, quality="LQ"
            )
        self._pending = bytearray()
        self._frame_index = 0  # frames processed so far
        self._state: VadState = "silent"
        self._recent: deque[bytes] = deque(maxlen=max(self._pre_roll_frames, 1))
        self._utterance = bytearray()
        self._utterance_start = 0  # frame index of the utterance's first frame
        self._onset_index = 0
        self._voiced_in_onset = 0
        self._gap = 0
        self._run_start = 0  # first frame of the current voiced run
        self._first_unvoiced: int | None = None
        self._paused = False  # a SpeechPaused was announced for the current silence
        self._floor: float | None = None  # noise energy between utterances (mean square)
        self._peak = 0.0  # the utterance's loudest frame (mean square)
        self._quiet_run = 0  # consecutive quiet frames (by energy) while speaking
        self._faded_at: float | None = None  # the SpeechFading this quiet stretch told

    # -- queries --------------------------------------------------------------------------------

    @property
    def state(self) -> VadState:
        """One of "silent", "onset" (tentative voice) or "speaking" (confirmed)."""
        return self._state

    @property
    def is_speaking(self) -> bool:
        """True between `SpeechStarted` and `SpeechEnded`."""
        return self._state == "speaking"

    @property
    def time(self) -> float:
        """Stream seconds processed so far (whole frames)."""
        return self._frame_index * self._frame_s

    @property
    def is_paused(self) -> bool:
        """True after `SpeechPaused`, until the voice resumes or the turn ends."""
        return self._paused

    def end_now(self) -> list[VadEvent]:
        """End the paused utterance at once (an end-of-turn model said the user is done):
        returns its `SpeechEnded`, decided now, or nothing if the detector is not paused."""
        if not self._paused:
            return []
        return [self._end_utterance(self._estimated_end(), self._frame_index)]

    def speech_pcm(self) -> bytes:
        """Audio of the current utterance (in progress) or of the last one that ended.

        PCM16 at `processing_rate`, including pre-roll. Empty before the first onset.
        """
        return bytes(self._utterance)

    # -- feeding --------------------------------------------------------------------------------

    def feed(self, frame: AudioFrame) -> list[VadEvent]:
        """Process audio of any length; return the events it completed, oldest first."""
        if frame.sample_rate != self.config.sample_rate:
            raise ValueError(
                f"audio at {frame.sample_rate} Hz fed to a detector configured for "
                f"{self.config.sample_rate} Hz; set VadConfig(sample_rate={frame.sample_rate}) "
                "or resample first"
            )
        pcm = frame.pcm if self._resampler is None else self._resampler.process(frame.pcm)
        self._pending += pcm
        return self._drain_frames()

    def finish(self) -> list[VadEvent]:
        """End of the stream: process what is buffered (padding the last frame with silence)
        and close an open onset (`VoiceLost`) or utterance (`SpeechEnded`, ended now)."""
        if self._resampler is not None:
            self._pending += self._resampler.flush()
        events = self._drain_frames()
        if self._pending:
            self._pending += bytes(self._frame_bytes - len(self._pending))
            events += self._drain_frames()
        now = self._frame_index
        if self._state == "onset":
            events.append(VoiceLost(self._t(self._onset_index), self._t(now)))
            self._state = "silent"
        elif self._state == "speaking":
            end = self._estimated_end() if self._first_unvoiced is not None else now
            events.append(self._end_utterance(end, now))
        return events

    # -- internals ------------------------------------------------------------------------------

    def _t(self, frame_index: int) -> float:
        return frame_index * self._frame_s

    def _drain_frames(self) -> list[VadEvent]:
        events: list[VadEvent] = []
        size = self._frame_bytes
        while len(self._pending) >= size:
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            voiced = self._vad.is_speech(chunk, self.processing_rate)
            self._step(chunk, bool(voiced), events)
            if self._fade_needed is not None:
                self._track_energy(chunk, bool(voiced), events)
            self._recent.append(chunk)
            self._frame_index += 1
        return events

    def _track_energy(self, chunk: bytes, voiced: bool, events: list[VadEvent]) -> None:
        """After `_step`: the noise floor between utterances, the utterance's peak, and
        `SpeechFading`."""
        samples = np.frombuffer(chunk, dtype="<i2").astype(np.float32)
        energy = float(samples @ samples) / max(1, samples.size)
        if self._state == "silent":
            if voiced:
                pass  # the end of an utterance or of a lost onset: not the floor
            elif self._floor is None or energy < self._floor:
                self._floor = energy
            else:
                self._floor += (energy - self._floor) * _FLOOR_RISE
            return
        self._peak = max(self._peak, energy)
        if self._state != "speaking":
            return
        limit = self._peak * _QUIET_BELOW_PEAK
        if self._floor is not None:
            limit = max(limit, self._floor * _QUIET_ABOVE_FLOOR)
        if energy > limit:
            self._quiet_run, self._faded_at = 0, None
            return
        self._quiet_run += 1
        if self._quiet_run == self._fade_needed and not self._paused:
            i = self._frame_index
            fade = SpeechFading(
                t_end=self._t(i + 1 - self._quiet_run),
                t=self._t(i + 1),
                t_onset=self._t(self._onset_index),
                audio_start=self._t(self._utterance_start),
                audio=AudioFrame(bytes(self._utterance), self.processing_rate),
            )
            self._faded_at = fade.t
            events.append(fade)

    def _append_utterance(self, chunk: bytes) -> None:
        if len(self._utterance) < self._max_utterance_bytes:
            self._utterance += chunk[: self._max_utterance_bytes - len(self._utterance)]

    def _step(self, chunk: bytes, voiced: bool, events: list[VadEvent]) -> None:
        i = self._frame_index
        if self._state == "silent":
            if not voiced:
                return
            self._begin_onset(i)
            events.append(VoiceOnset(self._t(i)))
        self._append_utterance(chunk)
        if self._state == "onset":
            self._step_onset(i, voiced, events)
        else:
            self._step_speaking(i, voiced, events)

    def _begin_onset(self, i: int) -> None:
        self._state = "onset"
        self._onset_index = self._run_start = i
        self._voiced_in_onset = 0
        self._gap = 0
        self._peak, self._quiet_run, self._faded_at = 0.0, 0, None
        pre_roll = list(self._recent)[-self._pre_roll_frames :] if self._pre_roll_frames else []
        self._utterance = bytearray()
        self._utterance_start = i - len(pre_roll)
        for frame in pre_roll:
            self._append_utterance(frame)

    def _step_onset(self, i: int, voiced: bool, events: list[VadEvent]) -> None:
        if voiced:
            self._voiced_in_onset += 1
            self._gap = 0
            if self._voiced_in_onset >= self._voiced_needed:
                self._state = "speaking"
                self._first_unvoiced = None
                events.append(SpeechStarted(self._t(self._onset_index), self._t(i + 1)))
            return
        self._gap += 1
        if self._gap > self.config.max_onset_gap_frames:
            self._state = "silent"
            self._utterance = bytearray()
            events.append(VoiceLost(self._t(self._onset_index), self._t(i + 1)))

    def _step_speaking(self, i: int, voiced: bool, events: list[VadEvent]) -> None:
        if voiced:
            if self._first_unvoiced is not None:
                self._run_start = i
            self._first_unvoiced = None
            if self._paused:
                self._paused = False
                events.append(SpeechResumed(self._t(i)))
            return
        if self._first_unvoiced is None:
            self._first_unvoiced = i
        end = self._estimated_end()
        silence = i + 1 - end
        if silence >= self._silence_needed:
            events.append(self._end_utterance(end, i + 1))
        elif self._pause_needed is not None and not self._paused and silence >= self._pause_needed:
            self._paused = True
            events.append(self._pause(end, i + 1))

    def _pause(self, end_index: int, decided_index: int) -> SpeechPaused:
        keep_frames = end_index + self._post_roll_frames - self._utterance_start
        return SpeechPaused(
            t_end=self._t(end_index),
            t=self._t(decided_index),
            t_onset=self._t(self._onset_index),
            audio_start=self._t(self._utterance_start),
            audio=AudioFrame(
                bytes(self._utterance[: keep_frames * self._frame_bytes]), self.processing_rate
            ),
            faded_at=self._faded_at,
        )

    def _estimated_end(self) -> int:
        """Frame index where speech really ended, undoing webrtcvad's hangover."""
        assert self._first_unvoiced is not None
        run = self._first_unvoiced - self._run_start
        long_run = run > _LONG_HANGOVER_AFTER + self._hang_short
        hang = self._hang_long if long_run else self._hang_short
        return max(self._first_unvoiced - hang, self._run_start + 1)

    def _end_utterance(self, end_index: int, decided_index: int) -> SpeechEnded:
        keep_frames = end_index + self._post_roll_frames - self._utterance_start
        del self._utterance[keep_frames * self._frame_bytes :]
        self._state = "silent"
        self._first_unvoiced = None
        self._paused = False
        return SpeechEnded(
            t_end=self._t(end_index),
            t_confirmed=self._t(decided_index),
            t_onset=self._t(self._onset_index),
            audio_start=self._t(self._utterance_start),
            audio=AudioFrame(bytes(self._utterance), self.processing_rate),
            faded_at=self._faded_at,
        )
