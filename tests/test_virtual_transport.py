"""The virtual transport: scripted mic, recorded speaker, one sample clock."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from agent.audio import AudioFrame, float_to_pcm, read_wav, write_wav
from agent.interfaces import AudioOutput
from agent.vad import SpeechDetector, VadConfig, VoiceOnset
from plugins.virtual import VirtualTransport

pytestmark = pytest.mark.anyio

RATE = 16000
BLOCK = 320  # 20 ms


def tone(seconds: float, freq: float = 440.0, rate: int = RATE, amplitude: float = 0.5) -> bytes:
    """A cosine: its first and (for whole periods) last samples are loud, so edges are exact."""
    t = np.arange(round(seconds * rate)) / rate
    return float_to_pcm(amplitude * np.cos(2 * np.pi * freq * t) + 0.01)


def voiced(seconds: float, rate: int = RATE) -> bytes:
    """Vowel-like harmonics (webrtcvad calls them speech)."""
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * 120 * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
    signal = sum(np.cos(k * phase) / k for k in range(1, 25))
    return float_to_pcm(0.3 * signal / np.abs(signal).max())


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16)


def first_sound(pcm: bytes, start: int = 0) -> int | None:
    loud = np.nonzero(samples(pcm)[start:])[0]
    return None if len(loud) == 0 else start + int(loud[0])


def last_sound(pcm: bytes) -> int | None:
    loud = np.nonzero(samples(pcm))[0]
    return None if len(loud) == 0 else int(loud[-1])


async def test_mic_delivers_the_script_block_by_block_at_exact_samples(tmp_path: Path) -> None:
    base = tone(0.5, rate=22050)  # a WAV at another rate: resampled to the transport's
    write_wav(tmp_path / "user.wav", base, 22050)
    transport = VirtualTransport(mic=tmp_path / "user.wav", realtime=False, duration_s=2.0)
    injected = np.full(1000, 1234, dtype=np.int16).tobytes()
    start = transport.inject(injected, at_seconds=1.25)
    assert start == 20000
    frames: list[AudioFrame] = []
    async with transport.running():
        with anyio.fail_after(30):
            async for frame in transport.mic_frames():
                frames.append(frame)
    assert len(frames) == 100  # 2 s of 20 ms blocks, then the mic ends
    assert all(f.samples == BLOCK and f.sample_rate == RATE for f in frames)
    mic = b"".join(f.pcm for f in frames)
    assert mic == transport.recorded_input()
    assert transport.clock_samples == 32000
    assert last_sound(mic[: 2 * 16000]) is not None  # the WAV plays first ...
    assert first_sound(mic, 8000) == 20000  # ... and the injection begins at sample 20000
    assert set(samples(mic)[20000:21000].tolist()) == {1234}
    assert not samples(mic)[21000:].any()


async def test_overlapping_injections_are_mixed_and_clipped() -> None:
    transport = VirtualTransport(realtime=False, duration_s=0.1)
    transport.inject(np.full(800, 20000, dtype=np.int16).tobytes(), at_seconds=0.0)
    transport.inject(np.full(800, 20000, dtype=np.int16).tobytes(), at_seconds=0.025)
    async with transport.running():
        async for _ in transport.mic_frames():
            pass
    mic = samples(transport.recorded_input())
    assert set(mic[:400].tolist()) == {20000}
    assert set(mic[400:800].tolist()) == {32767}
    assert set(mic[800:1200].tolist()) == {20000}


async def test_inject_into_the_past_is_rejected() -> None:
    transport = VirtualTransport(realtime=False, duration_s=0.2)
    async with transport.running():
        frames = transport.mic_frames()
        for _ in range(5):
            await frames.__anext__()
        with pytest.raises(ValueError, match=r"already delivered audio up to 0\.100 s"):
            transport.inject(bytes(100), at_seconds=0.05)
        # "now" is fine: it lands on the next block not yet delivered.
        assert transport.inject(b"\x10\x00" * 10) >= 1600


async def test_speaker_records_what_played_on_the_shared_clock(tmp_path: Path) -> None:
    transport = VirtualTransport(realtime=False, duration_s=1.0, max_output_seconds=2.0)
    output: AudioOutput = transport.output
    async with transport.running():
        frames = transport.mic_frames()
        for _ in range(10):  # 200 ms of silence first
            await frames.__anext__()
        queued_at = transport.clock_samples
        await output.play(tone(0.3))
        async for _ in frames:
            pass
    out = transport.recorded_output()
    # Block n of output is pulled at clock n*BLOCK; the clock was at queued_at, whose block
    # had already been pulled, so the tone starts with the next block.
    assert first_sound(out) == queued_at + BLOCK
    assert last_sound(out) == queued_at + BLOCK + 4800 - 1
    assert output.samples_played == 4800
    transport.save_output_wav(tmp_path / "out.wav")
    assert read_wav(tmp_path / "out.wav").pcm == out


async def test_clear_silences_the_output_from_the_next_block() -> None:
    transport = VirtualTransport(realtime=False, duration_s=1.0, max_output_seconds=2.0)
    async with transport.running():
        await transport.output.play(tone(1.0))
        frames = transport.mic_frames()
        for _ in range(20):
            await frames.__anext__()
        cleared_at = transport.clock_samples
        dropped = transport.output.clear()
        async for _ in frames:
            pass
    out = transport.recorded_output()
    last = last_sound(out)
    assert last is not None and last < cleared_at + BLOCK
    assert first_sound(out, cleared_at + BLOCK) is None
    assert dropped == 16000 - (cleared_at + BLOCK)
    assert transport.output.samples_played == cleared_at + BLOCK


async def test_user_speech_at_sample_n_silences_output_from_sample_m() -> None:
    """The shape of a barge-in test: VAD on the mic, clear the speaker on voice onset."""
    user_at = 1.0
    transport = VirtualTransport(realtime=False, duration_s=3.0, max_output_seconds=5.0)
    transport.inject(voiced(0.8), at_seconds=user_at)
    detector = SpeechDetector(VadConfig(sample_rate=RATE))
    onsets: list[float] = []
    async with transport.running():
        await transport.output.play(tone(2.5, freq=300.0))
        async for frame in transport.mic_frames():
            for event in detector.feed(frame):
                if isinstance(event, VoiceOnset) and not onsets:
                    onsets.append(event.t)
                    transport.output.clear()
    user_sample = round(user_at * RATE)
    assert first_sound(transport.recorded_input()) == user_sample
    assert onsets and abs(onsets[0] - user_at) <= 0.02
    out = transport.recorded_output()
    silent_from = (last_sound(out) or 0) + 1
    # The onset is in mic block 50 (samples 16000..16319); in lockstep a reaction to mic
    # block k is heard from output block k + 2.
    assert silent_from == user_sample + 2 * BLOCK


async def test_realtime_clock_is_paced_and_keeps_every_sample() -> None:
    transport = VirtualTransport(realtime=True, duration_s=0.5, mic_queue_blocks=100)
    began = anyio.current_time()
    count = 0
    async with transport.running():
        with anyio.fail_after(10):
            async for frame in transport.mic_frames():
                count += frame.samples
    elapsed = anyio.current_time() - began
    assert count == 8000
    assert elapsed >= 0.45  # paced by the clock, not as fast as possible


async def test_realtime_playback_with_backpressure_has_no_gaps() -> None:
    transport = VirtualTransport(realtime=True, duration_s=1.6, max_output_seconds=0.2)
    speech = tone(1.0, freq=250.0)
    async with transport.running():
        with anyio.fail_after(20):
            for pos in range(0, len(speech), 1600):  # 50 ms chunks into a 200 ms buffer
                await transport.output.play(speech[pos : pos + 1600])
            await transport.output.drain()
            await transport.wait_until(1.6)
    out = transport.recorded_output()
    begin = first_sound(out)
    assert begin is not None
    assert out[begin * 2 : begin * 2 + len(speech)] == speech
    assert transport.output.samples_played == len(speech) // 2


async def test_realtime_drops_blocks_nobody_reads_but_the_clock_keeps_time() -> None:
    transport = VirtualTransport(realtime=True, mic_queue_blocks=3)
    async with transport.running():
        with anyio.fail_after(10):
            await transport.wait_until(0.3)
    assert transport.mic_overruns >= 5
    assert transport.clock_samples >= 0.3 * RATE
    assert len(transport.recorded_input()) == transport.clock_samples * 2


async def test_wait_until_returns_when_the_clock_stops() -> None:
    transport = VirtualTransport(realtime=False, duration_s=0.2)
    async with transport.running():
        async with anyio.create_task_group() as tg:
            tg.start_soon(transport.wait_until, 99.0)
            async for _ in transport.mic_frames():
                pass
    assert transport.clock_seconds == pytest.approx(0.2)


async def test_running_twice_is_an_error() -> None:
    transport = VirtualTransport(realtime=False, duration_s=0.02)
    async with transport.running():
        pass
    with pytest.raises(RuntimeError, match="runs once"):
        async with transport.running():
            pass


def test_block_must_be_whole_samples() -> None:
    with pytest.raises(ValueError, match="whole number of samples"):
        VirtualTransport(sample_rate=11025, block_ms=20)
