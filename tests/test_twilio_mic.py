"""`voxloop call --mic`: a live call from this machine's microphone and speaker.

The sound card is `FakeSoundDevice` (tests/fakes/sounddevice.py: real PortAudio-like threads,
here at real speed), its microphone scripted block by block (`ScriptedMic`). The far end is a
real phone server on loopback: `ToneBot` (a fake bot of tones) for the cheap tests, and the
voice agent (`PhoneBot`: whisper, the local piper TTS server, a scripted LLM) for the one
marked `engines`. The first tests are the sans-I/O halves of the live caller.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from agent.app.phone import mic_call
from agent.audio import PlayoutBuffer, resample, ulaw_decode, ulaw_encode
from agent.errors import AudioDeviceError
from plugins.sounddevice import transport as sd_transport
from plugins.twilio import CallResult, CallScript, PhoneApp, PhoneConfig, ToneBot
from plugins.twilio.live_caller import MicFramer, SpeakerLine
from plugins.twilio.server import running_phone_server
from tests.fakes.engines import dominant_frequency
from tests.fakes.sounddevice import FakeSoundDevice, FakeStream, device

pytestmark = pytest.mark.anyio

MIC_RATE = 48000
SPEAKER_RATE = 44100  # not a multiple of 8 kHz, on purpose


def sine(seconds: float, hz: float, rate: int, level: float = 0.5) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * level * 32767).astype("<i2").tobytes()


# ---- the sans-I/O halves -----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [48000, 44100, 16000, 8000])
def test_the_microphone_goes_out_one_ulaw_frame_per_block_at_its_own_pace(rate: int) -> None:
    framer = MicFramer(rate)
    voice = sine(1.0, 300.0, rate)
    block = rate // 50 * 2
    per_block = [framer.push(voice[i : i + block]) for i in range(0, len(voice), block)]
    assert max(len(frames) for frames in per_block) == 1, "never a burst"
    started = next(i for i, frames in enumerate(per_block) if frames)
    assert started <= 3, "the resampler's pipeline fills within a few blocks"
    assert all(len(frames) == 1 for frames in per_block[started:]), "then one per block"
    frames = [f for frames in per_block for f in frames]
    assert {len(f) for f in frames} == {160}
    heard = ulaw_decode(b"".join(frames))
    assert abs(dominant_frequency(heard, 8000) - 300.0) < 10
    assert len(heard) >= len(voice) * 8000 // rate - 4 * 160, "little held back"


def sent_level(pcm: bytes, rate: int) -> float:
    """RMS of what a fresh `MicFramer` sends for `pcm` (20 ms blocks at `rate`)."""
    framer = MicFramer(rate)
    block = rate // 50 * 2
    frames = [f for i in range(0, len(pcm), block) for f in framer.push(pcm[i : i + block])]
    sent = np.frombuffer(ulaw_decode(b"".join(frames)), dtype="<i2").astype(float)
    return float(np.sqrt(np.mean(sent**2)))


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_a_whistle_above_the_phone_band_does_not_fold_into_it(rate: int) -> None:
    whistle_hz = 6500.0 if rate > 16000 else 5500.0  # would alias to 1.5 / 2.5 kHz
    voice, whistle = sine(0.5, 500.0, rate, 0.3), sine(0.5, whistle_hz, rate, 0.3)
    assert sent_level(whistle, rate) < 0.05 * sent_level(voice, rate)


def speaker_for(rate: int) -> PlayoutBuffer:
    return PlayoutBuffer(rate, max_seconds=10.0)


def play(buffer: PlayoutBuffer, seconds: float) -> bytes:
    """The device takes `seconds` of audio from the speaker's queue, in 20 ms blocks."""
    block = buffer.sample_rate // 50
    return b"".join(buffer.read(block) for _ in range(round(seconds * 50)))


@pytest.mark.parametrize("echo_on_clear", [True, False], ids=["twilio-echoes", "sim-drops"])
def test_marks_echo_when_the_speaker_has_played_their_audio_and_clear_drops_the_rest(
    echo_on_clear: bool,
) -> None:
    speaker = speaker_for(SPEAKER_RATE)
    line = SpeakerLine(SPEAKER_RATE, echo_marks_on_clear=echo_on_clear)
    answer = ulaw_encode(sine(0.4, 660.0, 8000))  # 20 frames
    for i in range(0, len(answer), 160):
        speaker._queue += line.receive_audio(answer[i : i + 160], speaker.samples_played)
        if i // 160 in (9, 19):
            line.receive_mark(f"m{i // 160}")
    # nothing played yet: no echo, however many ticks
    assert line.tick(speaker.samples_played)[1] == []
    played = play(speaker, 0.25)
    assert line.tick(speaker.samples_played)[1] == ["m9"], "the first half has played"
    played += play(speaker, 0.3)
    tails = b""
    echoes: list[str] = []
    recorded = b""
    for _ in range(4):  # the bot paused: the resampler's tail goes out, then the last mark
        tail, names, audio = line.tick(speaker.samples_played)
        tails += tail
        speaker._queue += tail
        played += play(speaker, 0.02)
        echoes += names
        recorded += audio
    assert tails, "the resampler's held-back tail was played"
    assert echoes == ["m19"]
    assert abs(dominant_frequency(played, SPEAKER_RATE) - 660.0) < 10
    # a second answer, cut by a clear after 0.1 s: the queued rest is dropped, not played
    for i in range(0, len(answer), 160):
        speaker._queue += line.receive_audio(answer[i : i + 160], speaker.samples_played)
    line.receive_mark("m-cut")
    play(speaker, 0.1)
    speaker.clear()
    dropped, names = line.clear(speaker.samples_played)
    assert 0.25 * 8000 <= dropped <= 0.32 * 8000
    assert names == (["m-cut"] if echo_on_clear else [])
    assert line.pending(speaker.samples_played) == 0 and speaker.pending_samples == 0
    assert not line.tick(speaker.samples_played)[1], "nothing more to echo"


def test_a_bot_far_ahead_of_playout_is_cut_at_the_bound() -> None:
    line = SpeakerLine(SPEAKER_RATE, max_buffer_seconds=1.0)
    flood = ulaw_encode(sine(0.02, 440.0, 8000))
    queued = sum(len(line.receive_audio(flood, 0)) for _ in range(100))  # 2 s, none played
    assert queued <= 1.0 * SPEAKER_RATE * 2
    assert line.discarded >= 0.9 * 8000


# ---- the fake sound card -----------------------------------------------------------------------


class ScriptedMic:
    """What the fake microphone hears, block by block (called from its audio thread): speech
    queued with `say` (PCM16 at its rate), else silence."""

    def __init__(self, rate: int = MIC_RATE) -> None:
        self.block = rate // 50 * 2
        self._lock = threading.Lock()
        self._queue = bytearray()

    def say(self, pcm: bytes) -> None:
        with self._lock:
            self._queue += pcm

    @property
    def speaking(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def __call__(self, block_index: int) -> bytes:
        with self._lock:
            chunk = bytes(self._queue[: self.block])
            del self._queue[: self.block]
        return chunk + bytes(self.block - len(chunk))


@pytest.fixture
def sound_card(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeSoundDevice, ScriptedMic]:
    speakers = dict(device("Fake Speakers", 0, 2), default_samplerate=float(SPEAKER_RATE))
    fake = FakeSoundDevice([device("Fake Mic", 1, 0), speakers], default=(0, 1), speed=1.0)
    mic = ScriptedMic()
    fake.input_source = mic
    monkeypatch.setattr(sd_transport, "load_sounddevice", lambda: fake)
    return fake, mic


class SpeakerWatch:
    """Each time the speaker is cleared: how much it dropped, what stayed queued, and which
    block the fake device was at."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fake: FakeSoundDevice) -> None:
        self.clears: list[tuple[int, int, int]] = []
        real_clear = sd_transport.SoundDeviceOutput.clear

        def clear(output: sd_transport.SoundDeviceOutput) -> int:
            dropped = real_clear(output)
            self.clears.append((dropped, output._playout.pending_samples, self.stream.calls))
            return dropped

        monkeypatch.setattr(sd_transport.SoundDeviceOutput, "clear", clear)
        self.fake = fake

    @property
    def stream(self) -> FakeStream:
        return next(s for s in self.fake.streams if s.kind == "output")

    def played(self) -> np.ndarray[Any, np.dtype[np.int16]]:
        return np.frombuffer(bytes(self.stream.played), dtype="<i2")

    def block(self, i: int) -> np.ndarray[Any, np.dtype[np.int16]]:
        n = SPEAKER_RATE // 50
        return self.played()[i * n : (i + 1) * n]


@asynccontextmanager
async def live(
    url: str, result: CallResult, script: CallScript | None = None
) -> AsyncIterator[anyio.CancelScope]:
    """`voxloop call --mic`'s call running in the background; cancelling the scope yielded
    is Ctrl-C."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: mic_call(url, script or CallScript(max_seconds=60), result, say=lambda _: None)
        )
        yield tg.cancel_scope


async def until(condition: Callable[[], bool], limit: float, what: str) -> None:
    with anyio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - watching a live call's record
            await anyio.sleep(0.02)
    assert condition(), what


async def test_mic_call_hears_the_bot_speaks_over_it_and_a_clear_silences_the_speaker(
    sound_card: tuple[FakeSoundDevice, ScriptedMic], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, mic = sound_card
    watch = SpeakerWatch(monkeypatch, fake)
    bot = ToneBot(greeting_s=3.0, answer_s=0.4, end_of_turn_s=0.2)
    app = PhoneApp(bot, PhoneConfig())
    result = CallResult()
    async with running_phone_server(app) as url, live(url, result) as call:
        await until(lambda: result.media_in >= 40, 10, "the greeting plays")
        mic.say(sine(0.4, 300.0, MIC_RATE))  # talk over it
        await until(lambda: result.clears == 1, 5, "the bot cleared the line")
        cut_at = result.media_in
        await until(lambda: result.media_in >= cut_at + 20, 5, "it answered (0.4 s)")
        await anyio.sleep(0.6)  # the answer plays out and its last mark is echoed
        call.cancel()  # Ctrl-C
    with anyio.fail_after(5):
        while not app.finished:  # noqa: ASYNC110 - the server's side winds down
            await anyio.sleep(0.02)
    [log] = bot.calls
    assert log.barge_ins == 1 and result.barge_in_reactions
    assert result.barge_in_reactions[0] < 0.3, "speech onset -> clear"
    # the speaker played the greeting...
    (dropped, left, at_block), *_ = watch.clears
    before = watch.played()[: at_block * (SPEAKER_RATE // 50)]
    assert abs(dominant_frequency(before[-SPEAKER_RATE // 2 :].tobytes(), SPEAKER_RATE) - 440) < 10
    # ...the clear dropped what was queued, at once, and nothing of it played afterwards
    assert dropped > 0.02 * SPEAKER_RATE and left == 0
    assert result.dropped_at_clear[0] > 0.04 * 8000, "queued and held in the resampler"
    for i in range(at_block + 2, at_block + 15):  # the caller still talks: the line is silent
        assert not watch.block(i).any(), f"speaker block {i - at_block} after the clear"
    # marks were echoed only for what the speaker had played: the bot's count never exceeds it
    assert log.heard_at_barge_in[0] <= result.played_at_clear[0]
    assert result.played_at_clear[0] - log.heard_at_barge_in[0] < 0.15 * 8000
    assert log.heard_per_answer == [3200], "the whole answer played, its last mark echoed"
    # Ctrl-C hung up as a caller does
    assert result.hung_up_by == "caller"
    assert app.finished[-1].end_reason == "caller hung up (stop)"
    assert result.response_latencies and result.response_latencies[0] < 0.6
    bot_track = np.frombuffer(result.bot_pcm, dtype="<i2")
    caller_track = np.frombuffer(result.caller_pcm, dtype="<i2")
    assert abs(len(bot_track) - len(caller_track)) < 0.1 * 8000, "one clock for both tracks"
    assert abs(dominant_frequency(result.caller_pcm, 8000) - 300) < 10


async def test_no_sound_device_is_a_clear_error_before_dialing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeSoundDevice([device("Speakers", 0, 2)], default=(-1, 0))
    monkeypatch.setattr(sd_transport, "load_sounddevice", lambda: fake)
    result = CallResult()
    with pytest.raises(AudioDeviceError, match=r"no audio input device.*--say question.wav"):
        await mic_call("http://127.0.0.1:9", CallScript(), result, say=lambda _: None)
    assert not fake.streams and not result.caller_pcm


def test_mic_and_say_are_refused_together(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.app.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["call", "http://127.0.0.1:9", "--mic", "--say", "question.wav"])
    assert stop.value.code == 2
    assert "--mic and --say do not go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["call", "http://127.0.0.1:9", "--mic", "--interrupt-after", "1"])
    assert "speak over the bot" in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[1]


async def test_ctrl_c_hangs_up_with_stop_and_writes_the_recording(tmp_path: Path) -> None:
    """`voxloop call --mic` as a process (the fake sound card inside it): SIGINT sends `stop`,
    writes call.wav and exits 130."""
    bot = ToneBot(greeting_s=1.0)
    app = PhoneApp(bot, PhoneConfig())
    wav = tmp_path / "call.wav"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with running_phone_server(app) as url:
        command = [sys.executable, "-m", "tests.fakes.sounddevice_cli", "call", url, "--mic"]
        async with await anyio.open_process([*command, "--out", str(wav)], env=env) as proc:
            try:
                with anyio.fail_after(30):
                    while not app.live:  # noqa: ASYNC110 - waiting for the call to be up
                        await anyio.sleep(0.05)
                await anyio.sleep(1.5)  # the greeting plays
                proc.send_signal(signal.SIGINT)
                with anyio.fail_after(15):
                    code = await proc.wait()
                assert proc.stdout is not None
                out = b""
                with anyio.move_on_after(2):
                    async for chunk in proc.stdout:
                        out += chunk
            finally:
                if proc.returncode is None:
                    proc.kill()
        with anyio.fail_after(5):
            while not app.finished:  # noqa: ASYNC110 - the server's side winds down
                await anyio.sleep(0.02)
    assert code == 130, out.decode()
    assert app.finished[-1].end_reason == "caller hung up (stop)"
    text = out.decode()
    assert "hung up" in text and "recording (you left, bot right)" in text
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert len(frames) > 1.0 * 8000
    assert abs(dominant_frequency(frames[:, 1].tobytes(), 8000) - 440) < 10, "the greeting"
    assert not frames[:, 0].any(), "the fake microphone heard silence"


# ---- the voice agent on the other end -----------------------------------------------------------


def voice_at(piper_engine: Any, text: str, rate: int) -> bytes:
    pcm = b"".join(chunk.pcm for chunk in piper_engine.synthesize(text))
    return resample(pcm, piper_engine.sample_rate, rate)


@pytest.mark.engines
async def test_talking_from_the_mic_to_the_voice_agent(
    sound_card: tuple[FakeSoundDevice, ScriptedMic],
    monkeypatch: pytest.MonkeyPatch,
    piper_engine: Any,
    whisper_stt: Any,
    tmp_path: Path,
) -> None:
    """Speech (piper) into the fake microphone; PhoneBot answers on the fake speaker; speaking
    over its story clears the speaker at once, and what it counts as heard is what played."""
    from tests.fakes.scripted_llm import tokens
    from tests.test_phone import STORY, paced, phone_bot

    fake, mic = sound_card
    watch = SpeakerWatch(monkeypatch, fake)
    ask = voice_at(piper_engine, "Tell me a story please.", MIC_RATE)
    stop = voice_at(piper_engine, "Stop, thank you.", MIC_RATE)
    result = CallResult()
    replies = [paced(STORY), tokens("Okay.")]
    async with (
        phone_bot(piper_engine, whisper_stt, replies, tmp_path, greeting=None) as (bot, url),
        live(url, result) as call,
    ):
        await anyio.sleep(0.5)
        mic.say(ask)
        await until(lambda: result.media_in >= 75, 30, "the story plays for 1.5 s")
        mic.say(stop)
        await until(lambda: result.clears >= 1, 10, "speaking over it cleared the line")
        cut_at = result.media_in
        await until(lambda: result.media_in > cut_at + 10, 30, "it answered the interruption")
        await until_quiet(result, 1.0, 20)  # "Okay." has played
        call.cancel()  # Ctrl-C
    (conversation,) = bot.finished
    story, okay = conversation.log.turns
    assert "story" in story.transcript.lower()
    assert story.interrupted and okay.heard_text == "Okay."
    heard = story.heard_text
    assert heard and STORY.startswith(heard) and len(heard) < len(STORY)
    played_s = result.played_at_clear[0] / 8000
    assert len(heard.split()) <= played_s * 4 + 2, "heard comes from what the speaker played"
    assert result.response_latencies, "time to first audio after the question"
    # the speaker played the story, the clear left it empty, and silence followed (the agent
    # paused at the first voiced frame, so the little it had sent ahead mostly played out
    # before the clear; the ToneBot test above clears a full queue)
    (_dropped, left, at_block), *_ = watch.clears
    assert left == 0
    spoken = watch.played()[: at_block * (SPEAKER_RATE // 50)].astype(float)
    assert np.sqrt(np.mean(spoken[-SPEAKER_RATE:] ** 2)) > 300, "the story was audible"
    for i in range(at_block + 2, at_block + 15):
        assert not watch.block(i).any(), f"speaker block {i - at_block} after the clear"
    assert result.hung_up_by == "caller"


async def until_quiet(result: CallResult, seconds: float, limit: float) -> None:
    """Wait until no bot frame has arrived for `seconds`."""
    with anyio.fail_after(limit):
        seen, since = result.media_in, anyio.current_time()
        while anyio.current_time() - since < seconds:
            await anyio.sleep(0.05)
            if result.media_in != seen:
                seen, since = result.media_in, anyio.current_time()
