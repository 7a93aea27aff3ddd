"""The turn: LLM tokens into the TTS stream as they arrive, the audio to the output, the history
cut to what was heard.

A turn is one task group under the caller's cancel scope (DESIGN.md):

    LLM stream ──► TextChunker ──► TTSStream.send ... flush, close      (the speaker task)
    TTSStream.chunks ──► AudioOutput.play ──► drain                    (the player task)

`flush: true` goes out exactly once per turn, right after the last text. The caller (the voice
loop's turn runner, or `voxloop chat`) cancels the turn from outside on barge-in or hang-up;
cleanup (abort the TTS context, clear queued audio) then runs shielded with a short deadline,
and the history keeps only the words the user heard, as told by the output's playout report.

Every moment is marked on the turn's `TurnTimeline`, on the conversation's one clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import aclosing

import anyio

from agent.audio import StreamResampler
from agent.conversation import TurnRecord
from agent.errors import LLMError, VoxloopError, sole
from agent.events import AgentText, Event
from agent.interfaces import LLM, TTS, AudioOutput, ChatMessage, TextDelta, TTSStream
from agent.text import TextChunker
from agent.timeline import Clock, MonotonicClock

log = logging.getLogger("voxloop.session")

#: How long shielded cleanup may take after a cancel (close_context, clear the output).
CLEANUP_DEADLINE_S = 0.5

EventSink = Callable[[Event], None]


class Session:
    """The history (instructions first) and the machinery to run turns on one LLM, one TTS
    connection and one output, on one clock."""

    def __init__(
        self,
        llm: LLM,
        tts: TTS,
        output: AudioOutput,
        *,
        instructions: str = "",
        clock: Clock | None = None,
        sentence_mode: bool = False,
        on_event: EventSink | None = None,
    ) -> None:
        self.llm = llm
        self.tts = tts
        self.output = output
        self.clock: Clock = clock or MonotonicClock()
        self.sentence_mode = sentence_mode
        self.on_event = on_event
        self.history: list[ChatMessage] = []
        if instructions:
            self.history.append(ChatMessage("system", instructions))
        self.turns = 0

    def _emit(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    async def respond(
        self,
        user_text: str,
        record: TurnRecord | None = None,
        *,
        on_audio: Callable[[], None] | None = None,
    ) -> TurnRecord:
        """Answer ``user_text``; fill and return ``record`` (a new one if None).

        ``on_audio`` is called once, when the answer's first audio reaches the output.

        Cancelling this coroutine (barge-in, hang-up) ends the turn as interrupted: the TTS
        context is aborted and queued audio cleared (shielded, bounded), the history and
        ``record`` keep the words heard so far, and the cancellation propagates.

        An LLM failure mid-stream, or a failure that names its cause (a `VoxloopError`, such as
        the TTS socket lost mid-turn), does not raise: the turn ends with ``record.error`` set,
        the words spoken so far are kept, and the next turn works. Anything else is re-raised
        after the same cleanup.
        """
        self.turns += 1
        if record is None:
            record = TurnRecord(self.turns)
        record.transcript = record.transcript or user_text
        self.history.append(ChatMessage("user", user_text))
        self.output.mark()
        stream: TTSStream | None = None
        spoken: list[str] = []
        try:
            stream = await self.tts.open_context()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._speak, stream, record, spoken)
                tg.start_soon(self._play, stream, record, on_audio)
        except BaseException as err:
            # A failure that names its cause (the TTS socket lost mid-turn, an output error)
            # ends the turn: error recorded, what was heard kept, the session lives on.
            # Cancellation and anything else: clean up, then re-raise.
            named = sole(err, VoxloopError)
            record.interrupted = True
            if named is not None:
                record.error, record.cause = str(named), named
                log.warning("turn %d: ended early: %s", record.index, named)
            elif not isinstance(err, anyio.get_cancelled_exc_class()):
                record.error, record.cause = repr(err), err
            await self._cleanup(stream)
            self._finish(record, stream, spoken)
            if named is None:
                raise
            return record
        self._finish(record, stream, spoken)
        return record

    async def _speak(self, stream: TTSStream, record: TurnRecord, spoken: list[str]) -> None:
        """LLM deltas → chunker → socket; then exactly one flush and the close."""
        timeline, clock = record.timeline, self.clock
        chunker = TextChunker(sentence_mode=self.sentence_mode)
        full: list[str] = []
        timeline.mark("llm_request", clock.now())
        try:
            async with aclosing(self.llm.stream(self.history)) as chunks:
                async for chunk in chunks:
                    if not isinstance(chunk, TextDelta):
                        continue  # tool calls: run by the tool-aware turn (agent.tools)
                    now = clock.now()
                    timeline.mark_first("first_token", now)
                    timeline.mark("last_token", now)
                    full.append(chunk.text)
                    for piece in chunker.push(chunk.text):
                        await self._send(stream, piece, record, spoken)
        except LLMError as err:
            log.warning("turn %d: LLM failed mid-turn: %s", record.index, err)
            record.error, record.cause = str(err), err
        for piece in chunker.finish():
            await self._send(stream, piece, record, spoken)
        record.agent_text = "".join(full)
        if spoken:
            await stream.flush()
            timeline.mark("flush_sent", clock.now())
        await stream.close()

    async def _send(
        self, stream: TTSStream, piece: str, record: TurnRecord, spoken: list[str]
    ) -> None:
        await stream.send(piece)
        now = self.clock.now()
        record.timeline.mark_first("first_text_sent", now)
        spoken.append(piece)
        self._emit(AgentText(record.index, piece, now))

    async def _play(
        self, stream: TTSStream, record: TurnRecord, on_audio: Callable[[], None] | None
    ) -> None:
        """Speech chunks → output, then wait until they have been played."""
        timeline = record.timeline
        rate = self.output.sample_rate
        resampler: StreamResampler | None = None
        async for chunk in stream.chunks():
            if not chunk.pcm:
                continue
            if "first_audio_byte" not in timeline.marks:
                timeline.mark("first_audio_byte", self.clock.now())
                if on_audio is not None:
                    on_audio()
            pcm = chunk.pcm
            if chunk.sample_rate != rate:  # a TTS format other than the output's: convert
                if resampler is None:
                    resampler = StreamResampler(chunk.sample_rate, rate)
                pcm = resampler.process(pcm)
            await self.output.play(pcm)
        timeline.mark("final_received", self.clock.now())
        await self.output.drain()

    async def _cleanup(self, stream: TTSStream | None) -> None:
        """Stop the TTS context and silence the output; shielded, bounded."""
        with anyio.move_on_after(CLEANUP_DEADLINE_S, shield=True):
            self.output.clear()
            if stream is not None:
                await stream.abort()

    def _finish(self, record: TurnRecord, stream: TTSStream | None, spoken: list[str]) -> None:
        """Settle what was heard (from the output's playout report) and keep it in the history."""
        sent = "".join(spoken).strip()
        if not record.agent_text:
            record.agent_text = sent
        if record.interrupted and stream is not None:
            played = self.output.samples_played / self.output.sample_rate
            record.heard_text = stream.heard_text(played)
        elif record.interrupted:
            record.heard_text = ""
        else:
            record.heard_text = sent
        if record.heard_text or not record.interrupted:
            self.history.append(
                ChatMessage("assistant", record.heard_text, interrupted=record.interrupted)
            )
        record.timeline.mark("turn_end", self.clock.now())
