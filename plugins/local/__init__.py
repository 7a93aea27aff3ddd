"""Embedded engines that run on this machine, with no network: llama.cpp's OpenAI-compatible
server with SmolLM2-135M (`LocalLLMServer`), faster-whisper STT (`WhisperSTT`), the piper
voice (`PiperEngine`, served by `plugins.elevenlabs.running_server`) and the Smart Turn v3
end-of-turn model (`SmartTurn`, an `agent.interfaces.TurnDetector`).

They need the optional extra `voxloop[local]` (piper-tts is GPL, so it stays out of the core);
SmartTurn's weights come from the pipecat-ai wheel, installed without its dependencies
(`pip install --no-deps "pipecat-ai==1.14.0"`, as `dev.sh` does).
Each is imported on first use, so importing this package loads no engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugins.local.llm_server import LocalLLMServer
    from plugins.local.piper_tts import PiperEngine
    from plugins.local.smart_turn import SmartTurn
    from plugins.local.whisper_stt import WhisperSTT

__all__ = ["LocalLLMServer", "PiperEngine", "SmartTurn", "WhisperSTT"]

_HOME = {
    "LocalLLMServer": "plugins.local.llm_server",
    "PiperEngine": "plugins.local.piper_tts",
    "SmartTurn": "plugins.local.smart_turn",
    "WhisperSTT": "plugins.local.whisper_stt",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'plugins.local' has no attribute {name!r}")
