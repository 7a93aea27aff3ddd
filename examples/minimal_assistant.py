"""A voice agent in 25 lines, offline: ask it a question recorded in a WAV file.

voxloop say "What color is the sky?" --format pcm_16000 --name question.wav
python examples/minimal_assistant.py output/question.wav
"""

import sys

import anyio

from agent import Agent, AgentSaid, UserSaid
from plugins.elevenlabs import ElevenLabsTTS, running_server
from plugins.local import LocalLLMServer, WhisperSTT
from plugins.openai import OpenAILLM
from plugins.virtual import VirtualTransport


async def main(question_wav: str) -> None:
    line = VirtualTransport(mic=question_wav)  # or plugins.sounddevice.SoundDeviceTransport()
    async with (
        LocalLLMServer() as llm_server,
        running_server() as tts_server,
        OpenAILLM("smollm2", base_url=llm_server.base_url, max_tokens=40) as llm,
        ElevenLabsTTS(base_url=tts_server.url) as tts,
        WhisperSTT() as stt,
        line.running(),
    ):
        agent = Agent(stt=stt, llm=llm, tts=tts, instructions="You are a cheerful pirate.")
        async with agent.conversation(line) as conversation:
            async for event in conversation:
                if isinstance(event, UserSaid):
                    print("you:  ", event.text)
                elif isinstance(event, AgentSaid):
                    print("agent:", event.heard)
                    break


anyio.run(main, sys.argv[1])
