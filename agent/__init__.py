"""voxloop: real-time conversational voice agents.

What a user imports. An agent is its instructions plus an STT, an LLM and a TTS (plugin
constructors from `plugins.*`, or your own objects with the same few methods); it converses on
a transport and tells what happens as typed events::

    agent = Agent(stt=stt, llm=llm, tts=tts, instructions="You are a helpful pirate.")
    async with agent.conversation(transport) as conversation:
        async for event in conversation:
            if isinstance(event, AgentSaid):
                print(event.heard)

`agent` is vendor-neutral and never imports a plugin; `agent.app` (the CLI) is the one place
that does.
"""

from agent.conversation import ConversationLog, TurnRecord
from agent.echo import EchoConfig
from agent.errors import (
    AudioDeviceError,
    LLMError,
    ProtocolError,
    STTError,
    TTSError,
    VoxloopError,
)
from agent.events import (
    AgentSaid,
    AgentText,
    Dtmf,
    ErrorEvent,
    Event,
    Interrupted,
    StateChanged,
    ToolCalled,
    ToolFinished,
    TurnFinished,
    UserSaid,
)
from agent.interfaces import (
    LLM,
    STT,
    TTS,
    AudioOutput,
    ChatMessage,
    TextDelta,
    ToolCall,
    Transcript,
    Transport,
    TurnDetector,
    TurnGuess,
)
from agent.tools import Tool, ToolContext, tool
from agent.turntaking import BargeInRules
from agent.vad import VadConfig
from agent.voice_agent import Agent, AgentOptions, Conversation, EndOfTurn
from agent.voice_tools import end_call, read_digits

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "STT",
    "TTS",
    "Agent",
    "AgentOptions",
    "AgentSaid",
    "AgentText",
    "AudioDeviceError",
    "AudioOutput",
    "BargeInRules",
    "ChatMessage",
    "Conversation",
    "ConversationLog",
    "Dtmf",
    "EchoConfig",
    "EndOfTurn",
    "ErrorEvent",
    "Event",
    "Interrupted",
    "LLMError",
    "ProtocolError",
    "STTError",
    "StateChanged",
    "TTSError",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolCalled",
    "ToolContext",
    "ToolFinished",
    "Transcript",
    "Transport",
    "TurnDetector",
    "TurnFinished",
    "TurnGuess",
    "TurnRecord",
    "UserSaid",
    "VadConfig",
    "VoxloopError",
    "end_call",
    "read_digits",
    "tool",
]
