"""A phone bot on a simulated phone line (8 kHz, G.711 μ-law), offline, on the public API.

    python examples/telephony_bot.py

The "call" is the virtual transport at 8 kHz with a μ-law line: a scripted caller asks a
question and, once the bot has talked for a second, cuts it off with another. The bot listens
with webrtcvad at 8 kHz and asks the TTS for `ulaw_8000`, as phone bridges ask ElevenLabs. Phone
networks cancel line echo, so the echo guard is off. The call is recorded to
output/telephony/call.wav (caller left, bot right).
"""

from __future__ import annotations

from pathlib import Path

import anyio

from agent import Agent, AgentOptions, EchoConfig, StateChanged, TurnFinished, UserSaid
from plugins.elevenlabs import ElevenLabsTTS, TTSConfig, running_server
from plugins.local import LocalLLMServer, PiperEngine, WhisperSTT
from plugins.openai import OpenAILLM
from plugins.virtual import VirtualTransport

INSTRUCTIONS = "You answer phone calls for a bakery. Be brief and friendly."


async def main() -> None:
    engine = await anyio.to_thread.run_sync(PiperEngine.load)
    call = VirtualTransport(8000, line="ulaw")
    call.speak(engine, "Hi, I would like to know how many days are in a week.", at_seconds=0.5)
    cut_in = False
    async with (
        LocalLLMServer() as llm_server,
        running_server(engine) as tts_server,
        OpenAILLM("smollm2", base_url=llm_server.base_url, max_tokens=60) as llm,
        ElevenLabsTTS(TTSConfig(output_format="ulaw_8000"), base_url=tts_server.url) as tts,
        WhisperSTT() as stt,
        call.running(),
    ):
        options = AgentOptions(echo=EchoConfig(enabled=False))
        agent = Agent(stt=stt, llm=llm, tts=tts, instructions=INSTRUCTIONS, options=options)
        async with agent.conversation(call) as conversation:
            async for event in conversation:
                if isinstance(event, StateChanged) and event.state == "speaking" and not cut_in:
                    call.speak(engine, "Sorry, what color is the sky?", call.now() + 1.0)
                    cut_in = True
                elif isinstance(event, UserSaid):
                    print(f"caller: {event.text}")
                elif isinstance(event, TurnFinished):
                    record = event.record
                    cut = " [interrupted]" if record.interrupted else ""
                    print(f"bot:    {record.heard_text}{cut}")
                    print(f"        ({record.timeline.summary_line()})")
                    if event.turn == 2:
                        break
    print(f"call recording: {call.save_stereo_wav(Path('output/telephony/call.wav'))}")


if __name__ == "__main__":
    anyio.run(main)
