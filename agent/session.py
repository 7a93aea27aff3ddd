"""The turn: LLM tokens into the TTS stream as they arrive, the audio to the output, the history
cut to what was heard.

A turn is one task group under the caller's cancel scope (DESIGN.md):

    LLM stream ──► TextChunker ──► TTSStream.send ... flush, close      (the speaker task)
    TTSStream.chunks ──► AudioOutput.play ──► drain                    (the player task)

`flush: true` goes out once per turn, right after the last text (and, in a turn with tools, once
more after the text said before each tool round, so it plays while the tools run). With
``first_clause`` on (the default), one more flush goes right after the answer's first clause
("Sure, ", "The sky is blue. "), so the TTS starts speaking it at once instead of waiting for
its chunk schedule to fill: the first audio comes a clause after the first token. The caller
(the voice loop's turn runner, or `voxloop chat`) cancels the turn from outside on barge-in or
hang-up; cleanup (abort the TTS context, clear queued audio) then runs shielded with a short
deadline, and the history keeps only the words the user heard, as told by the output's playout
report.

Every moment is marked on the turn's `TurnTimeline`, on the conversation's one clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio
import anyio.abc

from agent.audio import StreamResampler, decode_g711
from agent.conversation import ToolRecord, TurnRecord
from agent.errors import AudioDeviceError, LLMError, VoxloopError, sole
from agent.events import AgentText, Event, ToolCalled, ToolFinished
from agent.interfaces import (
    LLM,
    TTS,
    AudioOutput,
    ChatMessage,
    EncodedAudioOutput,
    LLMChunk,
    TextDelta,
    ToolCall,
    ToolSchema,
    TTSStream,
)
from agent.text import TextChunker
from agent.timeline import Clock, MonotonicClock
from agent.tools import (
    ReplyChunk,
    ToolBox,
    ToolResult,
    ToolRound,
    ToolsFinished,
    ToolsStarted,
    reply_with_tools,
)

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
        toolbox: ToolBox | None = None,
        max_tool_rounds: int = 4,
        tool_filler: str = "One moment.",
        tool_filler_delay: float = 0.7,
        first_clause: bool = True,
    ) -> None:
        self.llm = llm
        self.tts = tts
        self.output = output
        self.clock: Clock = clock or MonotonicClock()
        self.sentence_mode = sentence_mode
        self.on_event = on_event
        self.toolbox = toolbox
        self.max_tool_rounds = max_tool_rounds
        self.tool_filler = tool_filler
        self.tool_filler_delay = tool_filler_delay
        self.first_clause = first_clause
        self._tool_rounds: list[tuple[ToolRound, int]] = []  # this turn's, with sent chars
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
        say: str | None = None,
        go_ahead: anyio.Event | None = None,
        on_hold: Callable[[], None] | None = None,
    ) -> TurnRecord:
        """Answer ``user_text``; fill and return ``record`` (a new one if None).

        ``on_audio`` is called once, when the answer's first audio reaches the output. With
        ``say``, the agent speaks that text instead of asking the LLM (a greeting) and
        ``user_text`` is not added to the history. ``go_ahead``: the turn is tentative (the
        user only paused) until this event is set; tools are not run before it, and
        ``on_hold`` is called when a tool round starts waiting for it.

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
        if say is None:
            self.history.append(ChatMessage("user", user_text))
        self.output.mark()
        stream: TTSStream | None = None
        spoken: list[str] = []
        try:
            stream = await self.tts.open_context()
            record.tts_context = stream.context_id
            connection = getattr(stream, "connection_id", None)  # optional (see TTSStream)
            record.tts_connection = connection if isinstance(connection, int) else None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._speak, stream, record, spoken, say, go_ahead, on_hold)
                tg.start_soon(self._play, stream, record, on_audio)
        except BaseException as err:
            # A failure that names its cause (the TTS socket lost mid-turn, an output error)
            # ends the turn: error recorded, what was heard kept, the session lives on.
            # Cancellation and anything else: clean up, then re-raise.
            named = sole(err, VoxloopError)
            record.interrupted = True
            if named is not None:
                record.error, record.cause = str(named), named
                if not isinstance(named, AudioDeviceError):  # the voice loop reports those
                    log.warning("turn %d: ended early: %s", record.index, named)
            elif not isinstance(err, anyio.get_cancelled_exc_class()):
                record.error, record.cause = repr(err), err
            # A tentative turn that never stood had its output held from its start.
            held = go_ahead is not None and not go_ahead.is_set()
            await self._cleanup(stream, held_only=held)
            self._finish(record, stream, spoken)
            if named is None:
                raise
            return record
        self._finish(record, stream, spoken)
        return record

    async def _speak(
        self,
        stream: TTSStream,
        record: TurnRecord,
        spoken: list[str],
        say: str | None = None,
        go_ahead: anyio.Event | None = None,
        on_hold: Callable[[], None] | None = None,
    ) -> None:
        """LLM deltas → chunker → socket, with tool rounds between; then exactly one flush
        after the last text, and the close.

        Text the model says before its tool calls gets a flush of its own at once, so it plays
        while the tools run; if a round takes longer than `tool_filler_delay`, a short filler
        is said (and flushed).
        """
        text = _Spoken(
            TextChunker(sentence_mode=self.sentence_mode),
            spoken,
            go_ahead=go_ahead,
            on_hold=on_hold,
            clause_pending=self.first_clause,
        )
        record.timeline.mark("llm_request", self.clock.now())
        try:
            if self.toolbox is None or say is not None:  # no tools: the model's stream as is
                source = self.llm if say is None else _Says(say)
                async with aclosing(source.stream(self.history)) as chunks:
                    async for chunk in chunks:
                        await self._take(chunk, stream, record, text, None)
            else:
                await self._speak_with_tools(self.toolbox, stream, record, text)
        except* LLMError as failed:  # the tool path's task group wraps it in a group
            err = failed.exceptions[0]
            log.warning("turn %d: LLM failed mid-turn: %s", record.index, err)
            record.error, record.cause = str(err), err
        await self._say_rest(stream, record, text)
        record.agent_text = "".join(text.full)
        if text.unflushed:
            await stream.flush()
            record.timeline.mark("flush_sent", self.clock.now())
        await stream.close()

    async def _speak_with_tools(
        self, toolbox: ToolBox, stream: TTSStream, record: TurnRecord, text: _Spoken
    ) -> None:
        """The reply with tool rounds (`reply_with_tools`), a filler task beside it."""
        reply = reply_with_tools(
            self.llm, self.history, toolbox, max_rounds=self.max_tool_rounds, record_reply=False
        )
        async with anyio.create_task_group() as fillers, aclosing(reply) as chunks:
            async for chunk in chunks:
                await self._take(chunk, stream, record, text, fillers)
            fillers.cancel_scope.cancel()

    async def _take(
        self,
        chunk: ReplyChunk | ToolCall,
        stream: TTSStream,
        record: TurnRecord,
        text: _Spoken,
        fillers: anyio.abc.TaskGroup | None,
    ) -> None:
        """One piece of the reply: text to the socket, or a tool round's edge (a call the
        model makes when no tools were offered is ignored)."""
        now, timeline = self.clock.now(), record.timeline
        if isinstance(chunk, TextDelta):  # the hot path: once per token
            if text.filler is not None:
                text.filler.cancel()
                text.filler = None
            marks = timeline.marks  # known names: set directly
            if "first_token" not in marks:
                marks["first_token"] = now
            marks["last_token"] = now
            text.full.append(chunk.text)
            for piece in text.chunker.push(chunk.text):
                await self._send(stream, piece, record, text.spoken)
                text.unflushed = True
                if text.clause_pending and _ends_clause(text.spoken, FIRST_CLAUSE_MAX_WORDS):
                    text.clause_pending = False
                    await stream.flush()  # the first clause: the TTS speaks it now
                    text.unflushed = False
        elif isinstance(chunk, ToolsStarted):
            if text.go_ahead is not None:  # a tentative turn runs no tool before it stands
                if not text.go_ahead.is_set() and text.on_hold is not None:
                    text.on_hold()
                await text.go_ahead.wait()
                now = self.clock.now()
            timeline.mark_first("first_tool_call", now)
            await self._say_rest(stream, record, text)
            if text.unflushed:  # what was said before the calls plays while they run
                await stream.flush()
                text.unflushed = False
            self._tool_rounds.append((chunk.round, len("".join(text.spoken))))
            self._tools_started(record, chunk, now)
            if self.tool_filler and text.filler is None and fillers is not None:
                text.filler = anyio.CancelScope()
                fillers.start_soon(self._filler, stream, record, text.spoken, text.filler)
        elif isinstance(chunk, ToolsFinished):
            self._tools_finished(record, chunk, now)

    async def _say_rest(self, stream: TTSStream, record: TurnRecord, text: _Spoken) -> None:
        """Send what the chunker still holds (a partial word at the end of the text)."""
        for piece in text.chunker.finish():
            await self._send(stream, piece, record, text.spoken)
            text.unflushed = True

    async def _filler(
        self, stream: TTSStream, record: TurnRecord, spoken: list[str], scope: anyio.CancelScope
    ) -> None:
        """After `tool_filler_delay` with no new text, say the filler (cancelled by text)."""
        with scope:
            await anyio.sleep(self.tool_filler_delay)
            await self._send(stream, self.tool_filler.strip() + " ", record, spoken)
            await stream.flush()

    def _tools_started(self, record: TurnRecord, started: ToolsStarted, now: float) -> None:
        for call in started.round.calls:
            record.tools.append(ToolRecord(call.id, call.name, call.arguments))
            self._emit(ToolCalled(record.index, call.id, call.name, call.arguments, now))

    def _tools_finished(self, record: TurnRecord, finished: ToolsFinished, now: float) -> None:
        record.timeline.mark("tool_results", now)
        for result in finished.round.results:
            self._land_tool(record, result, now)

    def _land_tool(self, record: TurnRecord, result: ToolResult, now: float) -> None:
        """Write a tool's result into the turn's record (once) and tell the listener."""
        for entry in record.tools:
            if entry.call_id != result.call.id or entry.outcome != "pending":
                continue
            if result.kind == "pending":
                return
            entry.outcome = tool_outcome(result)
            entry.result = result.content
            entry.seconds = round(result.seconds, 4)
            entry.spoken = not result.late
            self._emit(
                ToolFinished(
                    record.index,
                    entry.call_id,
                    entry.name,
                    entry.outcome,
                    entry.result,
                    result.seconds,
                    now,
                )
            )

    async def _send(
        self, stream: TTSStream, piece: str, record: TurnRecord, spoken: list[str]
    ) -> None:
        await stream.send(piece)
        now = self.clock.now()
        marks = record.timeline.marks
        if "first_text_sent" not in marks:
            marks["first_text_sent"] = now
        spoken.append(piece)
        if self.on_event is not None:
            self.on_event(AgentText(record.index, piece, now))

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
            if chunk.encoding != "pcm":
                output = self.output
                if isinstance(output, EncodedAudioOutput) and chunk.encoding in output.encodings:
                    await output.play_encoded(chunk.encoding, pcm)  # e.g. μ-law to a phone line
                    continue
                pcm = decode_g711(chunk.encoding, pcm)
            if chunk.sample_rate != rate:  # a TTS format other than the output's: convert
                if resampler is None:
                    resampler = StreamResampler(chunk.sample_rate, rate)
                pcm = resampler.process(pcm)
            await self.output.play(pcm)
        timeline.mark("final_received", self.clock.now())
        await self.output.drain()

    async def _cleanup(self, stream: TTSStream | None, *, held_only: bool = False) -> None:
        """Stop the TTS context and silence the output (``held_only``: see `AudioOutput.clear`);
        shielded, bounded."""
        with anyio.move_on_after(CLEANUP_DEADLINE_S, shield=True):
            self.output.clear(held_only=held_only)
            if stream is not None:
                await stream.abort()

    def _finish(self, record: TurnRecord, stream: TTSStream | None, spoken: list[str]) -> None:
        """Settle what was heard (from the output's playout report) and keep it in the
        history: the text said before each tool round in that round's assistant message, the
        rest in a final one; cut to what was heard when the turn was interrupted."""
        sent = "".join(spoken)
        if not record.agent_text:
            record.agent_text = sent.strip()
        if record.interrupted and stream is not None:
            played = self.output.samples_played / self.output.sample_rate
            heard = stream.heard_text(played)
        elif record.interrupted:
            heard = ""
        else:
            heard = sent.strip()
        record.heard_text = heard
        start = 0
        for tool_round, upto in self._tool_rounds:
            message = tool_round.messages()[0]
            if record.interrupted:
                message.content = _part(heard, sent, start, upto)
                message.interrupted = len(heard) < len(sent[:upto].strip())
            self._sync_tools(record, tool_round)
            start = upto
        tail = _part(heard, sent, start, len(sent)) if self._tool_rounds else heard
        self._tool_rounds = []
        if tail or not record.interrupted:
            self.history.append(ChatMessage("assistant", tail, interrupted=record.interrupted))
        record.timeline.mark("turn_end", self.clock.now())

    def _sync_tools(self, record: TurnRecord, tool_round: ToolRound) -> None:
        """Results that landed while the turn was being cancelled (cancelled tools)."""
        now = self.clock.now()
        for result in tool_round.results:
            self._land_tool(record, result, now)

    def late_result(self, record: TurnRecord, result: ToolResult) -> None:
        """A kept tool finished after its turn was interrupted: recorded, not spoken."""
        self._land_tool(record, result, self.clock.now())


@dataclass
class _Spoken:
    """The text side of one turn: the chunker, what went to the socket, what is unflushed."""

    chunker: TextChunker
    spoken: list[str]
    full: list[str] = field(default_factory=list)
    unflushed: bool = False
    go_ahead: anyio.Event | None = None
    on_hold: Callable[[], None] | None = None  # told when a tool round waits for go_ahead
    clause_pending: bool = False  # the first clause still gets a flush of its own
    filler: anyio.CancelScope | None = None


class _Says:
    """An `LLM` that answers with one fixed text (what `respond(say=...)` speaks)."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        yield TextDelta(self.text)


_CLAUSE_END = frozenset(".!?…,;:")
_SENTENCE_END = frozenset(".!?…")


#: The first clause is flushed at its end, or once this many words have gone without one (a
#: model that writes long sentences slowly would otherwise keep the voice waiting). Five, not
#: six: one word less for the LLM to write and ~20 ms less first synthesis, for a word error
#: rate of the rendering whisper reads back of 0.039 against 0.036 (whole sentences: 0.033;
#: `bench.first_chunk`, 16 answers); the local TTS server uses the same number.
FIRST_CLAUSE_MAX_WORDS = 5


def _ends_clause(spoken: list[str], max_words: int) -> bool:
    """The text sent so far ends a clause worth speaking alone: a sentence ("Sure! ", "It is
    blue. "), two words or more before a comma, semicolon or colon ("Well, " is too short), or
    ``max_words`` words without either."""
    if len("".join(spoken).split()) >= max_words:
        return True
    last = spoken[-1].rstrip().rstrip("\"')]}”’»")
    if not last or last[-1] not in _CLAUSE_END:
        return False
    if last[-1] in _SENTENCE_END:
        return True
    return len("".join(spoken).split()) >= 2


def tool_outcome(result: ToolResult) -> str:
    """ok, error, timeout or cancelled, for records and events."""
    if result.kind in ("ok", "timeout", "cancelled", "pending"):
        return result.kind
    return "error"


def _part(heard: str, sent: str, start: int, end: int) -> str:
    """The heard part of ``sent[start:end]``: ``heard`` is a word prefix of ``sent``."""
    offset = len(sent[:start].strip())
    length = len(sent[start:end].strip())
    if start and heard[offset : offset + 1] == " ":
        offset += 1
    return heard[offset : offset + length].strip()
