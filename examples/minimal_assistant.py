"""A minimal voxloop assistant: one typed question in, the spoken answer out as a WAV file.

    python examples/minimal_assistant.py "What is the moon?"

With no keys in the environment it runs offline: the local LLM server (SmolLM2 on llama.cpp)
and the local ElevenLabs-protocol TTS server (piper) start on 127.0.0.1 for the run.
Set OPENAI_API_KEY / ELEVENLABS_API_KEY (or *_BASE_URL) to use real services instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from agent.app.chat import AgentSettings, make_llm, make_tts
from agent.app.compose import llm_endpoint, stderr_progress, tts_endpoint
from agent.file_output import WavFileOutput
from agent.session import Session


async def main(question: str) -> None:
    settings = AgentSettings()
    progress = stderr_progress("example")
    output = WavFileOutput(settings.sample_rate, Path("output/example"))
    async with (
        llm_endpoint(progress=progress) as llm_ep,
        tts_endpoint(progress=progress) as tts_ep,
        make_llm(settings, llm_ep) as llm,
        make_tts(settings, tts_ep, settings.sample_rate) as tts,
    ):
        result = await Session(llm, tts, output).respond(question)
    print(f"you:   {question}\nagent: {result.full_text}")
    print(f"       [{result.metrics.summary_line()}]")
    print(f"audio: {output.save('answer.wav')}")


if __name__ == "__main__":
    anyio.run(main, " ".join(sys.argv[1:]) or "What is the moon?")
