"""Audio frames, resampling, G.711, WAV files and the playout buffer."""

from __future__ import annotations

import threading
import time
import wave
from pathlib import Path

import anyio
import numpy as np
import pytest

from agent.audio import (
    AudioFrame,
    PlayoutBuffer,
    StreamResampler,
    alaw_decode,
    alaw_encode,
    float_to_pcm,
    pcm_to_float,
    read_wav,
    resample,
    ulaw_decode,
    ulaw_encode,
    write_wav,
)
from agent.interfaces import AudioOutput

try:  # stdlib until Python 3.13; used as an independent reference where it is standard
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:  # pragma: no cover - Python >= 3.13
    audioop = None  # type: ignore[assignment]

pytestmark = pytest.mark.anyio

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16).tobytes()


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return float_to_pcm(amplitude * np.sin(2 * np.pi * freq * t))


def dominant_frequency(pcm: bytes, rate: int) -> float:
    x = pcm_to_float(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


# -- AudioFrame ----------------------------------------------------------------------------------


def test_frame_samples_duration_and_silence() -> None:
    frame = AudioFrame(bytes(640), 16000)
    assert frame.samples == 320
    assert frame.duration == pytest.approx(0.02)
    silence = AudioFrame.silence(8000, 0.25)
    assert silence.samples == 2000 and set(silence.pcm) == {0}
    assert silence.to_array().dtype == np.int16


def test_frame_rejects_odd_bytes_and_bad_rate() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        AudioFrame(b"\x00\x01\x02", 16000)
    with pytest.raises(ValueError, match="positive integer"):
        AudioFrame(b"", 0)


# -- resampling ----------------------------------------------------------------------------------


def test_resample_keeps_pitch_and_duration() -> None:
    src = tone(440.0, 1.0, 44100)
    out = resample(src, 44100, 16000)
    assert abs(len(out) // 2 - 16000) <= 1
    assert dominant_frequency(out, 16000) == pytest.approx(440.0, abs=2.0)
    assert resample(src, 44100, 44100) is src


def test_stream_resampler_matches_one_shot_across_odd_chunks() -> None:
    src = tone(300.0, 1.0, 22050) + tone(1200.0, 0.5, 22050)
    one_shot = np.frombuffer(resample(src, 22050, 16000), dtype=np.int16).astype(int)
    stream = StreamResampler(22050, 16000)
    rng = np.random.default_rng(1)
    pieces: list[bytes] = []
    pos = 0
    while pos < len(src):
        size = int(rng.integers(1, 900)) * 2
        pieces.append(stream.process(src[pos : pos + size]))
        pos += size
    pieces.append(stream.flush())
    chunked = np.frombuffer(b"".join(pieces), dtype=np.int16).astype(int)
    assert len(chunked) == len(one_shot)
    # Identical up to rounding: no click or gap at any of the ~70 chunk boundaries.
    assert np.max(np.abs(chunked - one_shot)) <= 4


def test_stream_resampler_same_rate_is_passthrough() -> None:
    stream = StreamResampler(16000, 16000)
    assert stream.process(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"
    assert stream.flush() == b""


# -- G.711 ---------------------------------------------------------------------------------------


def test_ulaw_decode_standard_table_points() -> None:
    decoded = np.frombuffer(ulaw_decode(bytes([0x00, 0x7E, 0x7F, 0x80, 0xFE, 0xFF])), np.int16)
    assert decoded.tolist() == [-32124, -8, 0, 32124, 8, 0]


def test_ulaw_encode_itu_reference_points() -> None:
    # ITU-T G.191 ulaw_compress: negatives use their one's complement, so -1 is "negative 0".
    pcm = np.array([0, -1, 32767, -32768, 8, -9], dtype=np.int16).tobytes()
    assert list(ulaw_encode(pcm)) == [0xFF, 0x7F, 0x80, 0x00, 0xFE, 0x7E]


def test_ulaw_roundtrip_of_every_code() -> None:
    codes = bytes(range(256))
    again = ulaw_encode(ulaw_decode(codes))
    # 0x7F (negative zero) decodes to 0, which encodes as positive zero 0xFF.
    assert [c for c in range(256) if again[c] != c] == [0x7F]
    assert again[0x7F] == 0xFF


def test_ulaw_quantisation_is_monotonic_and_bounded() -> None:
    decoded = np.frombuffer(ulaw_decode(ulaw_encode(ALL_PCM)), np.int16).astype(int)
    linear = np.arange(-32768, 32768)
    assert np.all(np.diff(decoded) >= 0)
    # Largest segment step is 1024; clipping near full scale adds up to 644.
    error = np.abs(decoded - linear)
    assert error[np.abs(linear) <= 32124].max() <= 512
    assert error.max() <= 644


@pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")
def test_g711_agrees_with_audioop() -> None:
    codes = bytes(range(256))
    assert ulaw_decode(codes) == audioop.ulaw2lin(codes, 2)
    assert alaw_decode(codes) == audioop.alaw2lin(codes, 2)
    assert alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)
    # audioop's mu-law encoder rounds negatives the Sun way; for samples >= 0 all agree.
    non_negative = ALL_PCM[len(ALL_PCM) // 2 :]
    assert ulaw_encode(non_negative) == audioop.lin2ulaw(non_negative, 2)


def test_alaw_standard_points_and_roundtrip() -> None:
    decoded = np.frombuffer(alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])), np.int16)
    assert decoded.tolist() == [8, -8, 32256, -32256]
    codes = bytes(range(256))
    assert alaw_encode(alaw_decode(codes)) == codes


# -- float and WAV -------------------------------------------------------------------------------


def test_float_roundtrip_is_exact_and_clips() -> None:
    assert float_to_pcm(pcm_to_float(ALL_PCM)) == ALL_PCM
    clipped = np.frombuffer(float_to_pcm(np.array([1.5, -1.5, 1.0])), np.int16)
    assert clipped.tolist() == [32767, -32768, 32767]


def test_wav_roundtrip(tmp_path: Path) -> None:
    frame = AudioFrame(tone(500.0, 0.3, 22050), 22050)
    write_wav(tmp_path / "a.wav", frame)
    assert read_wav(tmp_path / "a.wav") == frame
    write_wav(tmp_path / "b.wav", frame.pcm, 22050)
    assert read_wav(tmp_path / "b.wav") == frame


def test_wav_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    stereo = np.array([[1000, 3000], [-2000, 0], [5, 6]], dtype=np.int16).tobytes()
    write_wav(tmp_path / "s.wav", stereo, 8000, channels=2)
    frame = read_wav(tmp_path / "s.wav")
    assert frame.sample_rate == 8000
    assert frame.to_array().tolist() == [2000, -1000, 6]  # 5.5 rounds to even


def test_wav_errors_say_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes(100))
    with pytest.raises(ValueError, match=r"16-bit.*convert"):
        read_wav(path)
    with pytest.raises(ValueError, match="sample_rate is required"):
        write_wav(tmp_path / "x.wav", b"\x00\x00")
    with pytest.raises(ValueError, match="contradicts"):
        write_wav(tmp_path / "x.wav", AudioFrame(b"", 8000), 16000)


# -- PlayoutBuffer -------------------------------------------------------------------------------


def ramp(start: int, n: int) -> bytes:
    return (np.arange(start, start + n) % 30000).astype(np.int16).tobytes()


def test_playout_is_an_audio_output() -> None:
    buffer: AudioOutput = PlayoutBuffer(16000)
    assert buffer.sample_rate == 16000


async def test_read_pads_with_silence_and_counts_only_real_samples() -> None:
    buffer = PlayoutBuffer(16000, max_seconds=1.0)
    await buffer.write(ramp(1, 100))
    out = np.frombuffer(buffer.read(160), np.int16)
    assert out[:100].tolist() == list(range(1, 101))
    assert not out[100:].any()
    assert buffer.samples_played == 100
    assert buffer.read(50) == bytes(100)
    assert buffer.samples_played == 100
    buffer.mark()
    assert buffer.samples_played == 0


async def test_clear_drops_queued_audio_at_once() -> None:
    buffer = PlayoutBuffer(16000, max_seconds=1.0)
    await buffer.write(ramp(1, 8000))
    buffer.read(1000)
    assert buffer.clear() == 7000
    assert buffer.pending_samples == 0
    assert buffer.read(320) == bytes(640)
    assert buffer.samples_played == 1000


async def test_gain_ducks_already_queued_audio() -> None:
    buffer = PlayoutBuffer(16000)
    await buffer.write(np.full(400, 10000, dtype=np.int16).tobytes())
    first = np.frombuffer(buffer.read(200), np.int16)
    buffer.gain = 0.25
    second = np.frombuffer(buffer.read(200), np.int16)
    assert set(first.tolist()) == {10000}
    assert set(second.tolist()) == {2500}
    with pytest.raises(ValueError, match=r"between 0\.0 and 1\.0"):
        buffer.gain = 1.5


async def test_write_waits_for_room_then_continues() -> None:
    buffer = PlayoutBuffer(1000, max_seconds=0.1)  # capacity 100 samples
    await buffer.write(ramp(0, 80))
    done = anyio.Event()

    async def producer() -> None:
        await buffer.write(ramp(80, 50))  # does not fit next to 80 queued
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.sleep(0.05)
        assert not done.is_set()
        assert buffer.pending_samples == 80
        buffer.read(40)  # now 40 + 50 fits
        with anyio.fail_after(5):
            await done.wait()
    assert np.frombuffer(buffer.read(90), np.int16).tolist() == list(range(40, 130))


async def test_cancelled_write_queues_nothing() -> None:
    buffer = PlayoutBuffer(1000, max_seconds=0.1)
    await buffer.write(ramp(0, 100))
    with anyio.move_on_after(0.05) as scope:
        await buffer.write(ramp(100, 10))
    assert scope.cancelled_caught
    assert buffer.pending_samples == 100


async def test_oversized_chunk_goes_into_an_empty_buffer() -> None:
    buffer = PlayoutBuffer(1000, max_seconds=0.1)
    with anyio.fail_after(5):
        await buffer.write(ramp(0, 500))
    assert buffer.pending_samples == 500


async def test_drain_returns_once_everything_was_read() -> None:
    buffer = PlayoutBuffer(8000)
    await buffer.write(ramp(0, 800))
    drained = anyio.Event()

    async def wait_drain() -> None:
        await buffer.drain()
        drained.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_drain)
        await anyio.sleep(0.03)
        assert not drained.is_set()
        buffer.read(800)
        with anyio.fail_after(5):
            await drained.wait()


async def test_audio_thread_reader_gets_every_sample_in_order() -> None:
    """A real thread reads like a sound card while the event loop writes with backpressure."""
    rate = 8000
    buffer = PlayoutBuffer(rate, max_seconds=0.05)  # 400 samples: the writer must wait often
    total = 12000
    received: list[bytes] = []
    stop = threading.Event()

    def sound_card() -> None:
        while not stop.is_set():
            received.append(buffer.read(80))
            time.sleep(0.001)

    thread = threading.Thread(target=sound_card, daemon=True)
    thread.start()
    try:
        with anyio.fail_after(30):
            for start in range(0, total, 150):
                await buffer.write(ramp(start, min(150, total - start)))
            await buffer.drain()
    finally:
        stop.set()
        thread.join(5)
    played = np.frombuffer(b"".join(received), np.int16)
    real = played[played != 0]  # padding is silence; ramp % 30000 is 0 only at sample 0
    expected = (np.arange(total) % 30000).astype(np.int16)
    assert real.tolist() == expected[1:].tolist()
    assert buffer.samples_played == total


def test_a_paused_buffer_plays_silence_loses_nothing_and_resumes_where_it_held() -> None:
    """What barge-in's pause relies on: a false alarm costs no samples and no heard words."""
    buffer = PlayoutBuffer(16000)
    pcm = (np.arange(1600, dtype=np.int16) + 1).astype("<i2").tobytes()
    anyio.run(buffer.write, pcm)
    first = buffer.read(400)
    silent_from = buffer.pause()
    assert silent_from == 400 / 16000
    assert buffer.read(400) == bytes(800) and buffer.samples_played == 400
    buffer.resume()
    assert buffer.read(400) == pcm[800:1600], "playback goes on exactly where it paused"
    assert first == pcm[:800] and buffer.samples_played == 800
    buffer.pause()
    assert buffer.clear() == 800 and buffer.pending_samples == 0
