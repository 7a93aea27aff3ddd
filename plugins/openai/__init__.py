"""OpenAI-compatible adapters: the streaming chat LLM (`llm`) and speech to text (`stt`)."""
