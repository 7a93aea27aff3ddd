"""The TTS server `bench.vs_pipecat` shares between the frameworks: our local
ElevenLabs-compatible server with the piper voice (`running_server`, as `voxloop tts-server`
starts it), in a process of its own, that also tells its timings.

It prints ``{"url": "ws://127.0.0.1:PORT"}`` once it serves. Then, for every line read on
standard input, it answers one JSON line: ``{"contexts": [...]}``, the timings
(`ContextTiming`, on this process's monotonic clock, which on Linux is every process's) of the
TTS contexts opened since the last question. Turns run one at a time, so those are the turn's.
It ends when standard input does, and dies with the bench.

    python -m bench._tts_server
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import anyio
import anyio.to_thread

from agent.app.lifecycle import die_with_parent
from plugins.elevenlabs.server import ContextTiming, running_server
from plugins.local import piper_tts


async def serve() -> None:
    """Serve until standard input ends."""
    # ElevenLabs' own buffering (the schedule exactly): each framework meets the server as it
    # would meet the service, with its own way of getting a first clause spoken early.
    # No local LLM runs in this bench (its LLM is scripted), so piper gets both cores, as on a
    # machine the TTS server has to itself (`voxloop tts-server --threads 2`).
    piper_tts.CPU_THREADS = 2
    async with running_server(first_clause=False) as server:
        print(json.dumps({"url": server.url}), flush=True)
        told: set[int] = set()  # the contexts already told (a bench opens a few hundred)
        while await anyio.to_thread.run_sync(sys.stdin.readline):
            new: list[ContextTiming] = [c for c in server.stats.contexts if id(c) not in told]
            told.update(id(c) for c in new)
            answer: dict[str, Any] = {"contexts": [asdict(c) for c in new]}
            print(json.dumps(answer), flush=True)


def main() -> None:
    die_with_parent()  # never outlive the bench, however it ends
    try:
        anyio.run(serve)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the bench cleans up
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
