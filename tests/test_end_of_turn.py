"""Ending the user's turn: the words-so-far rule as a table, and a real conversation (virtual
transport, lockstep) with a scripted turn detector (a fake that always says "complete") and a
scripted STT (a fake that says what the test wants heard), over real VAD and turn-taking."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

import anyio
import anyio.lowlevel
import pytest

from agent import LLM, Agent, AgentOptions, EndOfTurn, TurnGuess, tool
from agent.interfaces import ChatMessage, LLMChunk, TextDelta, ToolCall, ToolSchema, Transcript
from agent.voice_agent import Conversation, sounds_unfinished
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.virtual import VirtualTransport
from tests.fakes.engines import FakeToneEngine
from tests.signals import synthetic_speech

pytestmark = pytest.mark.anyio
RATE = 16000


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("I would like to book a table for", True),
        ("I would like to book a table for.", True),  # whisper closes fragments with a period
        ("Thank you,", True),
        ("My number is four five six and", True),
        ("Um", True),
        ("So...", True),
        ("Can you tell me how to get to?", True),  # whisper's question mark on a fragment
        ("Can you remind me to call my?", True),
        ("I'm looking for a hotel near.", True),
        ("Where are you from?", False),
        ("Is it?", False),
        ("I think it was", True),
        ("What is it for?", False),
        ("What time do you open tomorrow?", False),
        ("Four people tonight.", False),
        ("Thank you, that is all for today.", False),
        ("", False),
    ],
)
def test_a_phrase_left_hanging_is_not_the_end(text: str, unfinished: bool) -> None:
    assert sounds_unfinished(text) is unfinished


class AlwaysComplete:
    """A scripted turn detector (fake): every pause is the end of the turn."""

    def __init__(self) -> None:
        self.asked = 0

    async def predict(self, pcm: bytes, sample_rate: int) -> TurnGuess:
        self.asked += 1
        await anyio.lowlevel.checkpoint()
        return TurnGuess(True, 0.99, 0.0)


class SaysText:
    """A scripted STT (fake): hears ``text`` in whatever it is given."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        await anyio.lowlevel.checkpoint()
        return Transcript(self.text, audio_seconds=len(pcm) / 2 / sample_rate)


class Mute:
    """A scripted LLM (fake) that answers "Okay.": only the end of turn is under test."""

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        await anyio.lowlevel.checkpoint()
        yield TextDelta("Okay.")


async def converse(
    audio: bytes, heard: str, detector: AlwaysComplete, *, pause_ms: int = 200
) -> Conversation:
    """``audio`` said at 0.3 s into 4 s of the line (lockstep); the finished conversation."""
    transport = VirtualTransport(RATE, realtime=False, duration_s=4.0)
    transport.inject(audio, at_seconds=0.3)
    async with (
        LocalTTSServer(FakeToneEngine()) as server,
        ElevenLabsTTS(TTSConfig(output_format=f"pcm_{RATE}"), base_url=server.url) as tts,
    ):
        llm: LLM = Mute()
        end = EndOfTurn(pause_ms=pause_ms, unsure_silence_ms=1000)
        agent = Agent(
            stt=SaysText(heard),
            llm=llm,
            tts=tts,
            options=AgentOptions(end_of_turn=end),
            turn_detector=detector,
        )
        with anyio.fail_after(20):
            async with transport.running(), agent.conversation(transport) as conversation:
                await conversation.finished.wait()
    return conversation


async def end_of_turn_wait(heard: str) -> tuple[float, int]:
    """One utterance with 1.5 s of silence after it; the turn's end-of-turn wait (ms), and how
    often the detector was asked."""
    detector = AlwaysComplete()
    conversation = await converse(synthetic_speech(1.2, trailing_silence=0.0), heard, detector)
    (record,) = conversation.log.turns
    wait = record.latency_ms("end_of_turn_wait")
    assert wait is not None
    return wait, detector.asked


async def test_a_complete_sounding_pause_ends_the_turn_at_once() -> None:
    wait, asked = await end_of_turn_wait("What time do you open tomorrow?")
    assert asked == 1 and 200 <= wait <= 300  # the pause, and the detector at once


async def test_hanging_words_overrule_the_detector_and_the_longer_silence_decides() -> None:
    wait, asked = await end_of_turn_wait("I would like to book a table for")
    assert asked == 1 and 1000 <= wait <= 1100  # the fallback silence


async def test_a_voice_back_before_the_answer_is_ready_takes_the_decision_back() -> None:
    # "Hello!", 250 ms of quiet, then the next sentence: the detector says "complete" at the
    # pause, but the answer is not ready yet, so the voice coming back withdraws it, as at any
    # pause; the user's turn is one, with the end decided after the second sentence.
    first = synthetic_speech(0.6, trailing_silence=0.0)
    second = synthetic_speech(0.8, seed=2, trailing_silence=0.0)
    detector = AlwaysComplete()
    audio = first + bytes(RATE // 4 * 2) + second
    conversation = await converse(audio, "Hello!", detector, pause_ms=100)
    (record,) = conversation.log.turns
    assert detector.asked == 2 and conversation.withdrawn == 1
    start, end = record.at("user_speech_start"), record.at("user_speech_end")
    assert start is not None and end is not None
    assert start < 0.4 and end == pytest.approx(0.3 + 0.6 + 0.25 + 0.8, abs=0.06)


class AsksTheClock:
    """A scripted LLM (fake): a call to ``clock`` first, then "It is noon." once it has the
    result."""

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        await anyio.lowlevel.checkpoint()
        if any(m.role == "tool" for m in messages):
            yield TextDelta("It is noon.")
        else:
            yield ToolCall("call-1", "clock", "{}")


async def test_a_tool_round_after_complete_ends_the_turn_without_waiting_for_audio() -> None:
    # The answer's first need is a tool, which a tentative turn runs only once the turn stands:
    # the detector's "complete" commits it there, not after the fallback silence.
    ran: list[float] = []

    @tool
    def clock() -> str:
        """The time of day."""
        ran.append(1.0)
        return "noon"

    # In real time: in lockstep the line's clock runs ahead of the tool's thread.
    transport = VirtualTransport(RATE, realtime=True, duration_s=2.5)
    transport.inject(synthetic_speech(1.0, trailing_silence=0.0), at_seconds=0.3)
    async with (
        LocalTTSServer(FakeToneEngine()) as server,
        ElevenLabsTTS(TTSConfig(output_format=f"pcm_{RATE}"), base_url=server.url) as tts,
    ):
        agent = Agent(
            stt=SaysText("What time is it?"),
            llm=AsksTheClock(),
            tts=tts,
            tools=[clock],
            options=AgentOptions(end_of_turn=EndOfTurn(pause_ms=100, unsure_silence_ms=1000)),
            turn_detector=AlwaysComplete(),
        )
        with anyio.fail_after(20):
            async with transport.running(), agent.conversation(transport) as conversation:
                await conversation.finished.wait()
    (record,) = conversation.log.turns
    spoke, tool_call = record.at("user_speech_end"), record.at("first_tool_call")
    assert ran and spoke is not None and tool_call is not None
    assert tool_call - spoke < 0.6  # the fallback silence would be 1 s
