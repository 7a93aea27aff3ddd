"""The whole voice loop: microphone -> VAD -> end of turn -> STT -> turn (LLM -> TTS -> speaker),
with barge-in watching the microphone all the while.

One task reads the microphone and makes every decision synchronously, frame by frame (VAD,
echo guard, pause / resume / interrupt), so a decision reaches the output within the frame that
caused it. Each user turn runs as its own task under its own cancel scope: STT, then
`Session.respond`. A barge-in cancels that turn (the session cuts the history to the words
played); the output stays paused until the turn's shielded cleanup has cleared its queue, so
not one sample of the cancelled answer plays afterwards.

Times in the `ConversationLog` are stream seconds: microphone samples for user-side events, the
output clock (`PlayoutBuffer.position`) for what was played; the virtual transport keeps the two
on one clock.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc

from agent.audio import AudioFrame, PlayoutBuffer
from agent.errors import AudioDeviceError
from agent.bargein import Action, BargeInConfig, BargeInPolicy, EchoGuard
from agent.conversation import ConversationLog, Segment, TurnRecord
from agent.errors import sole
from agent.interfaces import STT
from agent.session import Session, TurnResult
from agent.vad import SpeechDetector, SpeechEnded, SpeechStarted, VadConfig, VoiceOnset

log = logging.getLogger("voxloop.voice")


class Transport(Protocol):
    """A duplex audio transport: microphone frames in, a playout buffer out."""

    @property
    def playout(self) -> PlayoutBuffer: ...

    def mic_frames(self) -> AsyncIterator[AudioFrame]: ...


Status = Callable[[str, str], None]  # (state, detail)


@dataclass
class VoiceAgentConfig:
    """Listening and barge-in settings. `vad.min_silence_ms` is the end-of-turn silence: lower
    is snappier but cuts users who pause mid-sentence (see README, "Tuning end of turn")."""

    vad: VadConfig = field(default_factory=lambda: VadConfig(min_silence_ms=500))
    bargein: BargeInConfig = field(default_factory=BargeInConfig)
    min_transcript_chars: int = 2


class VoiceAgent:
    """Runs a conversation on a transport until its microphone ends.

    ``log`` accumulates the record of the conversation (segments, per-turn latencies).
    """

    def __init__(
        self,
        session: Session,
        stt: STT,
        transport: Transport,
        *,
        config: VoiceAgentConfig | None = None,
        on_status: Status | None = None,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> None:
        self.session = session
        self.stt = stt
        self.transport = transport
        self.playout = transport.playout
        self.config = config or VoiceAgentConfig()
        vad = self.config.vad
        if vad.sample_rate != self.playout.sample_rate:  # the mic runs at the transport's rate
            vad = dataclasses.replace(vad, sample_rate=self.playout.sample_rate)
        self.detector = SpeechDetector(vad)
        self.guard = EchoGuard(self.config.bargein)
        self.policy = BargeInPolicy(self.config.bargein)
        self.on_status = on_status
        self.on_turn = on_turn
        self.log = ConversationLog(sample_rate=self.playout.sample_rate)
        self._tg: anyio.abc.TaskGroup | None = None
        self._turn_scope: anyio.CancelScope | None = None
        self._listening: anyio.CancelScope | None = None
        self._device_error: AudioDeviceError | None = None
        self._turn_done: anyio.Event | None = None
        self._record: TurnRecord | None = None
        self._onset: float | None = None
        self._silent_at: float | None = None
        self.barge_ins = 0
        self.pauses = 0  # tentative onsets over the agent (a false alarm costs a pause, no words)
        self._closed = False
        self.vad_seconds = 0.0  # CPU time spent in VAD + guard, for the benchmark
        session.hooks.on_first_token = self._first_token
        session.hooks.on_first_audio = self._first_audio

    # -- clocks -------------------------------------------------------------------------------

    def now(self) -> float:
        """Stream time of the microphone (seconds of audio heard so far)."""
        return self.detector.time

    def _output_time(self, position: int | None) -> float | None:
        return None if position is None else position / self.playout.sample_rate

    def _status(self, state: str, detail: str = "") -> None:
        if self.on_status is not None:
            self.on_status(state, detail)

    @property
    def idle(self) -> bool:
        """Nobody speaking, no turn running or queued, nothing left to play."""
        done = self._turn_done is None or self._turn_done.is_set()
        return (
            done
            and self._turn_scope is None
            and not self.detector.is_speaking
            and self.playout.pending_samples == 0
        )

    def speaking_for(self) -> float:
        """Seconds the current turn's answer has been audible (0 before its first sample)."""
        record = self._record
        first = self.playout.first_played_position
        if record is None or record.first_audio_byte is None or first is None:
            return 0.0
        return (self.playout.position - first) / self.playout.sample_rate

    @property
    def agent_has_floor(self) -> bool:
        """A turn is running (thinking or speaking) or its audio is still queued."""
        return self._turn_scope is not None or self.playout.pending_samples > 0

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, until: anyio.Event | None = None) -> ConversationLog:
        """Listen and answer until the microphone ends (or ``until`` is set: a hang-up); a turn
        still running then is cancelled, with what was heard kept in the history.

        Raises `AudioDeviceError` (itself, not in an exception group) if the microphone or the
        speaker is lost: listening stops, the running turn ends as on a hang-up (cleanup done,
        heard words kept), one WARNING is logged and the status goes to "device lost".

        Cancelling stops listening and cancels the running turn (its cleanup is shielded).
        """
        self._status("listening")
        async with anyio.create_task_group() as tg:
            self._tg = tg
            with anyio.CancelScope() as listening:
                self._listening = listening
                try:
                    async for frame in self.transport.mic_frames():
                        self.handle_frame(frame)
                        if until is not None and until.is_set():
                            break
                except AudioDeviceError as err:
                    self._device_lost(err)
            self._hang_up()
            if self._turn_done is not None:
                await self._turn_done.wait()
        if self._device_error is not None:
            raise self._device_error
        return self.log

    def _hang_up(self) -> None:
        """The microphone ended: the conversation is over. A turn still running is cancelled
        (its cleanup runs, the history keeps what was heard); queued turns do not start."""
        self._closed = True
        if self._record is not None:
            lost = self._device_error
            self._record.error = "conversation ended" if lost is None else str(lost)
        if not self.session.interrupt() and self._turn_scope is not None:
            self._turn_scope.cancel()

    def _device_lost(self, error: AudioDeviceError) -> None:
        """The microphone or the speaker is gone: stop listening; `run` raises `error` once the
        running turn has ended. Reported once (the first loss wins)."""
        if self._device_error is None:
            self._device_error = error
            log.warning("audio device lost, conversation ended: %s", error)
            self._status("device lost", str(error))
        if self._listening is not None:
            self._listening.cancel()

    def handle_frame(self, frame: AudioFrame) -> None:
        """VAD + barge-in for one microphone frame; acts at once (synchronous)."""
        started = time.perf_counter()
        pcm = self.guard.process(frame.pcm, self.playout.output_level)
        events = self.detector.feed(AudioFrame(pcm, frame.sample_rate))
        self.vad_seconds += time.perf_counter() - started
        for event in events:
            action = self.policy.decide(event, self.agent_has_floor)
            if isinstance(event, VoiceOnset):
                self._onset = event.t
            if action is Action.PAUSE:
                self.pauses += 1
                self.playout.paused = True
                self._silent_at = self.playout.position / self.playout.sample_rate
            elif action is Action.RESUME:
                self.playout.paused = False
                self._silent_at = None
            elif action is Action.INTERRUPT:
                assert isinstance(event, SpeechStarted)
                self._interrupt(event)
            if isinstance(event, SpeechStarted):
                self._status("user speaking")
            elif isinstance(event, SpeechEnded):
                self._start_turn(event)

    def _interrupt(self, event: SpeechStarted) -> None:
        """Confirmed speech over the agent: silence now, cancel the turn."""
        self.barge_ins += 1
        if not self.playout.paused:
            self.playout.paused = True
            self._silent_at = self.playout.position / self.playout.sample_rate
        self.playout.clear()
        record = self._record
        if record is not None:
            record.interrupted = True
            record.barge_in_onset = event.t_onset
            record.barge_in_decided = event.t_confirmed
            record.output_silent = self._silent_at
        if not self.session.interrupt() and self._turn_scope is not None:
            self._turn_scope.cancel()  # still in STT: nothing spoken yet
        self._status("interrupted", f"barge-in at {event.t_onset:.2f} s")

    def _start_turn(self, event: SpeechEnded) -> None:
        assert self._tg is not None
        index = len(self.log.turns) + 1
        record = TurnRecord(index, user_speech_start=event.t_onset, user_speech_end=event.t_end)
        self.log.turns.append(record)
        self.log.segments.append(Segment("user", event.t_onset, event.t_end))
        previous = self._turn_done
        self._turn_done = anyio.Event()
        self._tg.start_soon(self._turn, event, record, previous, self._turn_done)

    async def _turn(
        self,
        event: SpeechEnded,
        record: TurnRecord,
        previous: anyio.Event | None,
        done: anyio.Event,
    ) -> None:
        """STT then the answer, for one user utterance. Cancelled by a barge-in during STT."""
        try:
            if previous is not None:
                await previous.wait()  # one answer at a time, in order
            if self._closed:
                record.error = "conversation ended"
                return
            scope = anyio.CancelScope()
            self._turn_scope = scope
            self._record = record
            self._status("thinking")
            result: TurnResult | None = None
            with scope:
                transcript = await self.stt.transcribe(event.audio.pcm, event.audio.sample_rate)
                record.transcript = transcript.text.strip()
                record.transcript_ready = self.now()
                record.durations_ms["end_of_turn_wait"] = round(
                    (event.t_confirmed - event.t_end) * 1000, 2
                )
                record.durations_ms["stt_compute"] = round(transcript.compute_seconds * 1000, 2)
                self.log.segments[self._user_segment(record)].text = record.transcript
                if len(record.transcript) < self.config.min_transcript_chars:
                    record.error = "nothing understood"
                    return
                try:
                    result = await self.session.respond(record.transcript)
                except Exception as err:  # the speaker lost mid-answer: end the conversation
                    lost = sole(err, AudioDeviceError)
                    if lost is None:
                        raise
                    record.error, record.interrupted = str(lost), True
                    self._device_lost(lost)
            if result is not None:
                self._finish_record(record, result)
        finally:
            self._turn_scope = None
            self._record = None
            if self.policy.turn_finished():
                self.playout.clear()  # anything that slipped in before the cancel landed
                self.playout.paused = False
            self._silent_at = None
            if self._device_error is None:
                self._status("listening")
            if self.on_turn is not None:
                self.on_turn(record)
            done.set()

    def _user_segment(self, record: TurnRecord) -> int:
        for i in range(len(self.log.segments) - 1, -1, -1):
            seg = self.log.segments[i]
            if seg.who == "user" and seg.start == record.user_speech_start:
                return i
        raise LookupError("user segment missing")

    def _finish_record(self, record: TurnRecord, result: TurnResult) -> None:
        record.agent_text = result.full_text
        record.heard_text = result.heard_text
        record.interrupted = record.interrupted or result.interrupted
        if result.error is not None:
            record.error = str(result.error)
        record.durations_ms.update(
            (k, None if v is None else round(v * 1000, 2))
            for k, v in result.metrics.durations().items()
        )
        record.first_audio_played = self._output_time(self.playout.first_played_position)
        end = self._output_time(self.playout.last_played_end)
        if record.interrupted and record.output_silent is not None:
            end = record.output_silent
        record.agent_audio_end = end
        if record.first_audio_played is not None and end is not None:
            self.log.segments.append(
                Segment(
                    "agent", record.first_audio_played, end, result.heard_text, record.interrupted
                )
            )

    # -- session hooks (stream times) --------------------------------------------------------

    def _first_token(self) -> None:
        if self._record is not None:
            self._record.first_token = self.now()

    def _first_audio(self) -> None:
        if self._record is not None:
            self._record.first_audio_byte = self.now()
            self._status("speaking")
