"""Barge-in on scripted audio timelines, in real time, over real sockets: the whole loop, end
to end. The rules themselves (pause, resume, cancel, queue, hang-up) are table tests in
tests/test_turntaking.py; these few check that the product carries them out.

The microphone is the virtual transport: the user's voice (piper speech) is injected at known
samples, and everything the speaker plays is recorded on the same sample clock. TTS is the
real local server, STT the real whisper model; the LLM is `ScriptedChatServer`, a fake that
scripts when each token arrives so the barge-in lands where the test needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np
import pytest

from agent import Agent, AgentOptions, BargeInRules, ConversationLog, EchoConfig, VadConfig
from agent.voice_agent import Conversation
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from plugins.virtual.transport import VirtualTransport
from tests.fakes.scripted_llm import ScriptedChatServer, StreamReply, Token, tokens

pytestmark = pytest.mark.anyio

RATE = 16000
LONG_ANSWER = (
    "The moon is the only natural satellite of the Earth. It is about a quarter of the size of "
    "our planet and it moves around us once every twenty seven days. Its gravity pulls on the "
    "oceans and makes the tides rise and fall twice a day. People first walked on it in the "
    "summer of nineteen sixty nine, and they brought back rocks that we still study today."
)


def word_tokens(text: str, delay: float = 0.02) -> StreamReply:
    words = text.split(" ")
    return tokens(*[w if i == 0 else " " + w for i, w in enumerate(words)], delay=delay)


async def converse(
    piper_engine: Any,
    whisper_stt: Any,
    replies: Sequence[Any],
    script: Sequence[tuple[float, bytes]],
    seconds: float,
    *,
    echo_gain: float = 0.0,
    barge_in: BargeInRules | None = None,
    echo: EchoConfig | None = None,
) -> tuple[ConversationLog, VirtualTransport, Conversation]:
    transport = VirtualTransport(
        RATE, block_ms=20, realtime=True, duration_s=seconds, echo_gain=echo_gain
    )
    for at, pcm in script:
        transport.inject(pcm, at_seconds=at)
    async with ScriptedChatServer(list(replies)) as fake, LocalTTSServer(piper_engine) as tts_srv:
        llm = OpenAILLM("scripted", base_url=fake.base_url)
        config = TTSConfig(output_format=f"pcm_{RATE}")
        async with llm, ElevenLabsTTS(config, base_url=tts_srv.url) as tts:
            agent = Agent(
                stt=whisper_stt,
                llm=llm,
                tts=tts,
                options=AgentOptions(
                    vad=VadConfig(min_silence_ms=400),
                    barge_in=barge_in or BargeInRules(),
                    echo=echo or EchoConfig(),
                ),
            )
            with anyio.fail_after(seconds + 30):
                async with transport.running(), agent.conversation(transport) as conversation:
                    await conversation.finished.wait()
    return conversation.log, transport, conversation


def samples(pcm: bytes) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.frombuffer(pcm, dtype="<i2")


async def test_user_speech_stops_playback_and_history_holds_heard_words(
    piper_engine: Any, whisper_stt: Any, speak16k: Any
) -> None:
    question = speak16k("Please tell me all about the moon.")
    stop = speak16k("Wait, tell me about the sun instead.")
    interrupt_at = 5.0
    log, transport, agent = await converse(
        piper_engine,
        whisper_stt,
        [word_tokens(LONG_ANSWER), tokens("The sun ", "is a star.")],
        [(0.5, question), (interrupt_at, stop)],
        seconds=14,
    )
    first, second = log.turns[:2]
    onset, played, silent = (
        first.at(m) for m in ("barge_in_onset", "first_audio_played", "output_silent")
    )
    assert "moon" in first.transcript.lower()
    assert first.interrupted and onset is not None and silent is not None
    assert played is not None and played < interrupt_at, "the agent must be speaking at the cut"
    # onset found near the injected speech; output silent soon after
    assert abs(onset - interrupt_at) < 0.25
    assert silent - interrupt_at < 0.3
    out = samples(transport.recorded_output())
    silent_from = round(silent * RATE)
    next_audio = second.at("first_audio_played")
    assert next_audio is not None and next_audio > silent
    gap = out[silent_from : round(next_audio * RATE)]
    assert gap.size > 0 and not gap.any(), "a sample of the cancelled answer played after the cut"
    # history: exactly the heard words, marked interrupted
    assistant = [m for m in agent.history if m.role == "assistant"]
    assert assistant[0].interrupted
    assert assistant[0].content == first.heard_text
    heard = first.heard_text.split()
    assert 3 <= len(heard) < len(LONG_ANSWER.split())
    assert LONG_ANSWER.startswith(first.heard_text)
    # the heard words fit in the audio actually played before the cut (15 words/s is plenty)
    assert len(heard) <= (silent - played) * 4 + 2
    assert "sun" in second.transcript.lower() and second.heard_text == "The sun is a star."
    assert agent.floor.barge_ins == 1


async def test_barge_in_before_first_audio_byte(
    piper_engine: Any, whisper_stt: Any, speak16k: Any
) -> None:
    slow = StreamReply((Token("This ", delay=3.0), Token("is late.")))
    log, _, agent = await converse(
        piper_engine,
        whisper_stt,
        [slow, tokens("Sure, ", "here.")],
        [(0.3, speak16k("Hello there.")), (2.3, speak16k("Actually never mind."))],
        seconds=8,
    )
    first = log.turns[0]
    assert first.interrupted and first.at("first_audio_played") is None
    assert first.heard_text == ""
    assert not any(m.content.startswith("This") for m in agent.history)
    assert log.turns[1].heard_text == "Sure, here."


async def test_echo_guard_keeps_the_agent_from_interrupting_itself(
    piper_engine: Any, whisper_stt: Any, speak16k: Any
) -> None:
    script = [(0.3, speak16k("Please tell me all about the moon."))]
    guarded, _, agent = await converse(
        piper_engine, whisper_stt, [word_tokens(LONG_ANSWER)], script, seconds=9, echo_gain=0.3
    )
    assert agent.floor.barge_ins == 0 and guarded.turns[0].at("barge_in_onset") is None
    assert guarded.turns[0].at("first_audio_played") is not None
    assert agent.guard.gated_frames > 10
    # the same echo without the guard (and without pause-on-onset, which would only make it
    # stutter): the agent's own voice trips the VAD and it interrupts itself.
    _, _, selfish = await converse(
        piper_engine,
        whisper_stt,
        [word_tokens(LONG_ANSWER)],
        script,
        seconds=9,
        echo_gain=0.3,
        echo=EchoConfig(enabled=False),
        barge_in=BargeInRules(pause_on_onset=False),
    )
    assert selfish.floor.barge_ins >= 1


async def test_user_still_interrupts_through_the_echo_guard(
    piper_engine: Any, whisper_stt: Any, speak16k: Any
) -> None:
    log, _, agent = await converse(
        piper_engine,
        whisper_stt,
        [word_tokens(LONG_ANSWER), tokens("Okay.")],
        [
            (0.3, speak16k("Please tell me all about the moon.")),
            (5.0, speak16k("Stop, that is enough.")),
        ],
        seconds=10,
        echo_gain=0.3,
    )
    assert agent.floor.barge_ins == 1 and log.turns[0].interrupted
    onset = log.turns[0].at("barge_in_onset")
    assert onset is not None and abs(onset - 5.0) < 0.3
