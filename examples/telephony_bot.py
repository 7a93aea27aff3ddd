"""A phone bot for a bakery: answers calls through Twilio Media Streams, offline on the
embedded engines, on the public API.

    python examples/telephony_bot.py                       # serves http://127.0.0.1:8080
    voxloop call http://127.0.0.1:8080 --say question.wav  # call it, no Twilio account needed

Put it on a real number as README's "Put it on a phone number" says (a tunnel, the webhook,
TWILIO_AUTH_TOKEN). The TTS is asked for `ulaw_8000` and its bytes go to the caller undecoded;
phone networks cancel line echo, so the echo guard is off. Ctrl-C or SIGTERM drains the calls.
"""

from __future__ import annotations

import anyio

from agent import Agent, AgentOptions, AgentSaid, EchoConfig, UserSaid, end_call
from plugins.elevenlabs import ElevenLabsTTS, TTSConfig, running_server
from plugins.local import LocalLLMServer, WhisperSTT
from plugins.openai import OpenAILLM
from plugins.twilio import PhoneConfig, TwilioCall, serve

INSTRUCTIONS = "You answer phone calls for a bakery that opens at seven. Be brief and friendly."


async def main() -> None:
    async with (
        LocalLLMServer() as llm_server,
        running_server() as tts_server,
        OpenAILLM("smollm2", base_url=llm_server.base_url, max_tokens=60) as llm,
        WhisperSTT() as stt,
    ):

        async def answer(call: TwilioCall) -> None:
            phone_audio = TTSConfig(output_format="ulaw_8000", decode_audio=False)
            async with ElevenLabsTTS(phone_audio, base_url=tts_server.url) as tts:
                agent = Agent(
                    stt=stt,
                    llm=llm,
                    tts=tts,
                    instructions=INSTRUCTIONS,
                    tools=[end_call],
                    options=AgentOptions(echo=EchoConfig(enabled=False)),
                )
                async with agent.conversation(call) as conversation:
                    conversation.say("Hello, you have reached the bakery. How can I help?")
                    async for event in conversation:
                        if isinstance(event, UserSaid):
                            print(f"[{call.call_sid}] caller: {event.text}")
                        elif isinstance(event, AgentSaid):
                            print(f"[{call.call_sid}] bot:    {event.heard}")

        print("answering calls on http://127.0.0.1:8080 (webhook /twilio/voice)")
        await serve(answer, PhoneConfig.from_env(), port=8080)


if __name__ == "__main__":
    anyio.run(main)
