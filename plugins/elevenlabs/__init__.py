"""ElevenLabs WebSocket TTS: the sans-I/O protocol, a client and a compatible local server.

What an agent uses: `ElevenLabsTTS` (the client: one warm multi-context socket, a context per
turn) with its `TTSConfig`, and `running_server()` (our ElevenLabs-compatible server on
loopback, speaking with the embedded piper voice). The modules:

- `protocol`: the server role as a state machine (frames in, events out, `now` passed in,
  timers as `next_deadline()` / `tick(now)`); re-exports the client role (`client_protocol`)
  and every wire type.
- wire types by concern: `errors` (ProtocolError under agent.errors.ProtocolError, close
  reasons), `settings` (connection parameters with a typed `OutputFormat`, voice settings,
  schedule, `Secret`), `client_messages` (what clients send, the hostile-string checks),
  `server_frames` (what servers send); `messages` re-exports them for older imports.
- `textbuffer`: the server's join / chunk-schedule / auto_mode rules and bounded pieces.
- `alignment`: turning per-chunk character alignment into absolute word timings.
- `client`: `ElevenLabsTTS` (anyio + websockets); `server`: `LocalTTSServer`; `engine`: what
  the server needs of a speech engine; `redaction`: keys out of every log line.
"""

from __future__ import annotations

from plugins.elevenlabs.client import DEFAULT_VOICE_ID, ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer, running_server

__all__ = ["DEFAULT_VOICE_ID", "ElevenLabsTTS", "LocalTTSServer", "TTSConfig", "running_server"]
