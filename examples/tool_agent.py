"""A voice assistant with tools: a weather lookup, a kitchen timer, and hanging up.

Talk to it (microphone and speaker) with a model that can call tools, for example llama.cpp's
`llama-server --jinja`, Ollama or vLLM on your machine, or the OpenAI service:

    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python examples/tool_agent.py --model qwen2.5-7b
    OPENAI_API_KEY=... python examples/tool_agent.py --model gpt-4o-mini

or give its tools to the CLI, typed instead of spoken:

    voxloop chat --tools examples/tool_agent.py --llm-url http://127.0.0.1:8080/v1

The embedded SmolLM2-135M cannot call tools; voxloop says so at start and answers without them.
The weather here is a stand-in table (no network); swap in a real service.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Literal

import anyio

from agent import Agent, AgentSaid, Tool, ToolCalled, ToolFinished, UserSaid, end_call, tool
from plugins.elevenlabs import ElevenLabsTTS, running_server
from plugins.local import WhisperSTT
from plugins.openai import OpenAILLM
from plugins.sounddevice import SoundDeviceTransport

WEATHER = {"oslo": (4, "rain"), "rome": (19, "sun"), "paris": (12, "clouds")}
timers: list[str] = []


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """The current weather in a city.

    Args:
        city: The city's name, for example "Oslo".
        unit: The temperature unit to answer in.
    """
    known = WEATHER.get(city.strip().lower())
    if known is None:
        return f"No weather report for {city}."
    degrees, sky = known
    if unit == "fahrenheit":
        degrees = round(degrees * 9 / 5 + 32)
    return f"{city}: {sky}, {degrees} degrees {unit}"


@tool
async def start_timer(minutes: int, label: str = "timer") -> str:
    """Start a kitchen timer.

    Args:
        minutes: How long, in whole minutes (1 to 120).
        label: What the timer is for, e.g. "pasta".
    """
    if not 1 <= minutes <= 120:
        return "A timer runs from 1 to 120 minutes."
    timers.append(f"{label}: {minutes} min")
    return f"The {label} timer is set for {minutes} minutes."


TOOLS: list[Tool[..., Any]] = [get_weather, start_timer, end_call]


async def main(model: str) -> None:
    line = SoundDeviceTransport()
    async with (
        running_server() as tts_server,
        OpenAILLM(model, base_url=os.environ.get("OPENAI_BASE_URL")) as llm,
        ElevenLabsTTS(base_url=tts_server.url) as tts,
        WhisperSTT() as stt,
        line.running(),
    ):
        agent = Agent(
            stt=stt,
            llm=llm,
            tts=tts,
            instructions="You are a kitchen helper. Use your tools; answer in one sentence.",
            tools=TOOLS,
        )
        print("Speak now: ask for the weather or a timer; say goodbye to hang up.")
        async with agent.conversation(line) as conversation:
            async for event in conversation:
                if isinstance(event, UserSaid):
                    print(f"you:   {event.text}")
                elif isinstance(event, ToolCalled):
                    print(f"  -> {event.name}({event.arguments})")
                elif isinstance(event, ToolFinished):
                    print(f"  <- {event.name}: {event.outcome}, {event.result}")
                elif isinstance(event, AgentSaid):
                    print(f"agent: {event.heard}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-4o-mini", help="a model that can call tools")
    anyio.run(main, parser.parse_args().model)
