"""A custom agent that reads the conversation's events: live status, what was heard, where the
time went, and a barge-in. Offline on the embedded defaults, in real time (about 30 s).

    python examples/custom_agent.py

The "user" is a scripted voice on the virtual transport (piper speaks two questions; the second
cuts the agent off). Swap the transport for `plugins.sounddevice.SoundDeviceTransport()` to talk
to it yourself.
"""

from __future__ import annotations

import anyio

from agent import (
    Agent,
    AgentOptions,
    AgentSaid,
    ErrorEvent,
    Interrupted,
    StateChanged,
    TurnFinished,
    UserSaid,
    VadConfig,
)
from plugins.elevenlabs import ElevenLabsTTS, running_server
from plugins.local import LocalLLMServer, PiperEngine, WhisperSTT
from plugins.openai import OpenAILLM
from plugins.virtual import VirtualTransport

INSTRUCTIONS = "You are a patient science teacher. Explain things simply, in short sentences."


async def main() -> None:
    engine = await anyio.to_thread.run_sync(PiperEngine.load)
    line = VirtualTransport(16000)
    line.speak(engine, "Tell me a long story about the moon.", at_seconds=0.5)
    cut_in = False
    async with (
        LocalLLMServer() as llm_server,
        running_server(engine) as tts_server,
        OpenAILLM("smollm2", base_url=llm_server.base_url, max_tokens=90) as llm,
        ElevenLabsTTS(base_url=tts_server.url) as tts,
        WhisperSTT() as stt,
        line.running(),
    ):
        options = AgentOptions(vad=VadConfig(min_silence_ms=400))
        agent = Agent(stt=stt, llm=llm, tts=tts, instructions=INSTRUCTIONS, options=options)
        async with agent.conversation(line) as conversation:
            async for event in conversation:
                if isinstance(event, StateChanged):
                    print(f"  [{event.t:6.2f} s] {event.state}")
                    if event.state == "speaking" and not cut_in:  # cut in after 2 s
                        line.speak(engine, "Sorry, how far away is it?", line.now() + 2.0)
                        cut_in = True
                elif isinstance(event, UserSaid):
                    print(f"you:   {event.text}")
                elif isinstance(event, Interrupted):
                    print(f"  (you cut in at {event.onset:.2f} s)")
                elif isinstance(event, AgentSaid):
                    cut = " [interrupted]" if event.interrupted else ""
                    print(f"agent: {event.heard}{cut}")
                elif isinstance(event, ErrorEvent):
                    print(f"error: {event.message}")
                elif isinstance(event, TurnFinished):
                    print(f"  ({event.record.timeline.summary_line()})")
                    if event.turn == 2:
                        break
        for message in conversation.history:
            print(f"  history: {message.role}: {message.content!r}")


if __name__ == "__main__":
    anyio.run(main)
