"""The embedded engines for real: piper speaks, whisper listens (no network, no fakes)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from importlib.util import find_spec

import anyio
import numpy as np
import pytest
import soxr

from plugins.local.piper_tts import EngineChunk, PiperEngine
from plugins.local.whisper_stt import WhisperSTT
from tests.textmetrics import wer

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(
        find_spec("piper") is None or find_spec("faster_whisper") is None,
        reason="needs the local engines: pip install 'voxloop[local]'",
    ),
]

ACCEPTANCE_TEXT = (
    "Good morning, and welcome to the city library. "
    "The reading room opens at nine and closes at six. "
    "Please keep your phone on silent while you are inside. "
    "You can borrow up to five books for two weeks. "
    "Ask at the front desk if you need any help."
)


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    return PiperEngine.load(progress=print)


@pytest.fixture(scope="module")
def stt() -> Iterator[WhisperSTT]:
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # prove the model never needs the hub
    try:
        recognizer = WhisperSTT(progress=print)
        recognizer.load()
        yield recognizer
    finally:
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def speak(engine: PiperEngine, text: str, speed: float = 1.0) -> tuple[list[EngineChunk], bytes]:
    chunks = list(engine.synthesize(text, speed=speed))
    return chunks, b"".join(chunk.pcm for chunk in chunks)


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


# --- piper ----------------------------------------------------------------------------------


def test_piper_speaks_audible_speech_of_plausible_length(engine: PiperEngine) -> None:
    text = "The weather today is sunny with a light breeze from the west."
    chunks, pcm = speak(engine, text)
    assert engine.sample_rate == 22050
    assert all(chunk.sample_rate == 22050 for chunk in chunks)
    seconds = len(pcm) / 2 / engine.sample_rate
    assert 0.04 * len(text) <= seconds <= 0.12 * len(text)
    assert rms(pcm) > 1000  # clearly audible, not silence or a click


def test_piper_runs_on_the_threads_it_was_given(engine: PiperEngine) -> None:
    # one thread: the other core is llama.cpp's while it writes the answer (bench.thread_sweep)
    from plugins.local.piper_tts import CPU_THREADS

    options = engine._piper_voice.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (CPU_THREADS, 1)


def test_piper_yields_one_chunk_per_sentence_in_order(engine: PiperEngine) -> None:
    text = "First sentence here. Second one follows! And a question? "
    chunks, _pcm = speak(engine, text)
    assert ["".join(chunk.chars) for chunk in chunks] == [
        "First sentence here. ",
        "Second one follows! ",
        "And a question? ",
    ]
    assert all(rms(chunk.pcm) > 1000 for chunk in chunks)


def test_faster_speed_gives_shorter_audio(engine: PiperEngine) -> None:
    text = "Speed changes how long this sentence takes to say."
    _, slow = speak(engine, text, speed=0.8)
    _, fast = speak(engine, text, speed=1.2)
    assert len(fast) < 0.85 * len(slow)  # nominally 0.8 / 1.2 = 0.67


def test_speed_outside_the_protocol_range_is_refused(engine: PiperEngine) -> None:
    with pytest.raises(ValueError, match=r"0\.7 and 1\.2"):
        list(engine.synthesize("Too fast.", speed=2.0))


def test_alignment_joins_back_to_the_text_and_times_rise(engine: PiperEngine) -> None:
    text = "  Hello there, Sam! It's 4 o'clock... time for tea?  Yes "
    chunks, _pcm = speak(engine, text)
    assert "".join("".join(chunk.chars) for chunk in chunks) == text
    for chunk in chunks:
        n = len(chunk.chars)
        assert len(chunk.char_start_ms) == n == len(chunk.char_duration_ms)
        starts = chunk.char_start_ms
        assert all(b > a for a, b in itertools.pairwise(starts))
        assert all(d > 0 for d in chunk.char_duration_ms)
        end_ms = starts[-1] + chunk.char_duration_ms[-1]
        assert end_ms == pytest.approx(chunk.duration_seconds * 1000, abs=1.0)


def test_text_with_nothing_to_say_still_accounts_for_every_character(engine: PiperEngine) -> None:
    assert list(engine.synthesize("")) == []
    chunks = list(engine.synthesize(" ... "))
    assert "".join("".join(chunk.chars) for chunk in chunks) == " ... "


def test_unknown_voice_error_lists_the_voices() -> None:
    with pytest.raises(ValueError, match="joe"):
        PiperEngine.load("rachel")
    assert PiperEngine.load("default") is PiperEngine.load("joe")


# --- whisper, and the two together ----------------------------------------------------------


def test_whisper_reads_back_what_piper_said(engine: PiperEngine, stt: WhisperSTT) -> None:
    """THE acceptance test: five sentences spoken by piper, transcribed by whisper."""
    _chunks, pcm = speak(engine, ACCEPTANCE_TEXT)
    transcript = stt.transcribe_sync(pcm, engine.sample_rate)
    error_rate = wer(ACCEPTANCE_TEXT, transcript.text)
    print(f"\nheard: {transcript.text}")
    print(
        f"WER {error_rate:.1%}  audio {transcript.audio_seconds:.1f} s  "
        f"compute {transcript.compute_seconds:.2f} s"
    )
    assert error_rate < 0.10
    assert transcript.audio_seconds == pytest.approx(len(pcm) / 2 / engine.sample_rate)


def test_whisper_handles_telephone_audio(engine: PiperEngine, stt: WhisperSTT) -> None:
    text = "Please call me back tomorrow afternoon."
    _chunks, pcm = speak(engine, text)
    x = np.frombuffer(pcm, dtype="<i2")
    phone = soxr.resample(x, engine.sample_rate, 8000).astype("<i2").tobytes()

    async def main() -> str:
        transcript = await stt.transcribe(phone, 8000)
        return transcript.text

    heard = anyio.run(main)
    print(f"\nheard over 8 kHz: {heard}  (WER {wer(text, heard):.1%})")
    assert wer(text, heard) < 0.2


def test_whisper_returns_empty_text_for_no_audio(stt: WhisperSTT) -> None:
    assert stt.transcribe_sync(b"", 16000).text == ""
