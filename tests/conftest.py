"""Shared fixtures: the anyio backend, the real local voice (loaded once), log capture."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Piper's voice varies at random from run to run (VITS noise), and tests that hear it back
# (whisper, the VAD's timing) then fail on the odd rendering: a seed makes each run say the
# same audio, here and in the voxloop processes the tests start (plugins.local.piper_tts).
os.environ.setdefault("VOXLOOP_PIPER_SEED", "0")
try:
    from plugins.local.piper_tts import seed_from_env

    seed_from_env()  # also for the piper voices tests load directly
except ImportError:  # onnxruntime / the local extra not installed
    pass
# Tests never reach a real service: drop keys and URLs a developer may have exported.
for _name in ("ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(_name, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def piper_engine() -> Any:
    """The embedded piper voice, loaded once for the whole run."""
    from plugins.local.piper_tts import PiperEngine

    return PiperEngine.load()


@pytest.fixture(scope="session")
def whisper_stt() -> Any:
    """The embedded whisper tiny.en, loaded once for the whole run."""
    from plugins.local.whisper_stt import WhisperSTT

    stt = WhisperSTT()
    stt.load()
    return stt


@pytest.fixture(scope="session")
def speak16k(piper_engine: Any) -> Any:
    """Piper speech as 16 kHz PCM16 (the scripted user's voice in timeline tests)."""
    from agent.audio import resample

    cache: dict[str, bytes] = {}

    def speak(text: str) -> bytes:
        if text not in cache:
            pcm = b"".join(c.pcm for c in piper_engine.synthesize(text))
            cache[text] = resample(pcm, piper_engine.sample_rate, 16000)
        return cache[text]

    return speak
