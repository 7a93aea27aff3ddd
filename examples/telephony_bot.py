"""A telephony-style voice bot on a simulated phone line (8 kHz, G.711 mu-law), offline.

    python examples/telephony_bot.py

The "call" is the virtual transport at 8 kHz: a scripted caller speaks through a mu-law line
(encoded and decoded as a phone network would), the agent listens with webrtcvad at 8 kHz,
asks the TTS for `ulaw_8000` (what phone bridges request from ElevenLabs) and answers; the
caller interrupts once. The call is recorded to output/telephony/call.wav (caller left, bot
right). Swap VirtualTransport for a real media stream to put it on a phone line.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from agent.audio import ulaw_decode, ulaw_encode
from agent.app.chat import AgentSettings, make_llm
from agent.app.compose import llm_endpoint, load_stt, stderr_progress, tts_endpoint
from agent.app.report import turn_table, write_stereo_wav
from agent.session import Session
from agent.app.user_voice import synthesize_user_lines
from agent.voice_agent import VoiceAgent
from plugins.elevenlabs.client import DEFAULT_VOICE_ID, ElevenLabsTTS, TTSConfig
from plugins.local.piper_tts import PiperEngine
from plugins.virtual.transport import VirtualTransport

RATE = 8000  # narrowband telephony
CALLER = [
    (0.5, "Hi, I would like to know how many days are in a week."),
    (None, "Sorry, one more thing. What color is the sky?"),  # cuts the bot off
]


def phone_line(pcm: bytes) -> bytes:
    """What the caller's voice sounds like after a mu-law phone network."""
    return ulaw_decode(ulaw_encode(pcm))


async def main() -> None:
    progress = stderr_progress("telephony")
    engine = await anyio.to_thread.run_sync(PiperEngine.load)
    voices = synthesize_user_lines([text for _, text in CALLER], engine, sample_rate=RATE)
    call = VirtualTransport(RATE, block_ms=20, realtime=True)
    call.inject(phone_line(voices[0]), at_seconds=CALLER[0][0])
    settings = AgentSettings(system_prompt="You answer phone calls. Be brief and friendly.")
    stt = await load_stt(progress=progress)
    async with (
        llm_endpoint(progress=progress) as llm_ep,
        tts_endpoint(progress=progress) as tts_ep,
        make_llm(settings, llm_ep) as llm,
        ElevenLabsTTS(
            TTSConfig(voice_id=DEFAULT_VOICE_ID, output_format="ulaw_8000"),
            api_key=tts_ep.api_key,
            base_url=tts_ep.url,
        ) as tts,
    ):
        agent = VoiceAgent(Session(llm, tts, call.output), stt, call)
        hang_up = anyio.Event()

        async def caller() -> None:
            # wait until the bot has been talking for a second, then cut in; then hang up
            while agent.speaking_for() < 1.0:
                await call.wait_until(call.clock_seconds + 0.02)
            call.inject(phone_line(voices[1]))
            while len(agent.log.turns) < 2 or not agent.idle:
                await call.wait_until(call.clock_seconds + 0.02)
            hang_up.set()

        async with call.running(), anyio.create_task_group() as tg:
            tg.start_soon(caller)
            log = await agent.run(until=hang_up)
    path = write_stereo_wav(
        Path("output/telephony/call.wav"), call.recorded_input(), call.recorded_output(), RATE
    )
    print(turn_table(log))
    print(f"call recording: {path}")


if __name__ == "__main__":
    anyio.run(main)
