"""Shared fixtures: the anyio backend, the real local voice (loaded once), log capture."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
