"""Output formats of the ElevenLabs protocol: lookup, streaming encode, streaming decode."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.elevenlabs.formats import (
    SUPPORTED_FORMATS,
    Decoder,
    Encoder,
    OutputFormat,
    audio_duration_seconds,
    parse_output_format,
)

ENGINE_RATE = 22050  # what the piper voice produces


def tone(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype("<i2").tobytes()


def samples(pcm: bytes) -> npt.NDArray[np.int16]:
    return np.frombuffer(pcm, dtype="<i2")


def encode_in_pieces(fmt: OutputFormat, pcm: bytes, piece: int, input_rate: int) -> bytes:
    encoder = Encoder(fmt, input_rate)
    out = [encoder.encode(pcm[i : i + piece]) for i in range(0, len(pcm), piece)]
    out.append(encoder.finish())
    return b"".join(out)


def decode_split(fmt: OutputFormat, data: bytes, cuts: list[int]) -> bytes:
    decoder = Decoder(fmt)
    bounds = [0, *sorted(set(cuts)), len(data)]
    out = [decoder.decode(data[a:b]) for a, b in itertools.pairwise(bounds)]
    out.append(decoder.finish())
    return b"".join(out)


def dominant_frequency(pcm: bytes, rate: int) -> float:
    x = samples(pcm).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


# --- lookup ---------------------------------------------------------------------------------


def test_every_documented_format_is_supported() -> None:
    expected = {
        *(f"pcm_{r}" for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000)),
        "ulaw_8000",
        "alaw_8000",
        "mp3_22050_32",
        *(f"mp3_44100_{k}" for k in (32, 64, 96, 128, 192)),
    }
    assert set(SUPPORTED_FORMATS) == expected
    assert parse_output_format("mp3_44100_64") == OutputFormat("mp3_44100_64", "mp3", 44100, 64)
    assert parse_output_format("pcm_16000").codec == "pcm"


def test_mp3_without_bitrate_means_128_kbps() -> None:
    assert parse_output_format("mp3_44100").name == "mp3_44100_128"


def test_unsupported_format_message_lists_every_supported_name() -> None:
    with pytest.raises(ValueError) as info:
        parse_output_format("opus_48000_64")
    message = str(info.value)
    assert "opus_48000_64" in message
    for name in SUPPORTED_FORMATS:
        assert name in message


def test_duration_helper() -> None:
    assert audio_duration_seconds(parse_output_format("pcm_16000"), 32000) == pytest.approx(1.0)
    assert audio_duration_seconds(parse_output_format("ulaw_8000"), 8000) == pytest.approx(1.0)
    assert audio_duration_seconds(parse_output_format("mp3_44100_128"), 16000) == pytest.approx(1.0)


# --- PCM ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in SUPPORTED_FORMATS if n.startswith("pcm_")])
def test_pcm_resampling_keeps_duration_and_pitch(name: str) -> None:
    fmt = parse_output_format(name)
    pcm = encode_in_pieces(fmt, tone(ENGINE_RATE, 1.0), piece=1001, input_rate=ENGINE_RATE)
    assert len(pcm) % 2 == 0
    n = len(samples(pcm))
    assert abs(n - fmt.sample_rate) <= 0.01 * fmt.sample_rate
    assert dominant_frequency(pcm, fmt.sample_rate) == pytest.approx(440.0, abs=3.0)


def test_pcm_same_rate_is_bit_exact_even_with_odd_splits() -> None:
    fmt = parse_output_format("pcm_22050")
    original = tone(ENGINE_RATE, 0.25)
    encoded = encode_in_pieces(fmt, original, piece=333, input_rate=ENGINE_RATE)  # odd pieces
    assert encoded == original
    assert decode_split(fmt, encoded, cuts=[1, 2, 7, 1000, 1001]) == original


def test_pcm_decoder_carries_an_odd_byte() -> None:
    decoder = Decoder(parse_output_format("pcm_16000"))
    assert decoder.decode(b"\x01") == b""
    assert decoder.decode(b"\x02\x03") == b"\x01\x02"
    assert decoder.decode(b"\x04") == b"\x03\x04"


def test_encoder_refuses_use_after_finish() -> None:
    encoder = Encoder(parse_output_format("pcm_16000"), 16000)
    encoder.finish()
    with pytest.raises(RuntimeError, match="new Encoder"):
        encoder.encode(b"\x00\x00")


# --- G.711 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ulaw_8000", "alaw_8000"])
def test_g711_round_trip_error_is_small(name: str) -> None:
    fmt = parse_output_format(name)
    original = tone(8000, 0.5, amplitude=12000)
    encoded = encode_in_pieces(fmt, original, piece=400, input_rate=8000)
    assert len(encoded) == len(original) // 2  # one byte per sample
    decoded = decode_split(fmt, encoded, cuts=[3, 99])
    x = samples(original).astype(np.float64)
    y = samples(decoded).astype(np.float64)
    snr_db = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
    assert snr_db > 30  # G.711 gives ~38 dB on a loud tone


# --- MP3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mp3_22050_32", "mp3_44100_128"])
def test_mp3_round_trip_has_plausible_length_and_the_same_tone(name: str) -> None:
    fmt = parse_output_format(name)
    encoded = encode_in_pieces(fmt, tone(ENGINE_RATE, 1.0), piece=2205, input_rate=ENGINE_RATE)
    assert audio_duration_seconds(fmt, len(encoded)) == pytest.approx(1.0, rel=0.15)
    decoded = decode_split(fmt, encoded, cuts=[])
    n = len(samples(decoded))
    # The encoder adds its delay and pads the last frame: a little longer, never shorter.
    assert fmt.sample_rate * 0.99 <= n <= fmt.sample_rate * 1.1
    rms = float(np.sqrt(np.mean(samples(decoded).astype(np.float64) ** 2)))
    assert rms > 8000 / np.sqrt(2) * 0.7
    assert dominant_frequency(decoded, fmt.sample_rate) == pytest.approx(440.0, abs=5.0)


def test_mp3_encoder_streams_frames_before_finish() -> None:
    fmt = parse_output_format("mp3_44100_128")
    encoder = Encoder(fmt, ENGINE_RATE)
    pcm = tone(ENGINE_RATE, 1.0)
    streamed = b"".join(encoder.encode(pcm[i : i + 4410]) for i in range(0, len(pcm), 4410))
    tail = encoder.finish()
    assert len(streamed) > 4 * len(tail)  # most of the audio left before the flush


_MP3_STREAM = encode_in_pieces(
    parse_output_format("mp3_44100_64"), tone(ENGINE_RATE, 0.6), piece=1500, input_rate=ENGINE_RATE
)
_MP3_WHOLE = decode_split(parse_output_format("mp3_44100_64"), _MP3_STREAM, cuts=[])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(_MP3_STREAM) - 1), max_size=12))
def test_mp3_decode_across_arbitrary_splits_matches_whole_decode(cuts: list[int]) -> None:
    chunked = decode_split(parse_output_format("mp3_44100_64"), _MP3_STREAM, cuts)
    frame = 1152  # samples per MPEG-1 layer III frame
    assert abs(len(samples(chunked)) - len(samples(_MP3_WHOLE))) <= frame
