"""Smart Turn v3 as the local turn detector: our features against the reference implementation,
the real model on the scripted user's voice, and what bad input and a missing model do."""

from __future__ import annotations

import json
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from agent.audio import pcm_to_float, resample
from agent.interfaces import TurnDetector, TurnGuess
from plugins.local import smart_turn
from plugins.local.smart_turn import (
    SmartTurn,
    SmartTurnUnavailable,
    log_mel_features,
    model_window,
)
from tests.signals import synthetic_speech

REFERENCE = json.loads((Path(__file__).parent / "data" / "smart_turn_reference.json").read_text())
SIGNALS = {"short": synthetic_speech(2.5, seed=1), "long": synthetic_speech(9.5, seed=2)}


def _model_installed() -> bool:
    try:
        smart_turn.bundled_model_path()
    except SmartTurnUnavailable:
        return False
    return find_spec("onnxruntime") is not None


needs_model = pytest.mark.skipif(
    not _model_installed(),
    reason=f"needs the Smart Turn weights: {smart_turn.INSTALL_HINT}",
)


@pytest.fixture(scope="module")
def detector() -> SmartTurn:
    detector = SmartTurn()
    detector.load()
    return detector


# -- features ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["short", "long"])
def test_features_match_the_reference_implementation(name: str) -> None:
    """Our numpy log-mel equals transformers' WhisperFeatureExtractor as smart-turn calls it
    (the reference values were computed with it: see the JSON's produced_by)."""
    ref = REFERENCE["signals"][name]
    features = log_mel_features(pcm_to_float(SIGNALS[name]))
    assert features.shape == tuple(ref["shape"]) == (80, 800)
    assert features.dtype == np.float32
    for stat in ("min", "max", "mean", "std"):
        assert float(getattr(features, stat)()) == pytest.approx(ref[stat], abs=2e-5)
    np.testing.assert_allclose(features.mean(axis=1), ref["band_means"], atol=2e-5)
    np.testing.assert_allclose(features.mean(axis=0)[::4], ref["frame_means_every_4th"], atol=2e-5)
    np.testing.assert_allclose(
        features[::8, 780:800], ref["slice_bands_step_8_frames_780_to_800"], atol=2e-5
    )


def test_the_window_is_the_last_eight_seconds_padded_at_the_start() -> None:
    short = np.ones(16000, dtype=np.float32)
    window = model_window(short)
    assert window.shape == (128000,)
    assert not window[:-16000].any() and window[-16000:].all()  # speech ends at the window's end
    ramp = np.arange(200000, dtype=np.float32)
    assert np.array_equal(model_window(ramp), ramp[-128000:])


@needs_model
@pytest.mark.parametrize("name", ["short", "long"])
def test_probability_matches_the_reference(detector: SmartTurn, name: str) -> None:
    guess = detector.predict_sync(SIGNALS[name], 16000)
    assert guess.probability == pytest.approx(REFERENCE["signals"][name]["probability"], abs=1e-3)
    assert guess.complete == (guess.probability > 0.5)
    assert guess.compute_seconds > 0


# -- the real model on the scripted user's voice ------------------------------------------------


@pytest.fixture(scope="module")
def lines(piper_engine: Any) -> dict[str, Any]:
    from bench.turn_corpus import CORPUS, speak

    wanted = ("opening-hours", "book-table", "account", "trip")
    return {u.name: speak(u, piper_engine, "in-sentence") for u in CORPUS if u.name in wanted}


@needs_model
@pytest.mark.engines
def test_complete_questions_sound_complete(detector: SmartTurn, lines: dict[str, Any]) -> None:
    spoken = lines["opening-hours"]  # "What time do you open tomorrow?"
    guess = detector.predict_sync(spoken.until(spoken.speech_end, silence_after=0.2), 16000)
    assert guess.complete, guess


@needs_model
@pytest.mark.engines
def test_a_sentence_cut_mid_phrase_sounds_less_complete(
    detector: SmartTurn, lines: dict[str, Any]
) -> None:
    """The same line, heard 200 ms into the pause after "I would like to book a table for" and
    200 ms after its real end: the model is surer the turn is over at the end."""
    at_end, at_pause = {}, {}
    for name in ("book-table", "account", "trip"):
        spoken = lines[name]
        assert spoken.pause is not None
        end = spoken.until(spoken.speech_end, silence_after=0.2)
        pause = spoken.until(spoken.pause[0], silence_after=0.2)
        at_end[name] = detector.predict_sync(end, 16000).probability
        at_pause[name] = detector.predict_sync(pause, 16000).probability
    for name in ("account", "trip"):  # the clearest cases, every time
        assert at_end[name] > at_pause[name], (name, at_end, at_pause)
    assert np.mean(list(at_end.values())) - np.mean(list(at_pause.values())) > 0.4, (
        at_end,
        at_pause,
    )


# -- bad input ----------------------------------------------------------------------------------


def test_empty_audio_is_not_complete_and_needs_no_model(tmp_path: Path) -> None:
    detector = SmartTurn(tmp_path / "absent.onnx")  # never loaded: nothing to judge
    assert detector.predict_sync(b"", 16000) == TurnGuess(complete=False, probability=0.0)
    assert detector.predict_sync(b"\x01", 16000).probability == 0.0


@needs_model
def test_a_trailing_odd_byte_is_ignored(detector: SmartTurn) -> None:
    pcm = SIGNALS["short"]
    assert (
        detector.predict_sync(pcm + b"\x7f", 16000).probability
        == detector.predict_sync(pcm, 16000).probability
    )


@needs_model
@pytest.mark.engines
@pytest.mark.parametrize("rate", [8000, 24000, 44100])
def test_other_sample_rates_are_resampled(
    detector: SmartTurn, lines: dict[str, Any], rate: int
) -> None:
    spoken = lines["opening-hours"]
    pcm = spoken.until(spoken.speech_end, silence_after=0.2)
    native = detector.predict_sync(pcm, 16000)
    other = detector.predict_sync(resample(pcm, 16000, rate), rate)
    assert other.complete == native.complete
    assert other.probability == pytest.approx(native.probability, abs=0.1)


@pytest.mark.parametrize("rate", [0, -16000, True, 16000.0])
def test_a_bad_sample_rate_is_refused(tmp_path: Path, rate: Any) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        SmartTurn(tmp_path / "absent.onnx").predict_sync(b"\x00\x00" * 100, rate)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5, 2.0])
def test_a_threshold_outside_zero_to_one_is_refused(tmp_path: Path, threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        SmartTurn(tmp_path / "absent.onnx", threshold=threshold)


@needs_model
def test_the_threshold_decides_complete(detector: SmartTurn) -> None:
    probability = REFERENCE["signals"]["short"]["probability"]  # 0.43
    strict = SmartTurn(threshold=min(0.99, probability + 0.2))
    lenient = SmartTurn(threshold=max(0.01, probability - 0.2))
    assert not strict.predict_sync(SIGNALS["short"], 16000).complete
    assert lenient.predict_sync(SIGNALS["short"], 16000).complete


# -- a missing model ------------------------------------------------------------------------------


def test_a_missing_model_file_names_the_fix(tmp_path: Path) -> None:
    detector = SmartTurn(tmp_path / "absent.onnx")
    with pytest.raises(SmartTurnUnavailable) as caught:
        detector.load()
    assert 'pip install --no-deps "pipecat-ai==1.14.0"' in str(caught.value)
    assert str(tmp_path / "absent.onnx") in str(caught.value)


def test_without_the_pipecat_wheel_the_error_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SmartTurnUnavailable, match=r'pip install --no-deps "pipecat-ai==1\.14\.0"'):
        SmartTurn()


@pytest.mark.skipif(find_spec("onnxruntime") is None, reason="needs onnxruntime")
def test_a_broken_model_file_names_the_fix(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(SmartTurnUnavailable, match=r"Could not load .* Reinstall it with: pip"):
        SmartTurn(broken).load()


def test_finding_the_weights_does_not_import_pipecat() -> None:
    try:
        smart_turn.bundled_model_path()
    except SmartTurnUnavailable:
        pass
    assert "pipecat" not in sys.modules


# -- the async face -----------------------------------------------------------------------------


@needs_model
def test_it_is_a_turn_detector_exported_from_plugins_local() -> None:
    from plugins.local import SmartTurn as exported

    assert exported is SmartTurn
    assert isinstance(SmartTurn(), TurnDetector)


@needs_model
@pytest.mark.anyio
async def test_predict_runs_in_a_thread_and_cancelling_returns_at_once() -> None:
    async with SmartTurn() as detector:
        guess = await detector.predict(SIGNALS["long"], 16000)
        assert guess.probability == pytest.approx(
            REFERENCE["signals"]["long"]["probability"], abs=1e-3
        )
        started = time.perf_counter()
        with anyio.move_on_after(0.001):
            await detector.predict(SIGNALS["long"], 16000)
        assert time.perf_counter() - started < max(0.05, guess.compute_seconds / 2)
