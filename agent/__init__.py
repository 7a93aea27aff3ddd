"""voxloop: real-time conversational voice agents.

`agent` is the vendor-neutral framework: audio frames, VAD, the turn state machine, barge-in,
text chunking, metrics, the session loop and the CLI. Adapters to the outside world live in
`plugins`; `agent` only names them from its composition root (`agent.app.cli`).
"""

__version__ = "0.1.0"
