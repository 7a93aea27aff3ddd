"""The voxloop side of `bench.vs_pipecat`: one process (the project's venv) that answers turns
told to it over standard input, one JSON line each, and reports each turn on standard output.

It is built the way `voxloop chat` builds a conversation (`agent.app.compose`: `make_llm`,
`make_tts` with the agent's settings, then `Session.respond`), pointed at the bench's scripted
LLM and shared TTS server. The output is `FirstAudioOutput`: it notes when the first audio of a
turn reaches it and discards the rest, as the Pipecat side's sink does.

    python -m bench._side_voxloop --llm-url http://127.0.0.1:P/v1 --tts-url ws://127.0.0.1:Q

The wire (both sides speak it; `bench.vs_pipecat` documents it): ``{"op": "turn", "text": ...}``
answers one turn record, ``{"op": "stats"}`` the process's peak RSS, ``{"op": "quit"}`` ends.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import IO, Any

import anyio
import anyio.to_thread

from agent.app.compose import AgentSettings, Endpoint, make_llm, make_tts
from agent.app.lifecycle import die_with_parent
from agent.file_output import MemoryOutput
from agent.session import Session

#: Longest a turn may take before the side gives up on it (the bench has its own deadline too).
TURN_DEADLINE_S = 30.0


class FirstAudioOutput(MemoryOutput):
    """A `MemoryOutput` that keeps no audio: it counts the bytes of the turn and notes, on the
    monotonic clock, when the first ones arrived."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self.audio_bytes = 0

    async def play(self, pcm: bytes) -> None:
        """Count ``pcm`` as played now. Cancelling has no effect (nothing waits)."""
        if self.first_play_at is None:
            self.first_play_at = time.monotonic()
        self.audio_bytes += len(pcm)
        self._played += len(pcm) // 2

    def mark(self) -> None:
        super().mark()
        self.audio_bytes = 0


def _wire() -> IO[str]:
    """Standard output, kept for the wire alone: anything else printed goes to stderr."""
    wire = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return wire


def _send(wire: IO[str], message: dict[str, Any]) -> None:
    wire.write(json.dumps(message) + "\n")
    wire.flush()


def peak_rss_kb() -> int:
    """The process's peak resident set size so far, in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def serve(llm_url: str, tts_url: str, sample_rate: int) -> None:
    """Answer turns until told to quit or standard input ends."""
    wire = _wire()
    settings = AgentSettings(llm_url=llm_url, tts_url=tts_url, sample_rate=sample_rate)
    output = FirstAudioOutput(sample_rate)
    async with (
        make_llm(settings, Endpoint(llm_url)) as llm,
        make_tts(settings, Endpoint(tts_url), sample_rate) as tts,
    ):
        session = Session(
            llm,
            tts,
            output,
            instructions=settings.instructions,
            sentence_mode=settings.sentence_mode,
        )
        _send(wire, {"ready": True, "framework": "voxloop", "rss_kb": peak_rss_kb()})
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            if command["op"] == "quit":
                return
            if command["op"] == "stats":
                _send(wire, {"peak_rss_kb": peak_rss_kb()})
                continue
            cpu_before = time.process_time()
            handed_at = time.monotonic()
            with anyio.fail_after(TURN_DEADLINE_S):
                record = await session.respond(command["text"])
            done_at = time.monotonic()
            cpu_s = time.process_time() - cpu_before
            first = output.first_play_at
            _send(
                wire,
                {
                    "handed_at": handed_at,
                    "first_audio_at": first,
                    "done_at": done_at,
                    "cpu_s": cpu_s,
                    "audio_bytes": output.audio_bytes,
                    "spoken": record.heard_text,
                    "error": record.error,
                    "marks": dict(record.timeline.marks),
                },
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm-url", required=True, help="the scripted LLM's base URL")
    parser.add_argument("--tts-url", required=True, help="the shared TTS server's ws:// URL")
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args()
    die_with_parent()  # never outlive the bench, however it ends
    try:
        anyio.run(serve, args.llm_url, args.tts_url, args.sample_rate)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the bench cleans up
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
