"""The small interfaces that plugins implement.

Every stage of the voice loop is reached through one of these protocols, so the framework never
imports a vendor. Implementations live in `plugins/`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agent.audio import AudioFrame

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the model's reply text, as it arrived (never empty)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole function call the model asked for. ``arguments`` is the JSON text the model wrote
    (not yet parsed or checked: the tool runner does that and answers errors to the model)."""

    id: str
    name: str
    arguments: str


#: What `LLM.stream` yields: reply text as it arrives, and whole tool calls.
LLMChunk = TextDelta | ToolCall


@dataclass(frozen=True, slots=True)
class ToolSchema:
    """What the model is told about one tool: its name, what it does, its JSON-schema arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(slots=True)
class ChatMessage:
    """One message of the conversation history.

    `interrupted` marks an assistant message cut by barge-in: `content` then holds only what the
    user actually heard. An assistant message may carry the `tool_calls` it made; each is
    answered by one "tool" message whose `tool_call_id` names it.
    """

    role: Role
    content: str
    interrupted: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class LLM(Protocol):
    """A streaming chat model."""

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        """Yield the reply as it is produced: `TextDelta`s (never empty) and whole `ToolCall`s.

        ``messages`` is the whole conversation, instructions first (the agent owns them).
        Closing the generator (``aclose``) closes the underlying HTTP stream.
        """
        ...


@dataclass(slots=True)
class Transcript:
    """What the STT heard in one user utterance."""

    text: str
    language: str = "en"
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0


class STT(Protocol):
    """Speech to text for one finished utterance."""

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe 16-bit mono PCM. Cancelling abandons the result."""
        ...


@dataclass(frozen=True, slots=True)
class TurnGuess:
    """A turn detector's verdict on an utterance so far: is the user done speaking?

    ``probability`` is the model's confidence that the turn is complete (0..1); ``complete`` is
    that probability against the detector's threshold. ``compute_seconds``: model time."""

    complete: bool
    probability: float
    compute_seconds: float = 0.0


@runtime_checkable
class TurnDetector(Protocol):
    """Decides from the audio whether a user who just paused has finished their turn (an
    end-of-turn model such as Smart Turn). Asked at the first short silence; the voice loop
    falls back to a longer silence when the answer is "not complete"."""

    async def predict(self, pcm: bytes, sample_rate: int) -> TurnGuess:
        """The verdict on the utterance so far (16-bit mono PCM at ``sample_rate``, the whole
        utterance from its onset). Cancelling abandons the verdict."""
        ...


@dataclass(slots=True)
class WordTiming:
    """A word as spoken, with absolute times (seconds from the context's first audio)."""

    word: str
    start: float
    end: float


@dataclass(slots=True)
class SpeechChunk:
    """A piece of synthesized speech: PCM16 mono at `sample_rate` (or, when `encoding` is not
    "pcm", the TTS's own bytes, e.g. G.711 "ulaw", passed through undecoded), plus character
    alignment."""

    pcm: bytes
    sample_rate: int
    chars: list[str] = field(default_factory=list)
    char_starts: list[float] = field(default_factory=list)  # absolute seconds in the context
    char_ends: list[float] = field(default_factory=list)
    encoding: str = "pcm"


class AudioOutput(Protocol):
    """Where the agent's voice goes (speaker, phone line, browser tab, WAV file), and the report
    of what was really played there: `samples_played` comes from where playout happens (the
    local buffer for speakers and files, echoed marks for phones, the page's reports for
    browsers), and the heard text is cut from it alone."""

    @property
    def sample_rate(self) -> int: ...

    async def play(self, pcm: bytes) -> None:
        """Queue PCM16 mono for playout; may wait for room (backpressure). Cancelling queues
        nothing of ``pcm``."""
        ...

    def clear(self, *, held_only: bool = False) -> int:
        """Drop everything queued but not yet played, at once; return the samples dropped.
        ``held_only``: everything queued came while the output was paused (a tentative answer
        never let play): an output that holds such audio on its own side drops it and leaves
        the far end alone (what it has, an earlier answer's end, plays on)."""
        ...

    def pause(self) -> float:
        """Hold playout now, keeping what is queued (nothing lost, nothing counted as heard);
        return when the far end falls silent, on the transport's clock."""
        ...

    def resume(self) -> None:
        """Play on from where `pause` held it."""
        ...

    @property
    def samples_played(self) -> int:
        """Samples actually played since the last `mark()`."""
        ...

    def mark(self) -> None:
        """Start counting `samples_played` from zero (called at the start of each turn)."""
        ...

    async def drain(self) -> None:
        """Wait until everything queued has been played. Cancelling stops waiting only."""
        ...

    @property
    def first_played_at(self) -> float | None:
        """When the first sample since `mark()` was played, on the transport's clock."""
        ...

    @property
    def last_played_end(self) -> float | None:
        """When the last sample played so far ended, on the transport's clock."""
        ...

    @property
    def level(self) -> float:
        """Recent output loudness (RMS, int16 scale) for the echo guard; 0 if unknown."""
        ...


@runtime_checkable
class EncodedAudioOutput(Protocol):
    """An output that takes some encodings as they are (a phone line takes G.711 μ-law), so
    the TTS's bytes pass through without decoding and re-encoding."""

    encodings: tuple[str, ...]

    async def play_encoded(self, encoding: str, data: bytes) -> None:
        """Queue ``data`` in ``encoding`` (one of `encodings`) for playout."""
        ...


class Transport(Protocol):
    """A duplex audio line: microphone frames in, an `AudioOutput` out, and the clock of the
    conversation (stream seconds) that both are measured on."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def output(self) -> AudioOutput: ...

    def mic_frames(self) -> AsyncIterator[AudioFrame]:
        """Microphone frames (PCM16 mono at `sample_rate`) until the line ends."""
        ...

    def now(self) -> float:
        """The conversation's clock: seconds of stream time since the line opened."""
        ...


@runtime_checkable
class FramePushTransport(Protocol):
    """A transport that can hand each microphone frame to a callback as it arrives, in the
    task that read it, instead of through `mic_frames` (a queue and a task switch per frame:
    a server with many lines, such as a phone server, spends much of its CPU there)."""

    async def deliver_frames(self, sink: Callable[[AudioFrame], None]) -> None:
        """Call ``sink(frame)`` for each frame, frames already queued first, until the line
        ends; then return. ``sink`` runs in the transport's reader and must not block; an
        exception from it stops the delivery and is raised here. Cancelling stops the
        delivery: later frames queue for `mic_frames` (dropped once the queue is full)."""
        ...


class TTSStream(Protocol):
    """One utterance on a TTS connection (an ElevenLabs context): text in, speech out.

    A stream may also have an optional ``connection_id: int | None`` attribute, the server's
    name for the connection carrying it: context ids repeat across connections, so the pair
    is what finds the server's own timings (the turn records it as ``tts_connection``).
    """

    @property
    def context_id(self) -> str:
        """The stream's id on the wire ("" where the protocol has none): what a server's own
        per-stream timings are found by."""
        ...

    async def send(self, text: str) -> None:
        """Send text that ends at a word boundary. Cancelling may leave it unsent."""
        ...

    async def flush(self) -> None:
        """Speak everything buffered now."""
        ...

    async def close(self) -> None:
        """No more text; the stream ends after the remaining audio."""
        ...

    async def abort(self) -> None:
        """Stop at once and drop audio still on its way (barge-in). Runs shielded."""
        ...

    def chunks(self) -> AsyncIterator[SpeechChunk]:
        """Speech with absolute alignment, until the stream ends."""
        ...

    def heard_text(self, played_seconds: float) -> str:
        """The words fully played within the first ``played_seconds`` of this stream's audio."""
        ...


class TTS(Protocol):
    """A text-to-speech connection that opens one stream per turn."""

    async def open_context(self) -> TTSStream:
        """Open a stream for one turn. Cancelling leaves nothing open."""
        ...
