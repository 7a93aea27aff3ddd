"""ElevenLabs WebSocket TTS: the sans-I/O protocol, a client and a compatible local server.

- `protocol`: the server role as a state machine (frames in, events out, `now` passed in);
  re-exports the client role (`client_protocol`) and the wire types (`messages`).
- `messages`: wire types, validation, constants (re-exported by `protocol`).
- `textbuffer`: the server's join / chunk-schedule / auto_mode rules.
- `alignment`: turning per-chunk character alignment into absolute word timings.
"""
