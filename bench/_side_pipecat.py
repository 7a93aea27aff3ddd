"""The Pipecat side of `bench.vs_pipecat`: one process, in the bench's own Pipecat venv (never the
project's), that answers turns told to it over standard input, one JSON line each, and reports
each turn on standard output. It imports only the standard library and Pipecat.

The pipeline is the one a Pipecat voice bot has between its transports:

    user context aggregator -> OpenAILLMService -> ElevenLabsTTSService -> sink
                                                                           -> assistant aggregator

`OpenAILLMService` is pointed at the bench's scripted LLM (``base_url``), and
`ElevenLabsTTSService` at the shared local TTS server (``url``, ``sample_rate=16000`` so it asks
for ``pcm_16000``, the default ``eleven_flash_v2_5`` model id, a placeholder key: the server
needs none on loopback). ``--mode sentence`` is Pipecat's default text aggregation (whole
sentences, ElevenLabs ``auto_mode=true``); ``--mode token`` is
``text_aggregation_mode=TextAggregationMode.TOKEN`` (tokens as they come, ``auto_mode=false``
and the server's chunk schedule, as Pipecat sets them). Everything else is left at Pipecat's
defaults (its RTVI processor and observer included), except that loguru logs at WARNING, as
voxloop does, and the idle timeout is off.

A turn is a `LLMMessagesAppendFrame` with the user's text (``run_llm=True``), queued on the
`PipelineWorker`: what a transcription does, without an STT. The sink notes when the first
`TTSAudioRawFrame` reaches it and discards the audio; the turn ends when the
`LLMFullResponseEndFrame`, which Pipecat queues behind the turn's audio, reaches it.

    bench/work/pipecat-venv/bin/python bench/_side_pipecat.py --mode sentence \\
        --llm-url http://127.0.0.1:P/v1 --tts-url ws://127.0.0.1:Q

The wire is `bench.vs_pipecat`'s: ``{"op": "turn", "text": ...}`` answers one turn record,
``{"op": "stats"}`` the peak RSS, ``{"op": "quit"}`` ends. Type-check it against that venv:
``mypy --python-executable bench/work/pipecat-venv/bin/python bench/_side_pipecat.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import IO, Any

#: Longest a turn may take before the side gives up on it (the bench has its own deadline too).
TURN_DEADLINE_S = 30.0
#: How long the pipeline may take to start (connect to the TTS server).
START_DEADLINE_S = 60.0
INSTRUCTIONS = "You are a friendly voice assistant. Answer in one or two short, plain sentences."


def _wire() -> IO[str]:
    """Standard output, kept for the wire alone: anything else printed goes to stderr."""
    wire = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return wire


def _send(wire: IO[str], message: dict[str, Any]) -> None:
    wire.write(json.dumps(message) + "\n")
    wire.flush()


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM when the bench dies, so this side never outlives it
    (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def peak_rss_kb() -> int:
    """The process's peak resident set size so far, in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def serve(llm_url: str, tts_url: str, mode: str, voice: str, sample_rate: int) -> None:
    """Answer turns until told to quit or standard input ends."""
    wire = _wire()
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        LLMFullResponseEndFrame,
        LLMMessagesAppendFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSTextFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.tts_service import TextAggregationMode
    from pipecat.workers.runner import WorkerRunner

    class Sink(FrameProcessor):
        """Notes the first audio of a turn and its end; keeps no audio."""

        def __init__(self) -> None:
            super().__init__()
            self.started = asyncio.Event()
            self.turn_over = asyncio.Event()
            self.first_audio_at: float | None = None
            self.audio_bytes = 0
            self.words: list[str] = []

        def new_turn(self) -> None:
            self.turn_over = asyncio.Event()
            self.first_audio_at = None
            self.audio_bytes = 0
            self.words = []

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if direction == FrameDirection.DOWNSTREAM:
                if isinstance(frame, TTSAudioRawFrame):
                    if self.first_audio_at is None and frame.audio:
                        self.first_audio_at = time.monotonic()
                    self.audio_bytes += len(frame.audio)
                    return  # the audio stops here, as at an output transport
                if isinstance(frame, TTSTextFrame):
                    self.words.append(frame.text)
                elif isinstance(frame, LLMFullResponseEndFrame):
                    self.turn_over.set()
                elif isinstance(frame, StartFrame):
                    self.started.set()
            await self.push_frame(frame, direction)

    llm = OpenAILLMService(
        api_key="unused-by-the-scripted-llm",
        base_url=llm_url,
        settings=OpenAILLMService.Settings(model="scripted", system_instruction=INSTRUCTIONS),
    )
    tts = ElevenLabsTTSService(
        api_key="unused-on-loopback",
        url=tts_url,
        sample_rate=sample_rate,
        settings=ElevenLabsTTSService.Settings(voice=voice, model="eleven_flash_v2_5"),
        text_aggregation_mode=TextAggregationMode(mode),
    )
    aggregators = LLMContextAggregatorPair(LLMContext())
    sink = Sink()
    pipeline = Pipeline([aggregators.user(), llm, tts, sink, aggregators.assistant()])
    worker = PipelineWorker(pipeline, idle_timeout_secs=None)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)

    async def turns() -> None:
        try:
            await asyncio.wait_for(sink.started.wait(), START_DEADLINE_S)
            await asyncio.sleep(0.2)  # let the TTS socket finish connecting
            _send(wire, {"ready": True, "framework": f"pipecat-{mode}", "rss_kb": peak_rss_kb()})
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    return
                command = json.loads(line)
                if command["op"] == "quit":
                    return
                if command["op"] == "stats":
                    _send(wire, {"peak_rss_kb": peak_rss_kb()})
                    continue
                sink.new_turn()
                cpu_before = time.process_time()
                handed_at = time.monotonic()
                await worker.queue_frame(
                    LLMMessagesAppendFrame(
                        [{"role": "user", "content": str(command["text"])}], run_llm=True
                    )
                )
                error = None
                try:
                    await asyncio.wait_for(sink.turn_over.wait(), TURN_DEADLINE_S)
                except TimeoutError:
                    error = f"no end of the answer within {TURN_DEADLINE_S:.0f} s"
                done_at = time.monotonic()
                cpu_s = time.process_time() - cpu_before
                _send(
                    wire,
                    {
                        "handed_at": handed_at,
                        "first_audio_at": sink.first_audio_at,
                        "done_at": done_at,
                        "cpu_s": cpu_s,
                        "audio_bytes": sink.audio_bytes,
                        "spoken": " ".join(sink.words),
                        "error": error,
                    },
                )
        finally:
            await worker.queue_frame(EndFrame())

    driver = asyncio.create_task(turns())
    await runner.run()
    await driver


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm-url", required=True, help="the scripted LLM's base URL")
    parser.add_argument("--tts-url", required=True, help="the shared TTS server's ws:// URL")
    parser.add_argument("--mode", choices=["sentence", "token"], default="sentence")
    parser.add_argument("--voice", required=True, help="the voice id (the same as voxloop's)")
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args()
    _die_with_parent()
    try:
        asyncio.run(serve(args.llm_url, args.tts_url, args.mode, args.voice, args.sample_rate))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the bench cleans up
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
