"""Call handlers that need no engines: for smoke tests of a phone line and for our own tests.

- `echo_handler`: plays the caller's voice back (what a "can you hear me" line test wants).
- `ToneBot`: answers with a tone; when the caller speaks over it, it stops at once (`clear`,
  barge-in) and notes how much the caller had heard (from echoed marks); when the caller falls
  silent, it answers with another tone; it collects DTMF digits. `ToneBot.calls` keeps one
  `ToneCallLog` per call for tests and benches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import anyio
import numpy as np

from agent.audio import float_to_pcm, pcm_to_array

from .call import TwilioCall
from .protocol import SAMPLE_RATE


async def echo_handler(call: TwilioCall) -> None:
    """Play the caller's voice back until they hang up. Cancelling ends the echo."""
    async for frame in call.mic_frames():
        await call.output.play(frame.pcm)


def tone(seconds: float, hz: float = 440.0, level: float = 0.3) -> bytes:
    """PCM16 at 8 kHz: a sine tone."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return float_to_pcm(level * np.sin(2 * math.pi * hz * t))


def loud(pcm: bytes, threshold: float = 500.0) -> bool:
    samples = pcm_to_array(pcm).astype(np.float64)
    return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) > threshold


@dataclass(slots=True)
class ToneCallLog:
    call_sid: str
    custom_parameters: dict[str, str]
    answers: int = 0
    barge_ins: int = 0
    heard_at_barge_in: list[int] = field(default_factory=list)  # samples heard, per barge-in
    heard_per_answer: list[int] = field(default_factory=list)  # samples heard, finished answers
    dtmf: str = ""
    ended: str = ""


class ToneBot:
    """A fake voice bot made of tones (see the module docstring)."""

    def __init__(self, greeting_s: float = 0.6, answer_s: float = 0.4,
                 end_of_turn_s: float = 0.2, hang_up_after_answers: int | None = None) -> None:
        self.greeting_s = greeting_s
        self.answer_s = answer_s
        self.end_of_turn_s = end_of_turn_s
        self.hang_up_after_answers = hang_up_after_answers
        self.calls: list[ToneCallLog] = []

    async def __call__(self, call: TwilioCall) -> None:
        """Serve one call until the caller hangs up. Cancelling stops the bot mid-sentence."""
        log = ToneCallLog(call.call_sid, dict(call.info.custom_parameters))
        self.calls.append(log)
        out = call.output
        speaking: anyio.CancelScope | None = None

        async def say(pcm: bytes) -> None:
            nonlocal speaking
            with anyio.CancelScope() as scope:
                speaking = scope
                out.mark()
                for i in range(0, len(pcm), 640):  # TTS-like 40 ms chunks
                    await out.play(pcm[i:i + 640])
                await out.drain()
                log.answers += 1
                log.heard_per_answer.append(out.samples_played)
                if (self.hang_up_after_answers is not None
                        and log.answers >= self.hang_up_after_answers):
                    call.hang_up("done talking")
            if speaking is scope:
                speaking = None

        async def digits() -> None:
            async for digit in call.dtmf():
                log.dtmf += digit

        async with anyio.create_task_group() as tg:
            tg.start_soon(digits)
            tg.start_soon(say, tone(self.greeting_s, 440.0))
            quiet_for: float | None = None
            async for frame in call.mic_frames():
                if loud(frame.pcm):
                    quiet_for = 0.0
                    if speaking is not None:
                        speaking.cancel()
                        speaking = None
                        log.heard_at_barge_in.append(out.samples_played)
                        out.clear()
                        log.barge_ins += 1
                elif quiet_for is not None:
                    quiet_for += frame.duration
                    if quiet_for >= self.end_of_turn_s:
                        quiet_for = None
                        tg.start_soon(say, tone(self.answer_s, 660.0))
            log.ended = call.end_reason
            tg.cancel_scope.cancel()
