"""Fault 9: the audio device disappears in the middle of the agent's answer.

The device is `FakeSoundDevice` (tests/fakes/sounddevice.py, a fake, so named): its mic and
speaker streams call the real `SoundDeviceTransport` back from real threads, in real time, and
the mic carries real speech (piper's voice, heard by the real whisper model). The rest is real:
`VoiceAgent`, the session, the local TTS server (piper) and both clients; the LLM is
`ScriptedChatServer`, a fake that paces a long answer so the loss lands mid-answer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from agent import Agent, AgentOptions, Conversation, ErrorEvent, Event, StateChanged
from agent.audio import AudioFrame
from agent.errors import AudioDeviceError
from agent.vad import VadConfig
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from plugins.sounddevice import SoundDeviceTransport
from plugins.sounddevice import transport as sd_transport
from tests.fakes.scripted_llm import ScriptedChatServer, StreamReply, Token
from tests.fakes.sounddevice import FakeSoundDevice, device
from tests.faults.support import (
    WireLog,
    assert_turn_closed_on_wire,
    eventually,
    loud_records,
    tracebacks,
)

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
RATE = 16000
BLOCK_BYTES = RATE * 20 // 1000 * 2
ANSWER = (
    "The moon is the only natural satellite of the Earth. It is about a quarter of the size of "
    "our planet and it moves around us once every twenty seven days. Its gravity pulls on the "
    "oceans and makes the tides rise and fall twice a day. People first walked on it in the "
    "summer of nineteen sixty nine, and they brought back rocks that we still study today."
)
#: After the error, over QUIET_WINDOW_S: CPU seconds the event loop's thread may use (a busy
#: loop there would use about 1.5 s, 0.75 s even on half a core), and the whole process (the
#: in-process TTS server may still finish the answer's first clause, which was flushed: the
#: protocol speaks flushed text even after close_context; a runaway thread would use 1.5 s).
LOOP_CPU_LIMIT_S = 0.25
CPU_LIMIT_S = 1.0
QUIET_WINDOW_S = 1.5


def paced_answer(text: str, fast_words: int = 16, delay: float = 0.1) -> StreamReply:
    """`text` word by word: the first `fast_words` at once (speech starts soon), the rest
    `delay` apart (the LLM is still streaming when the device goes, and the TTS server never
    holds much unspoken text, so its synthesis does not blur the CPU figure after the loss)."""
    words = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
    return StreamReply(
        tuple(Token(w, 0.0 if i < fast_words else delay) for i, w in enumerate(words))
    )


def mic_source(pcm: bytes, at_seconds: float) -> Callable[[int], bytes]:
    """Block `i` of a microphone that hears `pcm` from `at_seconds`, silence otherwise."""
    signal = bytes(round(at_seconds * RATE) * 2) + pcm

    def block(index: int) -> bytes:
        chunk = signal[index * BLOCK_BYTES : (index + 1) * BLOCK_BYTES]
        return chunk + bytes(BLOCK_BYTES - len(chunk))

    return block


@dataclass(frozen=True)
class Loss:
    """How the device goes away: which of its streams, and how they stop."""

    name: str
    streams: tuple[str, ...]  # "input", "output"
    how: str  # "die": callbacks stop, PortAudio reports finished; "freeze": they just stop
    message: str  # a regex the error must match: device, cause and what to do


LOSSES = [
    Loss(
        "headset unplugged",
        ("input", "output"),
        "die",
        r"the (input|output) device 'USB Headset' stopped unexpectedly \(unplugged.*"
        r"check it and restart, or pick another device",
    ),
    Loss(
        "speaker unplugged, mic still alive",
        ("output",),
        "die",
        r"the output device 'USB Headset' stopped unexpectedly \(unplugged.*pick another device",
    ),
    Loss(
        "speaker driver hangs silently, mic still alive",
        ("output",),
        "freeze",
        r"the output device 'USB Headset' took no audio for 1 s \(unplugged.*--output",
    ),
]


@pytest.mark.parametrize("loss", LOSSES, ids=[loss.name for loss in LOSSES])
async def test_device_lost_mid_answer_ends_the_conversation_with_one_clear_error(
    loss: Loss,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    piper_engine: Any,
    whisper_stt: Any,
    speak16k: Any,
    recovery: Recorder,
) -> None:
    """Fault: 1 s into the agent's spoken answer (LLM still streaming) the audio device goes:
    the whole headset is unplugged; or only its speaker is, or the speaker's driver silently
    stops calling back, while the microphone keeps delivering.

    Pass: the conversation raises one plain `AudioDeviceError` (not an exception group) whose
    message names the device, the cause and what to do; the agent reports it once (one
    WARNING line, one ErrorEvent, no traceback); the turn is cancelled cleanly (the
    history keeps the heard words, marked interrupted; the turn's record carries the error;
    close_context for its TTS context is the last frame on the wire for it); after the error
    the agent processes no frame and, in the next 1.5 s, the process uses little CPU (no busy
    loop; until the stall is noticed the answer goes on being synthesized, as it should);
    nothing hangs (everything under `fail_after`).
    """
    caplog.set_level(logging.INFO)
    fake = FakeSoundDevice([device("USB Headset", 1, 2)], default=(0, 0), speed=1.0)
    monkeypatch.setattr(sd_transport, "load_sounddevice", lambda: fake)
    fake.input_source = mic_source(speak16k("Tell me about the moon."), 0.3)
    wire = WireLog()
    events: list[Event] = []
    frames = 0
    lost_at = cpu_at_error = loop_cpu_at_error = 0.0
    raised_at: float | None = None
    frames_at_error = 0

    async with (
        ScriptedChatServer([paced_answer(ANSWER)]) as fake_llm,
        LocalTTSServer(piper_engine) as tts_server,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url)
        config = TTSConfig(output_format=f"pcm_{RATE}")
        transport = SoundDeviceTransport(RATE, block_ms=20, stall_timeout_s=1.0)
        with anyio.fail_after(40):
            async with (
                llm,
                ElevenLabsTTS(config, base_url=tts_server.url, frame_listener=wire) as tts,
            ):
                agent = Agent(
                    stt=whisper_stt,
                    llm=llm,
                    tts=tts,
                    options=AgentOptions(vad=VadConfig(min_silence_ms=400)),
                )
                conversation: Conversation | None = None

                async def lose_the_device_mid_answer() -> None:
                    nonlocal lost_at
                    assert await eventually(
                        lambda: conversation is not None and conversation.speaking_for() >= 1.0,
                        limit=30,
                    )
                    lost_at = time.monotonic()
                    for stream in fake.streams:
                        if stream.kind in loss.streams:
                            stream.die() if loss.how == "die" else stream.freeze()

                async with transport.running():
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(lose_the_device_mid_answer)
                        with pytest.raises(AudioDeviceError) as raised:
                            async with agent.conversation(transport) as conversation:
                                handle_frame = conversation.handle_frame

                                def counting_handle_frame(frame: AudioFrame) -> None:
                                    nonlocal frames
                                    frames += 1
                                    handle_frame(frame)

                                conversation.handle_frame = counting_handle_frame  # type: ignore[method-assign]
                                async for event in conversation:
                                    events.append(event)
                        raised_at, frames_at_error = time.monotonic(), frames
                        cpu_at_error = time.process_time()
                        loop_cpu_at_error = time.thread_time()  # the event loop's thread
                    await anyio.sleep(QUIET_WINDOW_S)
                    cpu_seconds = time.process_time() - cpu_at_error
                    loop_cpu_seconds = time.thread_time() - loop_cpu_at_error
                    frames_after = frames

    error = raised.value
    assert type(error) is AudioDeviceError
    assert re.match(loss.message, str(error)), str(error)
    # reported once: one WARNING naming it, one status, no traceback
    loud = loud_records(caplog)
    assert [r.getMessage() for r in loud] == [f"audio device lost, conversation ended: {error}"]
    assert not tracebacks(caplog)
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [(e.turn, e.message) for e in errors] == [(None, str(error))], "reported once"
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states[-1] == "ended", "nothing claims to listen after the loss"
    assert conversation is not None
    # the turn was cancelled cleanly
    user, answer = conversation.history
    assert user.role == "user" and "moon" in user.content.lower()
    assert answer.role == "assistant" and answer.interrupted
    assert answer.content and ANSWER.startswith(answer.content)
    (record,) = conversation.log.turns
    assert record.interrupted and record.error == str(error)
    assert_turn_closed_on_wire(wire, "ctx-1", spoke=False)
    # no busy loop, nothing runs on
    assert raised_at is not None and raised_at - lost_at < 2.0
    assert frames_after == frames_at_error, "the agent processed frames after the error"
    assert loop_cpu_seconds < LOOP_CPU_LIMIT_S, f"event loop: {loop_cpu_seconds:.2f} s of CPU"
    assert cpu_seconds < CPU_LIMIT_S, f"{cpu_seconds:.2f} s of CPU in the 1.5 s after the error"
    print(
        f"\n{loss.name}: error after {(raised_at - lost_at) * 1000:.0f} ms, "
        f"CPU {cpu_seconds * 1000:.0f} ms in the 1.5 s after; heard {answer.content!r}"
    )
    recovery(
        f"audio device lost mid-answer: {loss.name}",
        f"one AudioDeviceError from the conversation; {cpu_seconds * 1000:.0f} ms CPU in the "
        "1.5 s after it",
        raised_at - lost_at,
    )
