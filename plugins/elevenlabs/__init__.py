"""ElevenLabs WebSocket TTS: the sans-I/O protocol, a client and a compatible local server.

What an agent uses: `ElevenLabsTTS` (the client: one warm multi-context socket, a context per
turn) with its `TTSConfig`, and `running_server()` (our ElevenLabs-compatible server on
loopback, speaking with the embedded piper voice). The protocol itself lives in `protocol`
(both roles, frames in, events out, `now` passed in).
"""

from __future__ import annotations

from plugins.elevenlabs.client import DEFAULT_VOICE_ID, ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer, running_server

__all__ = ["DEFAULT_VOICE_ID", "ElevenLabsTTS", "LocalTTSServer", "TTSConfig", "running_server"]
