"""Speech to text started when the voice fades (`agent.early_stt`), in a real conversation:
virtual transport (lockstep), real VAD and turn-taking, the real local TTS server with a tone
engine; a recording STT (a fake that hears the length of what it is given, and can fail or be
slow on demand), a scripted turn detector and a scripted LLM (fakes)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from agent import Agent, AgentOptions, EndOfTurn
from agent.conversation import TurnRecord
from agent.errors import STTError
from agent.interfaces import Transcript
from agent.voice_agent import Conversation
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.virtual import VirtualTransport
from tests.fakes.engines import FakeToneEngine
from tests.signals import synthetic_speech
from tests.test_end_of_turn import AlwaysComplete, Mute

pytestmark = pytest.mark.anyio
RATE = 16000


class HearsLength:
    """A recording STT (fake): "heard 1.42 s" for 1.42 s of audio. ``fail_first`` fails the
    first call with an `STTError`; ``delay`` makes every call take that long."""

    def __init__(self, *, fail_first: bool = False, delay: float = 0.0) -> None:
        self.calls: list[float] = []  # audio seconds of each call
        self.fail_first = fail_first
        self.delay = delay

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        seconds = len(pcm) / 2 / sample_rate
        self.calls.append(seconds)
        if self.delay:
            await anyio.sleep(self.delay)
        else:
            await anyio.lowlevel.checkpoint()
        if self.fail_first and len(self.calls) == 1:
            raise STTError("scripted failure of the first call")
        return Transcript(f"heard {seconds:.2f} s", audio_seconds=seconds)


def speech_with_gap(gap_s: float) -> bytes:
    """Two stretches of speech-like audio with ``gap_s`` of digital silence between them."""
    first = synthetic_speech(0.7, trailing_silence=0.0)
    second = synthetic_speech(0.7, seed=2, trailing_silence=0.0)
    return first + bytes(round(gap_s * RATE) * 2) + second


async def converse(
    stt: HearsLength, audio: bytes, *, early: bool = True, realtime: bool = False
) -> tuple[TurnRecord, Conversation]:
    """``audio`` said once, 2 s of silence after; the one turn it makes. (In lockstep the
    silence runs out before the answer is played: the tests here look at the words only.)"""
    seconds = 0.3 + len(audio) / 2 / RATE + 2
    transport = VirtualTransport(RATE, realtime=realtime, duration_s=seconds)
    transport.inject(audio, at_seconds=0.3)
    async with (
        LocalTTSServer(FakeToneEngine()) as server,
        ElevenLabsTTS(TTSConfig(output_format=f"pcm_{RATE}"), base_url=server.url) as tts,
    ):
        options = AgentOptions(
            end_of_turn=EndOfTurn(pause_ms=100, unsure_silence_ms=1000), transcribe_early=early
        )
        agent = Agent(stt=stt, llm=Mute(), tts=tts, options=options, turn_detector=AlwaysComplete())
        with anyio.fail_after(20):
            async with transport.running(), agent.conversation(transport) as conversation:
                await conversation.finished.wait()
    (record,) = conversation.log.turns
    return record, conversation


async def test_the_words_go_to_the_stt_when_the_voice_fades_and_the_pause_takes_them() -> None:
    stt = HearsLength()
    record, conversation = await converse(stt, synthetic_speech(1.2, trailing_silence=0.0))
    assert len(stt.calls) == 1  # one call, started early, taken by the turn
    assert record.transcript == f"heard {stt.calls[0]:.2f} s"
    head_start = record.timeline.durations_ms["stt_head_start"]
    assert head_start >= 40  # the pause came at least two frames after the fade
    early = conversation.early_stt
    assert early is not None and (early.started, early.used) == (1, 1)


async def test_voice_after_a_fade_throws_the_early_words_away() -> None:
    stt = HearsLength()
    record, conversation = await converse(stt, speech_with_gap(0.08))
    assert len(stt.calls) == 2  # the gap faded too: its words were never used
    assert stt.calls[1] > stt.calls[0] + 0.6  # the turn's words are the whole utterance
    assert record.transcript == f"heard {stt.calls[1]:.2f} s"
    early = conversation.early_stt
    assert early is not None and (early.started, early.used) == (2, 1)


async def test_a_slow_early_call_is_waited_for_not_repeated() -> None:
    stt = HearsLength(delay=0.4)  # still running when the pause comes (in real time)
    record, _ = await converse(stt, synthetic_speech(1.2, trailing_silence=0.0), realtime=True)
    assert len(stt.calls) == 1 and record.transcript == f"heard {stt.calls[0]:.2f} s"


async def test_a_failed_early_call_is_retried_by_the_turn() -> None:
    stt = HearsLength(fail_first=True)
    record, conversation = await converse(stt, synthetic_speech(1.2, trailing_silence=0.0))
    assert len(stt.calls) == 2 and not isinstance(record.cause, STTError)
    assert record.transcript == f"heard {stt.calls[1]:.2f} s"
    assert "stt_head_start" not in record.timeline.durations_ms
    assert conversation.early_stt is not None and conversation.early_stt.used == 0


async def test_with_transcribe_early_off_the_stt_hears_the_pause_only() -> None:
    stt = HearsLength()
    record, conversation = await converse(
        stt, synthetic_speech(1.2, trailing_silence=0.0), early=False
    )
    assert len(stt.calls) == 1 and conversation.early_stt is None
    assert "stt_head_start" not in record.timeline.durations_ms
    # The pause's audio: the fade's would be two frames after the speech, this one six.
    assert stt.calls[0] == pytest.approx(0.2 + 1.2 + 0.12, abs=0.03)
