"""The turn-taking corpus: user utterances in the local voice, half of them with a pause inside.

Each `Utterance` is either complete (one phrase: a question or a request) or paused: an
obviously unfinished first half ("I would like to book a table for"), a silence of a known
length (400-700 ms), then the rest ("four people tonight."). A turn detector should end the
user's turn after a complete utterance quickly and never inside the pause.

`speak()` renders one with the scripted user's voice (piper through
`agent.app.user_voice.synthesize_user_line`), at 16 kHz, and says where the speech really
ends and where the pause lies. Two ways to make the pause:

- ``"spliced"``: the halves are synthesized separately and joined by the silence. Simple, but
  piper reads the first half as a whole sentence, with a sentence's falling end: acoustically
  it sounds finished even though the words are not.
- ``"in-sentence"``: the whole line is synthesized once with a colon at the break
  ("... a table for: four people tonight."), so the voice carries on over the break as a
  speaker who pauses mid-sentence does; the clause pause piper makes there is then replaced by
  exactly the silence asked for.

Times are measured on the audio: a 10 ms frame is voiced when its RMS exceeds 2 % of the
loudest frame's (the same rule as `agent.app.user_voice.trim_silence`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.app.user_voice import VoiceEngine, synthesize_user_line
from agent.audio import pcm_to_array

__all__ = [
    "CORPUS",
    "RATE",
    "STYLES",
    "SpokenUtterance",
    "Style",
    "Utterance",
    "join_with_pause",
    "replace_gap",
    "speak",
    "speak_all",
    "voiced_span",
]

RATE = 16000
FRAME_S = 0.01
VOICED_RATIO = 0.02
MIN_PAUSE_MS, MAX_PAUSE_MS = 400, 700
_FADE_S = 0.005  # a short fade where a half is cut, so the splice does not click

Style = Literal["spliced", "in-sentence"]
STYLES: tuple[Style, ...] = ("spliced", "in-sentence")


@dataclass(frozen=True)
class Utterance:
    """One line a user says. ``second`` empty: complete, no pause. Otherwise the user stops
    after ``first`` for ``pause_ms`` and then says ``second``."""

    name: str
    first: str
    second: str = ""
    pause_ms: int = 0

    @property
    def paused(self) -> bool:
        return bool(self.second)

    @property
    def text(self) -> str:
        return f"{self.first} ... {self.second}" if self.paused else self.first


def _complete(name: str, text: str) -> Utterance:
    return Utterance(name, text)


def _paused(name: str, first: str, pause_ms: int, second: str) -> Utterance:
    return Utterance(name, first, second, pause_ms)


CORPUS: tuple[Utterance, ...] = (
    _complete("opening-hours", "What time do you open tomorrow?"),
    _complete("delivery-address", "Can I change my delivery address?"),
    _complete("plan-price", "How much does the monthly plan cost?"),
    _complete("museum-sunday", "Is the museum open on Sundays?"),
    _complete("cancel-friday", "Please cancel my appointment for Friday."),
    _complete("taxi", "I need a taxi to the airport."),
    _complete("weather", "What is the weather like in Paris today?"),
    _complete("pharmacy", "Where is the nearest pharmacy?"),
    _complete("thanks", "Thank you, that is all for today."),
    _complete("repeat", "Could you repeat the last number?"),
    _complete("flight", "My flight was cancelled this morning."),
    _complete("tables", "Do you have any tables free tonight?"),
    _paused("book-table", "I would like to book a table for", 400, "four people tonight."),
    _paused("station", "Can you tell me how to get to", 450, "the train station from here?"),
    _paused("account", "My account number is", 500, "four five six seven."),
    _paused("password", "I was wondering if you could", 550, "help me reset my password."),
    _paused("app-update", "The problem started when I", 600, "updated the app yesterday."),
    _paused("pizza", "I'd like to order a large pizza with", 650, "mushrooms and olives."),
    _paused("invoice", "Could you send the invoice to", 700, "my work email address?"),
    _paused("trip", "We are planning a trip to", 450, "Italy next summer."),
    _paused("move-appointment", "Can you move my appointment to", 550, "Wednesday afternoon."),
    _paused("package", "The package was supposed to arrive on", 650, "Tuesday morning."),
    _paused("hotel", "I'm looking for a hotel near", 500, "the city centre."),
    _paused("reminder", "Can you remind me to call my", 600, "sister at six?"),
)


@dataclass(frozen=True)
class SpokenUtterance:
    """An utterance as audio: PCM16 mono at `RATE`, and where things are in it (seconds from
    its first sample). ``pause`` is (end of the first half's speech, start of the second's)."""

    utterance: Utterance
    style: Style
    pcm: bytes
    speech_end: float
    pause: tuple[float, float] | None = None

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / RATE

    def until(self, seconds: float, *, silence_after: float = 0.0) -> bytes:
        """The audio up to ``seconds``, then ``silence_after`` seconds of digital silence."""
        cut = round(seconds * RATE) * 2
        return self.pcm[:cut] + bytes(round(silence_after * RATE) * 2)


def _frame_rms(samples: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    frame = round(FRAME_S * RATE)
    n = samples.size // frame
    frames = samples[: n * frame].reshape(n, frame)
    return np.asarray(np.sqrt(np.mean(frames * frames, axis=1)))


def _voiced_frames(pcm: bytes) -> npt.NDArray[np.bool_]:
    rms = _frame_rms(pcm_to_array(pcm).astype(np.float64))
    if rms.size == 0 or rms.max() <= 0:
        return np.zeros(rms.size, dtype=bool)
    return np.asarray(rms > VOICED_RATIO * rms.max())


def voiced_span(pcm: bytes) -> tuple[float, float]:
    """(start of the first voiced frame, end of the last one) in seconds."""
    voiced = np.flatnonzero(_voiced_frames(pcm))
    if voiced.size == 0:
        raise ValueError("no speech in this audio")
    return float(voiced[0]) * FRAME_S, float(voiced[-1] + 1) * FRAME_S


def _faded(samples: npt.NDArray[np.int16], *, head: bool, tail: bool) -> bytes:
    out = samples.astype(np.float64)
    n = min(round(_FADE_S * RATE), out.size)
    ramp = np.linspace(0.0, 1.0, n, endpoint=False)
    if head:
        out[:n] *= ramp
    if tail:
        out[out.size - n :] *= ramp[::-1]
    return np.asarray(np.rint(out), dtype="<i2").tobytes()


def join_with_pause(
    first: bytes, second: bytes, pause_ms: int, utterance: Utterance, style: Style = "spliced"
) -> SpokenUtterance:
    """``first``'s audio up to its last voiced frame, exactly ``pause_ms`` of silence, then
    ``second`` from its first voiced frame (each side keeps its other end as it is)."""
    _, first_end = voiced_span(first)
    second_start, second_end = voiced_span(second)
    a = pcm_to_array(first)[: round(first_end * RATE)]
    b = pcm_to_array(second)[round(second_start * RATE) :]
    pcm = _faded(a, head=False, tail=True) + bytes(pause_ms * RATE // 1000 * 2)
    pcm += _faded(b, head=True, tail=False)
    pause_end = first_end + pause_ms / 1000
    return SpokenUtterance(
        utterance,
        style,
        pcm,
        speech_end=pause_end + second_end - second_start,
        pause=(first_end, pause_end),
    )


def replace_gap(
    pcm: bytes, pause_ms: int, utterance: Utterance, *, near: float = 0.5
) -> SpokenUtterance:
    """Make the widest silence between voiced frames near ``near`` (a fraction of the speech,
    0..1, give or take a quarter of it) exactly ``pause_ms`` long (the "in-sentence" style).
    Raises `ValueError` if no gap there lasts 100 ms (the clause pause is not where it should
    be)."""
    voiced = np.flatnonzero(_voiced_frames(pcm))
    if voiced.size < 2:
        raise ValueError("no speech in this audio")
    gaps = np.diff(voiced) - 1  # unvoiced frames after each voiced one
    span = voiced[-1] - voiced[0]
    position = (voiced[:-1] - voiced[0]) / max(1, span)
    candidates = np.flatnonzero((np.abs(position - near) <= 0.25) & (gaps * FRAME_S >= 0.1))
    if candidates.size == 0:
        raise ValueError(f"no pause inside {utterance.text!r} (no gap of 100 ms where expected)")
    widest = int(candidates[np.argmax(gaps[candidates])])
    first_end = float(voiced[widest] + 1) * FRAME_S
    second_start = float(voiced[widest + 1]) * FRAME_S
    cut_a, cut_b = round(first_end * RATE) * 2, round(second_start * RATE) * 2
    return join_with_pause(pcm[:cut_a], pcm[cut_b:], pause_ms, utterance, "in-sentence")


def speak(utterance: Utterance, engine: VoiceEngine, style: Style = "spliced") -> SpokenUtterance:
    """The utterance in the scripted user's voice (BLOCKING: runs the engine)."""
    if not utterance.paused:
        pcm = synthesize_user_line(utterance.first, engine, sample_rate=RATE)
        return SpokenUtterance(utterance, style, pcm, speech_end=voiced_span(pcm)[1])
    if style == "spliced":
        first = synthesize_user_line(utterance.first, engine, sample_rate=RATE)
        second = synthesize_user_line(utterance.second, engine, sample_rate=RATE)
        return join_with_pause(first, second, utterance.pause_ms, utterance)
    line = f"{utterance.first}: {utterance.second}"
    near = len(utterance.first) / len(line)  # where the break falls, by characters
    pcm = synthesize_user_line(line, engine, sample_rate=RATE)
    return replace_gap(pcm, utterance.pause_ms, utterance, near=near)


def speak_all(
    engine: VoiceEngine, style: Style = "spliced", corpus: Iterable[Utterance] = CORPUS
) -> list[SpokenUtterance]:
    """Every utterance of ``corpus`` (BLOCKING)."""
    return [speak(utterance, engine, style) for utterance in corpus]
