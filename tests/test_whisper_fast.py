"""The short-window speech recognizer: as accurate as faster-whisper's 30 s window, faster,
and never caught in a loop."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.app.user_voice import synthesize_user_line
from plugins.local.whisper_stt import (
    FRAMES_PER_SECOND,
    FULL_WINDOW_FRAMES,
    SHORT_WINDOW_FRAMES,
    TRAILING_SILENCE_FRAMES,
    Recognition,
    WhisperSTT,
    _ShortAttempt,
    degenerate_reason,
    token_budget,
)
from tests.stt_lines import LONG_LINE, USER_LINES
from tests.textmetrics import wer

RATE = 16000
WER_MARGIN = 0.05
"""How much worse the short path's mean WER may be than the full path's on the same audio.
piper speaks each line a little differently every run, and either path sometimes mishears a
word the other gets ("Paris" / "and prayers"): over 16 runs of these lines the short path's
mean was 0 to 0.033 above the full path's (+0.005 on average), one word of a short line being
0.017."""

needs_engines = pytest.mark.skipif(
    find_spec("piper") is None or find_spec("faster_whisper") is None,
    reason="needs the local engines: pip install 'voxloop[local]'",
)


# --- the degenerate-output detector, on strings ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "kwargs", "flagged"),
    [
        ("Yes.", 0.5, {}, None),
        ("No, thanks.", 1.0, {}, None),
        ("What color is grass?", 1.3, {}, None),
        ("I would like to book a table for four people tonight at eight, please.", 3.1, {}, None),
        ("My account number is 4 5 6 7.", 2.5, {}, None),
        ("What color is grass? What color is grass?", 1.3, {}, "repeats itself"),
        ("Hello? Hello?", 0.4, {}, "repeats itself"),
        ("what do bees make? what do bees make? what do", 1.0, {}, "repeats itself"),
        ("No? No? No? No? No? No?", 0.4, {}, "repeats itself"),
        ("one two three four five six seven eight nine ten", 1.0, {}, "words in"),
        ("", 1.0, {}, "no words"),
        ("...", 1.0, {}, "no words"),
        ("Okay.", 0.5, {"reached_token_limit": True}, "no end token"),
        ("Okay.", 0.5, {"avg_logprob": -1.3}, "average log probability"),
        ("Okay.", 0.5, {"avg_logprob": -0.8}, None),
        ("you", 1.0, {"no_speech_prob": 0.99}, "no-speech probability"),
        ("Yes.", 0.5, {"no_speech_prob": 0.4}, None),
        ("la-la-la-la-la-la-la-la-la-la-la-la-la-la-la-la-la-la-la-la-la", 9.0, {}, "repeats"),
        ("ab" * 40, 9.0, {}, "compression ratio"),
    ],
)
def test_degenerate_output_is_recognized(
    text: str, seconds: float, kwargs: dict[str, Any], flagged: str | None
) -> None:
    reason = degenerate_reason(text, seconds, **kwargs)
    if flagged is None:
        assert reason is None
    else:
        assert reason is not None and flagged in reason


def test_the_token_budget_grows_with_the_audio_and_stays_under_whispers_limit() -> None:
    assert 10 <= token_budget(0.3) < token_budget(3.0) < token_budget(10.0) <= 224
    assert token_budget(60.0) == 224
    # room for fast speech: ~5 tokens per second measured, punctuation included
    assert token_budget(2.0) >= 2 * 5 + 5


def test_an_unknown_window_is_refused() -> None:
    with pytest.raises(ValueError, match="'short' or 'full'"):
        WhisperSTT(window="medium")  # type: ignore[arg-type]


# --- the real model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Heard:
    text: str
    pcm: bytes
    full: Recognition
    short: Recognition


@pytest.fixture(scope="module")
def heard(piper_engine: Any, whisper_stt: WhisperSTT) -> list[Heard]:
    """Every user line, spoken once, heard by both paths (the same audio for both)."""
    out = []
    for text in USER_LINES:
        pcm = synthesize_user_line(text, piper_engine, sample_rate=RATE)
        full = whisper_stt.recognize(pcm, RATE, window="full")
        short = whisper_stt.recognize(pcm, RATE, window="short")
        out.append(Heard(text, pcm, full, short))
    return out


@needs_engines
@pytest.mark.engines
def test_the_short_window_is_as_accurate_as_the_full_one(heard: list[Heard]) -> None:
    full = [wer(h.text, h.full.text) for h in heard]
    short = [wer(h.text, h.short.text) for h in heard]
    for h, f, s in zip(heard, full, short, strict=True):
        print(
            f"{h.short.audio_seconds:4.1f} s  full {f:.2f} {h.full.text!r}  short {s:.2f} "
            f"{h.short.text!r} ({h.short.window}, fallback: {h.short.fallback})"
        )
    print(f"mean WER: full {np.mean(full):.3f}  short {np.mean(short):.3f}")
    assert np.mean(short) <= np.mean(full) + WER_MARGIN
    assert max(short) <= 0.5  # no line lost, nothing hallucinated on top


@needs_engines
@pytest.mark.engines
def test_the_short_window_holds_and_never_repeats_itself(heard: list[Heard]) -> None:
    for h in heard:
        assert degenerate_reason(h.short.text, h.short.audio_seconds) is None, h.short
    held = [h for h in heard if h.short.window == "short"]
    assert len(held) >= len(heard) - 1  # a fallback is rare (1 in ~200 measured)
    assert all(h.short.frames >= SHORT_WINDOW_FRAMES for h in held)
    assert all(h.full.window == "full" and h.full.frames == 0 for h in heard)


@needs_engines
@pytest.mark.engines
def test_the_short_window_is_faster(heard: list[Heard]) -> None:
    # The encoder's work grows faster than the window, 10 s against 30 s: about 3x less in
    # all. The bound is loose, as the machine is shared; bench.stt_latency has the figures.
    short = sum(h.short.compute_seconds for h in heard)
    full = sum(h.full.compute_seconds for h in heard)
    assert short < 0.7 * full, (short, full)


@needs_engines
@pytest.mark.engines
def test_an_utterance_longer_than_the_window_is_heard_whole(
    piper_engine: Any, whisper_stt: WhisperSTT
) -> None:
    pcm = synthesize_user_line(LONG_LINE, piper_engine, sample_rate=RATE)
    heard = whisper_stt.recognize(pcm, RATE)
    print(f"{heard.audio_seconds:.1f} s, {heard.frames} frames: {heard.text!r}")
    assert heard.audio_seconds > SHORT_WINDOW_FRAMES / FRAMES_PER_SECOND
    assert heard.window == "short" and heard.frames > SHORT_WINDOW_FRAMES
    assert wer(LONG_LINE, heard.text) < 0.1


class _FramesOnly:
    """A stand-in model whose spectrogram has `frames` frames, and which may not encode."""

    def __init__(self, frames: int) -> None:
        self.frames = frames

    def feature_extractor(self, _samples: Any) -> np.ndarray:
        return np.zeros((80, self.frames + 1), dtype=np.float32)

    def encode(self, _window: Any) -> Any:
        raise AssertionError("the short path should not have run")


def test_an_utterance_too_long_for_a_short_window_is_left_to_the_full_path() -> None:
    stt = WhisperSTT(model_dir=Path("/nonexistent"))
    samples = np.zeros(16000, dtype=np.float32)
    frames = FULL_WINDOW_FRAMES - TRAILING_SILENCE_FRAMES + 1  # 27 s of speech and a bit
    assert stt._decode_short(_FramesOnly(frames), samples, frames / FRAMES_PER_SECOND) is None


@needs_engines
@pytest.mark.engines
def test_silence_is_not_heard_as_a_word(whisper_stt: WhisperSTT) -> None:
    # In a short window padded the way OpenAI's whisper pads, tiny.en hears a word in a quiet
    # room; its no-speech probability or its low confidence sends it to the full path.
    room = np.random.default_rng(3).normal(0.0, 3.0, 2 * RATE)
    heard = whisper_stt.recognize(np.asarray(room, dtype="<i2").tobytes(), RATE)
    assert heard.text == "" and heard.window == "full" and heard.fallback is not None


@needs_engines
@pytest.mark.engines
def test_digital_silence_is_nothing_without_the_full_window(whisper_stt: WhisperSTT) -> None:
    # An engine warm-up transcribes zeros: the short pass is the warm-up, and zeros hold no
    # words, so the 30 s window (~700 ms of CPU) is not run to confirm it.
    heard = whisper_stt.recognize(bytes(RATE), RATE)
    assert (heard.text, heard.window, heard.fallback) == ("", "short", None)


@needs_engines
@pytest.mark.engines
def test_a_degenerate_short_decode_falls_back_to_the_full_path(
    heard: list[Heard], whisper_stt: WhisperSTT, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = next(h for h in heard if h.text == "Could you repeat that more slowly?")

    def looping(_model: Any, _samples: Any, _seconds: float) -> _ShortAttempt:
        return _ShortAttempt("Could you? Could you? Could you?", 1000, True, -0.1, 0.01)

    monkeypatch.setattr(whisper_stt, "_decode_short", looping)
    result = whisper_stt.recognize(line.pcm, RATE)
    assert result.window == "full"
    assert result.fallback is not None and "end token" in result.fallback
    assert result.text == line.full.text
    assert result.compute_seconds > 0
