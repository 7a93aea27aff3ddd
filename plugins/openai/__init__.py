"""OpenAI-compatible adapters: the streaming chat LLM (`OpenAILLM`) and speech to text
(`OpenAISTT`), for the OpenAI service or any server that speaks its API (llama.cpp, vLLM,
Ollama)."""

from __future__ import annotations

from plugins.openai.llm import OpenAILLM
from plugins.openai.stt import OpenAISTT

__all__ = ["OpenAILLM", "OpenAISTT"]
