"""A conversation session and its turns: LLM tokens into the TTS stream as they arrive.

A turn is one task group under one cancel scope (DESIGN.md):

    LLM stream ──► TextChunker ──► TTSStream.send ... flush, close      (the speaker task)
    TTSStream.chunks ──► AudioOutput.play ──► drain                    (the player task)

`flush: true` goes out exactly once per turn, right after the last text. Barge-in (or any caller)
calls :meth:`Session.interrupt`, which cancels the scope; cleanup (abort the TTS context, clear
queued audio) then runs shielded with a short deadline, and the history keeps only the words the
user actually heard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio

from agent.errors import VoxloopError, sole
from agent.interfaces import LLM, TTS, AudioOutput, ChatMessage, TTSStream
from agent.errors import LLMError
from agent.metrics import TurnMetrics
from agent.text import TextChunker

log = logging.getLogger("voxloop.session")

#: How long shielded cleanup may take after a cancel (close_context, clear the output).
CLEANUP_DEADLINE_S = 0.5


@dataclass
class TurnResult:
    """How a turn ended."""

    user_text: str
    full_text: str  # everything the LLM produced
    heard_text: str  # what reached the user's ears (all of it, unless interrupted)
    interrupted: bool = False
    error: BaseException | None = None
    metrics: TurnMetrics = field(default_factory=TurnMetrics)


@dataclass
class SessionHooks:
    """Optional callbacks for display and logging (all called on the event loop)."""

    on_text_sent: Callable[[str], None] | None = None
    on_turn_end: Callable[[TurnResult], None] | None = None
    on_first_token: Callable[[], None] | None = None
    on_first_audio: Callable[[], None] | None = None


class Session:
    """History plus the machinery to run turns on one LLM, one TTS connection and one output."""

    def __init__(
        self,
        llm: LLM,
        tts: TTS,
        output: AudioOutput,
        *,
        system_prompt: str | None = None,
        sentence_mode: bool = False,
        hooks: SessionHooks | None = None,
    ) -> None:
        self.llm = llm
        self.tts = tts
        self.output = output
        self.sentence_mode = sentence_mode
        self.hooks = hooks or SessionHooks()
        self.history: list[ChatMessage] = []
        if system_prompt:
            self.history.append(ChatMessage("system", system_prompt))
        self._scope: anyio.CancelScope | None = None
        self.turns = 0

    @property
    def speaking(self) -> bool:
        """True while a turn is running (thinking or speaking)."""
        return self._scope is not None

    def interrupt(self) -> bool:
        """Cancel the running turn (barge-in). Returns False when no turn was running."""
        if self._scope is None:
            return False
        self._scope.cancel()
        return True

    async def respond(self, user_text: str, *, user_speech_end: float | None = None) -> TurnResult:
        """Run one turn for ``user_text`` and return how it ended.

        Cancelling this coroutine from outside (or :meth:`interrupt`) ends the turn as
        interrupted: the TTS context is aborted and queued audio cleared (shielded, bounded), and
        the history keeps the words heard so far. Outside cancellation is re-raised afterwards.

        An LLM failure mid-stream, or a failure that names its cause (a `VoxloopError`, such as
        the TTS socket lost mid-turn), does not raise: the turn ends with ``result.error`` set,
        the words spoken so far are kept, and the next turn works. Anything else is re-raised
        after the same cleanup.
        """
        self.turns += 1
        metrics = TurnMetrics(turn=self.turns)
        metrics.user_speech_end = user_speech_end
        metrics.transcript_ready = time.monotonic()
        self.history.append(ChatMessage("user", user_text))
        result = TurnResult(user_text=user_text, full_text="", heard_text="", metrics=metrics)
        self.output.mark()
        stream: TTSStream | None = None
        spoken: list[str] = []
        scope = anyio.CancelScope()
        self._scope = scope
        try:
            with scope:
                stream = await self.tts.open_context()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._speak, stream, metrics, spoken, result)
                    tg.start_soon(self._play, stream, metrics)
            if scope.cancel_called:
                result.interrupted = True
                metrics.interrupted_at = time.monotonic()
        except BaseException as err:
            # A failure that names its cause (VoxloopError: the TTS socket lost mid-turn, an
            # output error) ends the turn: error recorded, what was heard kept, the session
            # lives on. Outside cancellation and anything else: clean up, then re-raise.
            named = sole(err, VoxloopError)
            result.interrupted = True
            result.error = err if not isinstance(err, anyio.get_cancelled_exc_class()) else None
            if named is not None:
                result.error = named
                metrics.error = str(named)
                log.warning("turn %d: ended early: %s", metrics.turn, named)
            await self._cleanup(stream)
            self._finish(result, stream, spoken)
            if named is None:
                raise
            return result
        finally:
            self._scope = None
        if result.interrupted:
            await self._cleanup(stream)
        self._finish(result, stream, spoken)
        return result

    async def _speak(
        self,
        stream: TTSStream,
        metrics: TurnMetrics,
        spoken: list[str],
        result: TurnResult,
    ) -> None:
        """LLM deltas → chunker → socket; then exactly one flush and the close."""
        chunker = TextChunker(sentence_mode=self.sentence_mode)
        full: list[str] = []
        metrics.llm_request = time.monotonic()
        try:
            async with aclosing(self.llm.stream(self.history)) as deltas:
                async for delta in deltas:
                    now = time.monotonic()
                    if metrics.first_token is None:
                        metrics.first_token = now
                        if self.hooks.on_first_token is not None:
                            self.hooks.on_first_token()
                    metrics.last_token = now
                    metrics.deltas += 1
                    full.append(delta)
                    for piece in chunker.push(delta):
                        await self._send(stream, piece, metrics, spoken)
        except LLMError as err:
            log.warning("turn %d: LLM failed mid-turn: %s", metrics.turn, err)
            result.error = err
            metrics.error = str(err)
        for piece in chunker.finish():
            await self._send(stream, piece, metrics, spoken)
        result.full_text = "".join(full)
        if spoken:
            await stream.flush()
            metrics.flush_sent = time.monotonic()
        await stream.close()

    async def _send(
        self, stream: TTSStream, piece: str, metrics: TurnMetrics, spoken: list[str]
    ) -> None:
        await stream.send(piece)
        if metrics.first_text_sent is None:
            metrics.first_text_sent = time.monotonic()
        spoken.append(piece)
        metrics.text_pieces += 1
        if self.hooks.on_text_sent is not None:
            self.hooks.on_text_sent(piece)

    async def _play(self, stream: TTSStream, metrics: TurnMetrics) -> None:
        """Speech chunks → output, then wait until they have been played."""
        async for chunk in stream.chunks():
            if not chunk.pcm:
                continue
            if metrics.first_audio_byte is None:
                metrics.first_audio_byte = time.monotonic()
                if self.hooks.on_first_audio is not None:
                    self.hooks.on_first_audio()
            await self.output.play(chunk.pcm)
        metrics.final_received = time.monotonic()
        await self.output.drain()

    async def _cleanup(self, stream: TTSStream | None) -> None:
        """Stop the TTS context and silence the output; shielded, bounded."""
        with anyio.move_on_after(CLEANUP_DEADLINE_S, shield=True):
            self.output.clear()
            if stream is not None:
                await stream.abort()

    def _finish(self, result: TurnResult, stream: TTSStream | None, spoken: list[str]) -> None:
        sent = "".join(spoken).strip()
        if not result.full_text:
            result.full_text = sent
        if result.interrupted and stream is not None:
            played = self.output.samples_played / self.output.sample_rate
            result.heard_text = stream.heard_text(played)
        elif result.interrupted:
            result.heard_text = ""
        else:
            result.heard_text = sent
        if result.heard_text or not result.interrupted:
            self.history.append(
                ChatMessage("assistant", result.heard_text, interrupted=result.interrupted)
            )
        result.metrics.turn_end = time.monotonic()
        if self.hooks.on_turn_end is not None:
            self.hooks.on_turn_end(result)
