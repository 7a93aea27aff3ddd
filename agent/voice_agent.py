"""The voice agent: microphone → echo guard → VAD → turn-taking → turns (STT → LLM → TTS → output).

`Agent` holds what answers (instructions, STT, LLM, TTS, options); `Agent.conversation(transport)`
runs one conversation on a transport and yields typed events. The conversation is a thin shell
around `agent.turntaking.TurnTaking`: every microphone frame goes through the echo guard and
VAD, VAD's events are fed to the state machine with their time, and the actions it returns are
executed at once, synchronously, so a decision reaches the output within the frame that caused
it. Utterances reach the one turn runner through one bounded memory stream; each turn runs
under one cancel scope that barge-in and hang-up cancel.

Times are on one clock, the transport's (`Transport.now()`): VAD's stream times, the turn's
marks and the output's playout report all use it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent import vad
from agent.audio import AudioFrame
from agent.conversation import ConversationLog, Segment, TurnRecord
from agent.early_stt import FADE_MS, EarlyTranscriber
from agent.echo import EchoConfig, EchoGuard
from agent.errors import AudioDeviceError, VoxloopError
from agent.events import (
    AgentSaid,
    Dtmf,
    ErrorEvent,
    Event,
    Interrupted,
    StateChanged,
    TurnFinished,
    UserSaid,
)
from agent.interfaces import (
    LLM,
    STT,
    TTS,
    ChatMessage,
    FramePushTransport,
    Transcript,
    Transport,
    TurnDetector,
    TurnGuess,
)
from agent.session import Session
from agent.tools import Tool, ToolBox, ToolResult
from agent.turntaking import (
    Action,
    BargeInRules,
    CancelTurn,
    ClearOutput,
    CommitTurn,
    Floor,
    HangUp,
    PauseOutput,
    ResumeOutput,
    Say,
    SpeechConfirmed,
    SpeechEnded,
    StartTurn,
    TurnAudioStarted,
    TurnEnded,
    TurnTaking,
    TurnTakingEvent,
    UserPaused,
    UserResumed,
    VoiceLost,
    VoiceOnset,
)

log = logging.getLogger("voxloop.voice")

#: What a turn answers: what the user said (so far, for a tentative turn), or a text the agent
#: says (`say`).
Utterance = vad.SpeechEnded | vad.SpeechPaused | str
EVENT_BUFFER = 512  # events kept for a reader that falls behind; newer ones are dropped beyond


@dataclass(frozen=True)
class EndOfTurn:
    """When the user's turn ends, and what happens at their first short pause.

    At ``pause_ms`` of silence the agent starts answering the utterance so far with the output
    held (``BargeInRules.think_ahead``), and asks the turn detector if it has one: "complete"
    ends the turn at once. Otherwise the turn ends after ``vad.min_silence_ms`` of silence, or,
    with a turn detector that said "not complete", after ``unsure_silence_ms``.

    ``pause_ms`` (100) counts from the VAD's end of speech (webrtcvad's hangover undone), so it
    falls about when webrtcvad first hears a frame unvoiced. The words so far went to
    speech-to-text earlier, when the voice faded (`AgentOptions.transcribe_early`), and the
    transcript is what "complete" waits for. 200 ms made the median end of turn ~90 ms later
    with no fewer cut-offs (`bench.turn_taking`).
    """

    pause_ms: int = 100
    unsure_silence_ms: int = 1000

    def __post_init__(self) -> None:
        for name in ("pause_ms", "unsure_silence_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EndOfTurn.{name} must be a positive integer (ms), got {value!r}")
        if self.pause_ms >= self.unsure_silence_ms:
            raise ValueError(
                f"EndOfTurn.pause_ms ({self.pause_ms}) must be below unsure_silence_ms "
                f"({self.unsure_silence_ms})"
            )


@dataclass
class AgentOptions:
    """How the agent listens and yields the floor.

    ``vad.min_silence_ms`` is the end-of-turn silence without a turn detector: lower is snappier
    but cuts users who pause mid-sentence. ``end_of_turn``: the first pause, where the answer
    starts early and the turn detector is asked. ``echo``: switch it off with headphones or on
    phone lines.
    """

    vad: vad.VadConfig = field(default_factory=lambda: vad.VadConfig(min_silence_ms=500))
    end_of_turn: EndOfTurn = field(default_factory=EndOfTurn)
    barge_in: BargeInRules = field(default_factory=BargeInRules)
    echo: EchoConfig = field(default_factory=EchoConfig)
    min_transcript_chars: int = 2
    sentence_mode: bool = False
    max_tool_rounds: int = 4
    tool_filler: str = "One moment."  # said when tools take longer than tool_filler_delay
    tool_filler_delay: float = 0.7
    #: Flush the answer's first clause to the TTS at once: a TTS that waits for its chunk
    #: schedule (the ElevenLabs service) speaks it sooner; a barge-in then still pays for the
    #: flushed clause. Our local server starts on the first clause by itself: the app turns
    #: this off for it.
    first_clause: bool = True
    #: Warm STT, LLM and TTS while the user is still silent (a first request to a freshly loaded
    #: engine is slow). It costs a few tokens and characters: on by default for local engines.
    warm_up: bool = False
    #: Start speech-to-text when the voice fades (`agent.early_stt`), ~80 ms before the VAD's
    #: pause. A fade that is not the end wastes one STT call (one or two per sentence): the
    #: apps turn this off for an STT service that bills by the request.
    transcribe_early: bool = True


class Agent:
    """A voice agent: its instructions and the STT, LLM and TTS it answers with.

    An `Agent` is a template: each `conversation()` gets its own history and turn-taking.
    ``turn_detector``: an end-of-turn model asked when the user pauses (e.g.
    `plugins.local.SmartTurn`); None ends turns on silence alone."""

    def __init__(
        self,
        *,
        stt: STT,
        llm: LLM,
        tts: TTS,
        instructions: str = "",
        tools: Sequence[Tool[..., Any]] = (),
        options: AgentOptions | None = None,
        turn_detector: TurnDetector | None = None,
    ) -> None:
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.instructions = instructions
        self.tools = tuple(tools)
        self.options = options or AgentOptions()
        self.turn_detector = turn_detector

    @asynccontextmanager
    async def conversation(self, transport: Transport) -> AsyncIterator[Conversation]:
        """Run a conversation on ``transport`` for the duration of the block.

        Iterate the `Conversation` for its events; the iteration ends when the conversation
        does (the microphone ended, or `Conversation.hang_up`). Leaving the block hangs up: a
        turn still running is cancelled (its cleanup runs, the history keeps what was heard).

        Raises `AudioDeviceError` on leaving the block if the microphone or the speaker was
        lost (listening stopped at once, the running turn ended as on a hang-up).
        """
        conversation = Conversation(self, transport)
        async with conversation.toolbox, anyio.create_task_group() as tg:
            conversation._start(tg)
            try:
                yield conversation
            finally:
                conversation.hang_up()
                with anyio.CancelScope(shield=True):
                    await conversation.finished.wait()
        if conversation.device_error is not None:
            raise conversation.device_error

    async def run(self, transport: Transport) -> ConversationLog:
        """Converse on ``transport`` until its microphone ends; return the record.

        Cancelling hangs up (the running turn's cleanup is shielded). Raises `AudioDeviceError`
        if a device is lost."""
        async with self.conversation(transport) as conversation:
            await conversation.finished.wait()
        return conversation.log


class Conversation:
    """One conversation in progress: the events (``async for event in conversation``), the
    record (`log`), the history (`session.history`), and `hang_up()`."""

    def __init__(self, agent: Agent, transport: Transport) -> None:
        self.agent = agent
        self.transport = transport
        self.output = transport.output
        options = agent.options
        config = dataclasses.replace(
            options.vad,
            sample_rate=transport.sample_rate,  # the mic runs at the transport's rate
            pause_ms=_pause_ms(agent),
            fade_ms=(options.vad.fade_ms or FADE_MS) if options.transcribe_early else None,
        )
        if agent.turn_detector is not None:
            config = dataclasses.replace(
                config, min_silence_ms=options.end_of_turn.unsure_silence_ms
            )
        self.detector = vad.SpeechDetector(config)
        self.early_stt = EarlyTranscriber(agent.stt) if config.fade_ms is not None else None
        self.guard = EchoGuard(options.echo)
        self.floor: TurnTaking[Utterance] = TurnTaking(options.barge_in)
        self.toolbox = ToolBox(agent.tools, context=self, on_late_result=self._late_result)
        self.session = Session(
            agent.llm,
            agent.tts,
            self.output,
            instructions=agent.instructions,
            clock=transport,
            sentence_mode=options.sentence_mode,
            on_event=self._emit,
            toolbox=self.toolbox if agent.tools else None,
            max_tool_rounds=options.max_tool_rounds,
            tool_filler=options.tool_filler,
            tool_filler_delay=options.tool_filler_delay,
            first_clause=options.first_clause,
        )
        self._end_requested = False
        self._digits: list[str] = []
        self.log = ConversationLog(sample_rate=transport.sample_rate)
        self.finished = anyio.Event()
        self.device_error: AudioDeviceError | None = None
        self.vad_seconds = 0.0  # CPU time in echo guard + VAD, for the benchmark
        self.events_dropped = 0
        self.withdrawn = 0  # tentative turns dropped uncommitted (the user went on, mostly)
        self._events_in, self._events_out = anyio.create_memory_object_stream[Event](EVENT_BUFFER)
        self._turns_in: MemoryObjectSendStream[tuple[TurnRecord, Utterance]]
        self._turns_out: MemoryObjectReceiveStream[tuple[TurnRecord, Utterance]]
        self._turns_in, self._turns_out = anyio.create_memory_object_stream(2)
        self._listening = anyio.CancelScope()
        self._running: tuple[TurnRecord, anyio.CancelScope] | None = None
        self._tentative: _Tentative | None = None  # the turn started at a pause, uncommitted
        self._pauses = 0  # SpeechPaused so far: a turn detector's late verdict is ignored
        self._tasks: anyio.abc.TaskGroup | None = None
        self._silent_at: float | None = None
        self._state = self.floor.state

    # -- what a user reads ---------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events_out.__aiter__()

    @property
    def history(self) -> list[ChatMessage]:
        """The conversation as the model sees it (instructions first, answers cut to what
        was heard)."""
        return list(self.session.history)

    @property
    def state(self) -> str:
        """listening, user speaking, thinking, speaking, paused, interrupted or ended."""
        return self.floor.state

    @property
    def idle(self) -> bool:
        """Nobody speaking, no turn running or queued."""
        return self.state == "listening" and not self.floor.queued and self._running is None

    def speaking_for(self) -> float:
        """Seconds the running turn's answer has been audible (0 before its first sample)."""
        if self._running is None or self._running[0].at("first_audio_byte") is None:
            return 0.0  # no audio of this turn yet (the output still reports the last turn's)
        first = self.output.first_played_at
        return 0.0 if first is None else max(0.0, self.transport.now() - first)

    def say(self, text: str) -> None:
        """Have the agent say ``text`` as a turn of its own (a greeting), now or, if a turn
        holds the floor, after it. The user can interrupt it like any answer."""
        self._feed(Say(text), self.transport.now())

    def end_after_turn(self) -> None:
        """Hang up once the running turn has been spoken (the `end_call` tool)."""
        self._end_requested = True

    def press(self, digit: str) -> None:
        """A key the caller pressed (phone transports call this): a `Dtmf` event, kept for the
        `read_digits` tool."""
        self._digits.append(digit)
        self._emit(Dtmf(digit, self.transport.now()))

    def take_digits(self) -> str:
        """The keys pressed since the last call (the `read_digits` tool)."""
        digits, self._digits = "".join(self._digits), []
        return digits

    def hang_up(self) -> None:
        """End the conversation: stop listening, cancel the running turn (the history keeps
        what was heard), start no queued turn. Safe to call more than once."""
        self._listening.cancel()
        self._feed(HangUp(), self.transport.now())
        self._turns_in.close()

    # -- the loop ---------------------------------------------------------------------------------

    def _start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tasks = tg
        tg.start_soon(self._listen)
        tg.start_soon(self._run_turns)
        if self.agent.options.warm_up:
            tg.start_soon(self._warm_up)

    async def _warm_up(self) -> None:
        """One small request to each engine, so the first turn does not pay their start-up
        (model pages, the instructions' prompt cache, the voice's first synthesis). Bounded;
        a failure is only logged (the turn that follows reports it properly). Cancelling
        stops it."""
        agent = self.agent
        started = time.perf_counter()
        with anyio.move_on_after(10):
            try:
                silence = bytes(self.transport.sample_rate)  # half a second
                await agent.stt.transcribe(silence, self.transport.sample_rate)
                hello = [*self.session.history[:1], ChatMessage("user", "Hello.")]
                async with aclosing(agent.llm.stream(hello)) as chunks:
                    async for _chunk in chunks:
                        break  # the prompt is processed: that is the warm part
                stream = await agent.tts.open_context()
                try:
                    await stream.send("Hello. ")
                    await stream.flush()
                    async for chunk in stream.chunks():
                        if chunk.pcm:
                            break
                finally:
                    with anyio.CancelScope(shield=True):
                        await stream.abort()
            except Exception as err:  # a warm-up is a courtesy: never a failure
                log.info("warm-up skipped: %s", err)
                return
        log.info("engines warmed in %.0f ms", (time.perf_counter() - started) * 1000)

    async def _listen(self) -> None:
        """Microphone frames into the guard, VAD and the state machine, until the line ends."""
        self._emit(StateChanged(self.state, self.transport.now()))
        with self._listening:
            try:
                if isinstance(self.transport, FramePushTransport):
                    await self.transport.deliver_frames(self.handle_frame)
                else:
                    async for frame in self.transport.mic_frames():
                        self.handle_frame(frame)
            except AudioDeviceError as err:
                self._device_lost(err)
        self.hang_up()

    def handle_frame(self, frame: AudioFrame) -> None:
        """Echo guard, VAD and turn-taking for one microphone frame; acts at once."""
        started = time.perf_counter()
        pcm = self.guard.process(frame.pcm, self.output.level)
        if pcm is not frame.pcm:  # the guard gated it
            frame = AudioFrame(pcm, frame.sample_rate)
        events = self.detector.feed(frame)
        self.vad_seconds += time.perf_counter() - started
        for event in events:
            self._heard(event)

    def _heard(self, event: vad.VadEvent) -> None:
        """One VAD event into the state machine (and the turn detector, at a pause)."""
        if isinstance(event, vad.VoiceOnset):
            self._feed(VoiceOnset(), event.t)
        elif isinstance(event, vad.VoiceLost):
            self._feed(VoiceLost(), event.t)
        elif isinstance(event, vad.SpeechStarted):
            self._feed(SpeechConfirmed(onset=event.t_onset), event.t_confirmed)
        elif isinstance(event, vad.SpeechPaused):
            self._pauses += 1
            self._feed(UserPaused(event), event.t)
            detector = self.agent.turn_detector
            if detector is not None and self._tasks is not None:
                self._tasks.start_soon(self._ask_detector, detector, event, self._pauses)
        elif isinstance(event, vad.SpeechFading):
            if self.early_stt is not None and self._tasks is not None:
                self.early_stt.faded(event, self._tasks)
        elif isinstance(event, vad.SpeechResumed):
            self._feed(UserResumed(), event.t)
        elif isinstance(event, vad.SpeechEnded):
            self.log.segments.append(Segment("user", event.t_onset, event.t_end))
            self._feed(SpeechEnded(event), event.t_confirmed)

    async def _ask_detector(
        self, detector: TurnDetector, pause: vad.SpeechPaused, serial: int
    ) -> None:
        """Ask the turn detector about the utterance so far; "complete" ends the turn now, if
        the user is still silent in the same pause. A failure is logged and counts as unsure
        (the longer silence ends the turn). Cancelling abandons the verdict."""
        try:
            guess = await detector.predict(pause.audio.pcm, pause.audio.sample_rate)
        except Exception as err:  # a detector is an optimisation: never a failed turn
            log.warning("turn detector failed, waiting for the longer silence: %s", err)
            return
        tentative = self._tentative
        if tentative is None or tentative.serial != serial:
            tentative = None
        else:
            tentative.guess = guess
        if serial != self._pauses or not guess.complete:
            return  # the user went on, or the model is unsure: the longer silence decides
        if tentative is not None:
            # The words so far, from the tentative turn's STT (its answer needs them before it
            # can start anyway, so waiting for them costs the answer nothing): a phrase left
            # hanging ("a table for", "Thank you,") is not the end, whatever the voice did.
            with anyio.move_on_after(TRANSCRIPT_WAIT_S):
                await tentative.transcribed.wait()
            if serial != self._pauses:
                return
            if tentative.transcribed.is_set() and sounds_unfinished(tentative.record.transcript):
                tentative.record.timeline.durations_ms["turn_unfinished_words"] = 1.0
                return
            if self.floor.floor is not Floor.PREPARED and not tentative.on_hold:
                # Decided, but its answer is not ready to be heard: the turn ends when it is
                # (`_end_decided`), so a voice that comes back first (the next sentence after
                # "Hello!") withdraws the answer as at any pause, and nothing is lost.
                tentative.decided_at = self.detector.time
                return
        for event in self.detector.end_now():
            self._heard(event)

    def _end_decided(self, tentative: _Tentative | None) -> None:
        """End the user's turn now if the turn detector said "complete" at this pause and the
        tentative answer can be heard (its audio came), needs to stand (a tool round), or
        ended by itself."""
        if (
            tentative is None
            or tentative.decided_at is None
            or tentative is not self._tentative
            or tentative.serial != self._pauses
        ):
            return
        for event in self.detector.end_now():
            self._heard(event)

    def _feed(self, event: TurnTakingEvent[Utterance], now: float) -> None:
        for action in self.floor.feed(event, now):
            self._execute(action, now)
        if self.floor.state != self._state:
            self._state = self.floor.state
            self._emit(StateChanged(self._state, now))

    def _execute(self, action: Action[Utterance], now: float) -> None:
        if isinstance(action, PauseOutput):
            self._silent_at = self.output.pause()
        elif isinstance(action, ResumeOutput):
            self.output.resume()
            self._silent_at = None
        elif isinstance(action, ClearOutput):
            self.output.clear(held_only=action.held_only)
        elif isinstance(action, CancelTurn):
            self._cancel(action)
        elif isinstance(action, StartTurn):
            self._queue_turn(action)
        elif isinstance(action, CommitTurn):
            self._commit(action)

    def _cancel(self, action: CancelTurn) -> None:
        if self._running is None or self._running[0].index != action.turn:
            return
        record, scope = self._running
        if action.reason == "resumed":  # a tentative turn withdrawn: nothing was heard
            scope.cancel()
            return
        record.interrupted = True
        if action.reason == "barge-in":
            assert action.onset is not None and action.decided is not None
            timeline = record.timeline
            timeline.mark("barge_in_onset", action.onset)
            timeline.mark("barge_in_decided", action.decided)
            timeline.mark("output_silent", self._silent_at or action.decided)
            self._emit(Interrupted(record.index, action.onset, action.decided))
        elif record.error is None:
            record.error = (
                "conversation ended" if self.device_error is None else str(self.device_error)
            )
        scope.cancel()

    def _queue_turn(self, action: StartTurn[Utterance]) -> None:
        utterance = action.utterance
        record = TurnRecord(action.turn)
        timeline = record.timeline
        if isinstance(utterance, vad.SpeechPaused):
            timeline.mark("user_speech_start", utterance.t_onset)
            timeline.mark("user_speech_end", utterance.t_end)
            timeline.mark("user_paused", utterance.t)
            self._tentative = _Tentative(record, len(self.session.history), self._pauses)
        elif isinstance(utterance, vad.SpeechEnded):
            timeline.mark("user_speech_start", utterance.t_onset)
            timeline.mark("user_speech_end", utterance.t_end)
            timeline.mark("end_of_turn", utterance.t_confirmed)
        if not action.tentative:
            self.log.turns.append(record)
        self._turns_in.send_nowait((record, utterance))

    def _commit(self, action: CommitTurn[Utterance]) -> None:
        """The user's turn ended as the tentative turn assumed: it becomes the turn."""
        tentative, self._tentative = self._tentative, None
        if tentative is None or tentative.record.index != action.turn:
            return
        record, utterance = tentative.record, action.utterance
        assert isinstance(utterance, vad.SpeechEnded)
        record.timeline.mark("user_speech_end", utterance.t_end)
        ended = utterance.t_confirmed  # or when the detector decided it, if that was sooner
        if tentative.decided_at is not None:
            ended = min(ended, tentative.decided_at)
        record.timeline.mark("end_of_turn", ended)
        if tentative.guess is not None:
            _note_guess(record, tentative.guess)
        self.log.turns.append(record)
        if record.transcript:
            self._set_user_text(record)
        tentative.committed.set()
        for event in tentative.events:
            self._emit(event)

    async def _run_turns(self) -> None:
        """One turn at a time, in order, until the conversation ends."""
        try:
            async with self._turns_out:
                async for record, utterance in self._turns_out:
                    await self._run_turn(record, utterance)
        finally:
            self.finished.set()
            self._events_in.close()

    async def _run_turn(self, record: TurnRecord, utterance: Utterance) -> None:
        """STT, then the answer, under one cancel scope (barge-in and hang-up cancel it).

        A tentative turn (started at a pause) that ends uncommitted (withdrawn because the
        user went on, or ended by itself) leaves no trace: its history, record and events are
        dropped."""
        scope = anyio.CancelScope()
        self._running = (record, scope)
        tentative = self._tentative
        if tentative is not None and tentative.record is not record:
            tentative = None
        if self.floor.turn != record.index:  # hung up before it started
            record.error = "conversation ended"
            scope.cancel()
        elif self.floor.floor in (Floor.INTERRUPTED, Floor.WITHDRAWING):
            record.interrupted = self.floor.floor is Floor.INTERRUPTED  # cancelled before it ran
            scope.cancel()
        try:
            with scope:
                await self._answer(record, utterance, tentative)
        finally:
            self._running = None
            self._end_decided(tentative)  # it ended by itself after the detector's "complete"
            if tentative is not None and not tentative.committed.is_set():
                self._withdraw(tentative)
            else:
                self._settle(record)
            self._feed(TurnEnded(record.index), self.transport.now())
            if self._end_requested:
                self.hang_up()

    def _withdraw(self, tentative: _Tentative) -> None:
        """Forget an uncommitted turn: the history back to before it, its events dropped."""
        if self._tentative is tentative:
            self._tentative = None
        del self.session.history[tentative.history_length :]
        self.withdrawn += 1
        log.info(
            "tentative turn %d dropped uncommitted: the user went on, or it ended early "
            "(%d so far)",
            tentative.record.index,
            self.withdrawn,
        )

    async def _answer(
        self, record: TurnRecord, utterance: Utterance, tentative: _Tentative | None
    ) -> None:
        turn = record.index

        def audio_started() -> None:
            self._feed(TurnAudioStarted(turn), self.transport.now())
            self._end_decided(tentative)

        def needs_go_ahead() -> None:  # a tentative turn's tool round waits for the commit
            if tentative is not None:
                tentative.on_hold = True
            self._end_decided(tentative)

        if isinstance(utterance, str):  # the agent speaks first (a greeting)
            await self.session.respond("", record, on_audio=audio_started, say=utterance)
            return
        try:
            transcript = await self._transcribe(record, utterance)
        except VoxloopError as err:  # a named STT failure ends this turn, not the conversation
            log.warning("turn %d: speech to text failed: %s", record.index, err)
            record.error, record.cause = str(err), err
            return
        now = self.transport.now()
        record.transcript = transcript.text.strip()
        record.timeline.mark("transcript", now)
        record.timeline.durations_ms["stt_compute"] = round(transcript.compute_seconds * 1000, 2)
        if tentative is not None:
            tentative.transcribed.set()
        if tentative is None or tentative.committed.is_set():
            self._set_user_text(record)
        self._emit(UserSaid(record.index, record.transcript, now))
        if len(record.transcript) < self.agent.options.min_transcript_chars:
            record.error = "nothing understood"
            return
        await self.session.respond(
            record.transcript,
            record,
            on_audio=audio_started,
            go_ahead=None if tentative is None else tentative.committed,
            on_hold=needs_go_ahead,
        )
        if isinstance(record.cause, AudioDeviceError):  # the speaker was lost mid-answer
            self._device_lost(record.cause)

    async def _transcribe(
        self, record: TurnRecord, utterance: vad.SpeechPaused | vad.SpeechEnded
    ) -> Transcript:
        """The utterance's words: the early transcript started when the voice faded, if the
        quiet lasted until this pause or end, else a call now. Cancelling abandons the wait."""
        if self.early_stt is not None:
            early = await self.early_stt.transcript_for(utterance.faded_at)
            if early is not None:
                if isinstance(utterance, vad.SpeechPaused):
                    decided = utterance.t
                else:
                    decided = utterance.t_confirmed
                assert utterance.faded_at is not None
                head_start = round((decided - utterance.faded_at) * 1000, 1)
                record.timeline.durations_ms["stt_head_start"] = head_start
                return early
        return await self.agent.stt.transcribe(utterance.audio.pcm, utterance.audio.sample_rate)

    def _settle(self, record: TurnRecord) -> None:
        """The turn is over: its playout marks, its segment, its events."""
        timeline, now = record.timeline, self.transport.now()
        first = self.output.first_played_at if "first_audio_byte" in timeline.marks else None
        end = timeline.at("output_silent") if record.interrupted else None
        if end is None and first is not None:
            end = self.output.last_played_end
        if first is not None and end is not None:
            timeline.mark("first_audio_played", first)
            timeline.mark("audio_end", end)
            self.log.segments.append(
                Segment("agent", first, end, record.heard_text, record.interrupted)
            )
        timeline.mark_first("turn_end", now)
        lost = self.device_error is not None and record.error == str(self.device_error)
        quiet = record.error in ("nothing understood", "conversation ended")  # not failures
        if record.error and not quiet and not lost:
            self._emit(ErrorEvent(record.index, record.error, now))  # the conversation goes on
        if record.agent_text or record.heard_text:
            self._emit(
                AgentSaid(
                    record.index, record.agent_text, record.heard_text, record.interrupted, now
                )
            )
        self._emit(TurnFinished(record, now))

    def _set_user_text(self, record: TurnRecord) -> None:
        """The transcript on the user's segment of the recording."""
        start = record.timeline.at("user_speech_start")
        for seg in reversed(self.log.segments):
            if seg.who == "user" and seg.start == start:
                seg.text = record.transcript
                return
        raise LookupError("user segment missing")

    def _device_lost(self, error: AudioDeviceError) -> None:
        """The microphone or the speaker is gone: stop listening and end the conversation.
        Reported once (the first loss wins)."""
        if self.device_error is None:
            self.device_error = error
            log.warning("audio device lost, conversation ended: %s", error)
            self._emit(ErrorEvent(None, str(error), self.transport.now()))
        self._listening.cancel()

    def _late_result(self, result: ToolResult) -> None:
        """A tool kept running past its interrupted turn finished: record it (not spoken)."""
        for record in reversed(self.log.turns):
            if any(entry.call_id == result.call.id for entry in record.tools):
                self.session.late_result(record, result)
                return

    def _emit(self, event: Event) -> None:
        tentative = self._tentative
        if tentative is not None and getattr(event, "turn", None) == tentative.record.index:
            tentative.events.append(event)  # told when the turn commits, dropped if withdrawn
            return
        try:
            self._events_in.send_nowait(event)
        except anyio.WouldBlock:
            self.events_dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


@dataclass
class _Tentative:
    """A turn started when the user paused, until the turn really ends (commit) or the user
    goes on (withdrawn)."""

    record: TurnRecord
    history_length: int  # the session's history before it: cut back to this if withdrawn
    serial: int  # which pause started it
    committed: anyio.Event = field(default_factory=anyio.Event)
    transcribed: anyio.Event = field(default_factory=anyio.Event)  # its STT returned
    events: list[Event] = field(default_factory=list)  # held until the commit
    guess: TurnGuess | None = None
    decided_at: float | None = None  # the detector's "complete", waiting for the answer
    on_hold: bool = False  # a tool round waits for the commit


#: How long a turn detector's "complete" waits for the words so far before it ends the turn.
TRANSCRIPT_WAIT_S = 0.4

#: Words no phrase ends on, asked or not: articles, possessives, conjunctions, fillers.
_NEVER_LAST = frozenset(
    "a an the my your our their his her its and or but because um uh er erm".split()
)
#: Prepositions: a phrase ends on one only as a wh-question ("What is it for?").
_PREPOSITIONS = frozenset(
    (
        "for to of in on at by with from near into onto about over under between after "
        "before than like as"
    ).split()
)
#: Words a statement does not end on, though a question may ("Is it?", "Can you?").
_RARELY_LAST = frozenset(
    (
        "this these those some any every each no so if when while until unless that which "
        "who whose is are was were be been am will would can could should shall may might must "
        "do does did have has had i we you they he she it me us them not very just also"
    ).split()
)
_WH_WORDS = frozenset("what who whom where which whose".split())


def sounds_unfinished(text: str) -> bool:
    """Whether ``text`` (a transcript so far) leaves a phrase hanging: it ends on a comma,
    colon, dash or ellipsis, or on a word a phrase does not end on ("a table for", "call my",
    "I was"). Speech recognition closes fragments with a period or, after "Can you ...", a
    question mark, so those do not count, except a preposition ending a wh-question ("Where
    are you from?") and a question ending on a verb or pronoun ("Is it?"). Nothing heard is not
    unfinished."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("...", "…", ",", ":", ";", "-", "–", "—")):
        return True
    words = [w.strip(".!?,\"'”’)(").lower() for w in stripped.split()]
    last, first, asked = words[-1], words[0], stripped.endswith("?")
    if last in _NEVER_LAST:
        return True
    if last in _PREPOSITIONS:
        return not (asked and first in _WH_WORDS)
    return last in _RARELY_LAST and not asked


def _pause_ms(agent: Agent) -> int | None:
    """The VAD's pause announcement: needed to think ahead or to ask a turn detector."""
    options = agent.options
    if not (options.barge_in.think_ahead or agent.turn_detector is not None):
        return None
    final = options.vad.min_silence_ms
    if agent.turn_detector is not None:
        final = options.end_of_turn.unsure_silence_ms
    return options.end_of_turn.pause_ms if options.end_of_turn.pause_ms < final else None


def _note_guess(record: TurnRecord, guess: TurnGuess) -> None:
    durations = record.timeline.durations_ms
    durations["turn_detector"] = round(guess.compute_seconds * 1000, 2)
    durations["turn_probability"] = round(guess.probability, 3)
