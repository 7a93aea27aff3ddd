"""Our own phone caller: Twilio's side of a call, over a real HTTP webhook and a real WebSocket.

`place_call(base_url, script)` does what Twilio does when someone dials in: POSTs the voice
webhook (signed when given the auth token), reads the TwiML's `<Stream url>` and `<Parameter>`s,
opens the media stream, sends `connected` and `start`, then every 20 ms (real time, absolute
schedule) one inbound `media` frame: the script's speech or line silence. It plays the bot's
audio like a handset: a `FarEnd` buffer plays 20 ms per tick, echoes each mark once the audio
before it has played, and honours `clear` (dropping buffered audio and echoing the pending marks
at once, as Twilio does, or dropping them with ``echo_marks_on_clear=False``, as some
simulators do). It presses DTMF keys and hangs up (`stop`) when the script is done.

It records the call (`CallResult.write_wav`: stereo, caller left, bot right, one clock) and
measures:
- time to first audio: from the end of each scripted utterance to the first bot media frame
  after it (`response_latencies`);
- barge-in reaction: from the start of an utterance spoken over the bot to the bot's `clear`
  (`barge_in_reactions`).

For a local server without TLS, ``wss://`` stream URLs on a loopback host are opened as
``ws://`` (`plain_ws_on_loopback`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.audio import ulaw_decode, ulaw_encode, write_stereo_wav
from agent.errors import ProtocolError

from .call import loop_time
from .pacing import FRAME_SECONDS, ULAW_SILENCE
from .protocol import FRAME_BYTES, SAMPLE_RATE, BotClear, BotMark, BotMedia, CallerProtocol
from .protocol import Violation as ProtocolViolation
from .security import AuthToken, compute_signature

SILENCE_FRAME = bytes([ULAW_SILENCE]) * FRAME_BYTES


class CallFailed(ProtocolError):
    """The webhook or the media stream did not behave like a phone server."""


# ---- script ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Say:
    """Speak `pcm` (PCM16 mono, 8 kHz). Starts `at` seconds into the call if given, else after
    the previous step, `after_bot_audio` seconds into the bot's audio (a barge-in) if given,
    else once the bot has been silent for `after_bot_silence` seconds."""

    pcm: bytes
    at: float | None = None
    after_bot_audio: float | None = None
    after_bot_silence: float = 0.0


@dataclass(slots=True)
class Press:
    """Press a DTMF key, `at` seconds into the call (or right after the previous step)."""

    digit: str
    at: float | None = None


Step = Say | Press


@dataclass(slots=True)
class CallScript:
    steps: list[Step] = field(default_factory=list)
    #: after the last step, hang up once the bot has been silent this long...
    hang_up_after_silence: float = 0.5
    #: ...or at this many seconds into the call, whichever comes first
    max_seconds: float = 30.0
    echo_marks: bool = True
    echo_marks_on_clear: bool = True
    from_number: str = "+15550100"
    to_number: str = "+15550199"
    call_sid: str = "CA" + "1" * 32


# ---- the handset, sans-I/O -------------------------------------------------------------------


#: How long a caller waits for an answer before its next question goes anyway.
NO_ANSWER_S = 6.0


class FarEnd:
    """The bot's audio as a handset plays it: 20 ms per `play_frame()`, marks echoed in order."""

    def __init__(
        self,
        echo_marks: bool = True,
        echo_marks_on_clear: bool = True,
        max_buffer_seconds: float = 600.0,
    ) -> None:
        self.echo_marks = echo_marks
        self.echo_marks_on_clear = echo_marks_on_clear
        self._buffer = bytearray()
        self._max = round(max_buffer_seconds * SAMPLE_RATE)
        self._marks: deque[tuple[int, str]] = deque()  # (buffer offset at the mark, name)
        self.played_bot_samples = 0
        self.discarded = 0

    def receive_audio(self, ulaw: bytes) -> None:
        room = self._max - len(self._buffer)
        self._buffer += ulaw[:room]
        self.discarded += max(0, len(ulaw) - room)

    def receive_mark(self, name: str) -> None:
        self._marks.append((len(self._buffer), name))

    def clear(self) -> list[str]:
        """Drop buffered audio; returns the marks to echo now."""
        self.discarded += len(self._buffer)
        self._buffer.clear()
        names = [name for _, name in self._marks]
        self._marks.clear()
        return names if (self.echo_marks and self.echo_marks_on_clear) else []

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def play_frame(self) -> tuple[bytes, bool, list[str]]:
        """One 20 ms tick: (mu-law played, whether it held bot audio, marks to echo)."""
        n = min(FRAME_BYTES, len(self._buffer))
        frame = bytes(self._buffer[:n]) + bytes([ULAW_SILENCE]) * (FRAME_BYTES - n)
        del self._buffer[:n]
        self.played_bot_samples += n
        echoes: list[str] = []
        kept: deque[tuple[int, str]] = deque()
        for offset, name in self._marks:
            if offset - n <= 0:
                echoes.append(name)
            else:
                kept.append((offset - n, name))
        self._marks = kept
        return frame, n > 0, echoes if self.echo_marks else []


# ---- result ----------------------------------------------------------------------------------


@dataclass(slots=True)
class CallResult:
    caller_pcm: bytes = b""
    bot_pcm: bytes = b""  # what the handset played, silence included, same clock as caller_pcm
    response_latencies: list[float] = field(default_factory=list)
    barge_in_reactions: list[float] = field(default_factory=list)
    media_in: int = 0  # bot media frames received
    media_times: list[float] = field(default_factory=list)  # when each arrived (s into the call)
    played_at_clear: list[int] = field(default_factory=list)  # bot samples the handset had played
    dropped_at_clear: list[int] = field(default_factory=list)  # and the queued ones it dropped
    media_after_clear: int = 0  # bot frames received within 100 ms after a clear
    marks_in: int = 0
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    close_code: int | None = None
    close_reason: str = ""
    hung_up_by: str = ""  # "caller" or "bot"
    violations: list[str] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)  # when each clear arrived

    def bot_media_at(self, t: float) -> None:
        """Count a bot media frame received at ``t`` (and whether it came right after a clear)."""
        self.media_in += 1
        self.media_times.append(t)
        if self.clear_times and t - self.clear_times[-1] < 0.1:
            self.media_after_clear += 1

    def bot_cleared_at(self, t: float, *, played: int, dropped: int) -> None:
        """Count the bot's `clear` received at ``t``: the handset had played ``played`` bot
        samples and drops the ``dropped`` it had queued."""
        self.clears += 1
        self.clear_times.append(t)
        self.played_at_clear.append(played)
        self.dropped_at_clear.append(dropped)
        self.timeline.append((t, "clear"))

    def write_wav(self, path: str | Path) -> Path:
        """Stereo WAV, 8 kHz: caller left, bot right."""
        return write_stereo_wav(path, self.caller_pcm, self.bot_pcm, SAMPLE_RATE)


# ---- webhook ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamTarget:
    url: str
    parameters: dict[str, str]


def parse_twiml(xml: str) -> StreamTarget:
    """The `<Connect><Stream>` URL and parameters of a TwiML answer."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise CallFailed(f"the voice webhook did not answer TwiML ({err})") from None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        raise CallFailed("the TwiML has no <Connect><Stream url=...>: no bidirectional stream")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamTarget(str(stream.get("url")), params)


def _post_webhook(url: str, fields: dict[str, str], token: AuthToken | None) -> str:
    body = urllib.parse.urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if token is not None:
        headers["X-Twilio-Signature"] = compute_signature(token, url, fields.items())
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read()).decode("utf-8")
    except urllib.error.HTTPError as err:
        raise CallFailed(
            f"the voice webhook answered {err.code}: {err.read().decode('utf-8', 'replace')[:200]}"
        ) from None
    except urllib.error.URLError as err:
        raise CallFailed(f"cannot reach the voice webhook at {url}: {err.reason}") from None


async def dial(
    base_url: str,
    script: CallScript,
    auth_token: AuthToken | None = None,
    voice_path: str = "/twilio/voice",
) -> StreamTarget:
    """POST the voice webhook as Twilio would; returns where to stream. Cancelling abandons
    the request (its thread finishes on its own)."""
    fields = {
        "CallSid": script.call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": script.from_number,
        "To": script.to_number,
        "Direction": "inbound",
        "CallStatus": "ringing",
    }
    xml = await anyio.to_thread.run_sync(
        _post_webhook, base_url.rstrip("/") + voice_path, fields, auth_token, abandon_on_cancel=True
    )
    return parse_twiml(xml)


def plain_ws_on_loopback(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "wss" and (parts.hostname in ("127.0.0.1", "localhost", "::1")):
        return urllib.parse.urlunsplit(parts._replace(scheme="ws"))
    return url


# ---- the call --------------------------------------------------------------------------------


async def place_call(
    base_url: str,
    script: CallScript,
    *,
    auth_token: AuthToken | None = None,
    record_path: str | Path | None = None,
) -> CallResult:
    """Dial `base_url`'s webhook, run the script over the media stream, hang up; the result.

    Cancelling closes the media socket (no `stop` is sent).
    """
    target = await dial(base_url, script, auth_token)
    result = await stream_call(plain_ws_on_loopback(target.url), target.parameters, script)
    if record_path is not None:
        result.write_wav(record_path)
    return result


async def stream_call(url: str, parameters: dict[str, str], script: CallScript) -> CallResult:
    """Run `script` on the media stream at `url` (after the webhook). Cancelling closes it."""
    result = CallResult()
    proto = CallerProtocol(call_sid=script.call_sid)
    far = FarEnd(script.echo_marks, script.echo_marks_on_clear)
    caller_pcm = bytearray()
    bot_pcm = bytearray()
    t0 = loop_time()
    state = _ScriptState(script, result)

    def now() -> float:
        return loop_time() - t0

    async with connect(url, max_size=1 << 20, open_timeout=10) as ws:

        async def flush() -> None:
            for item in proto.data_to_send():
                if isinstance(item, str):
                    await ws.send(item)

        async def receive() -> None:
            try:
                async for message in ws:
                    t = now()
                    for event in proto.receive(message, t):
                        if isinstance(event, BotMedia):
                            result.bot_media_at(t)
                            state.bot_media(t)
                            far.receive_audio(event.payload)
                        elif isinstance(event, BotMark):
                            result.marks_in += 1
                            far.receive_mark(event.name)
                        elif isinstance(event, BotClear):
                            result.bot_cleared_at(
                                t, played=far.played_bot_samples, dropped=far.buffered
                            )
                            state.bot_cleared(t, result)
                            for name in far.clear():
                                proto.send_mark(name)
                                result.marks_echoed.append(name)
                        elif isinstance(event, ProtocolViolation):
                            result.violations.append(f"{event.kind}: {event.detail}")
                    await flush()
            except ConnectionClosed:
                pass
            if ws.close_code is not None:
                result.close_code = ws.close_code
                result.close_reason = ws.close_reason or ""
            if not result.hung_up_by:
                result.hung_up_by = "bot"

        async def tick() -> None:
            proto.send_connected()
            proto.send_start(parameters)
            await flush()
            n = 0
            while True:
                t = now()
                # the handset plays one frame of the bot
                played, had_audio, echoes = far.play_frame()
                bot_pcm.extend(ulaw_decode(played))
                state.bot_played(t, had_audio)
                for name in echoes:
                    proto.send_mark(name)
                    result.marks_echoed.append(name)
                # the caller speaks one frame (or line silence) and maybe presses a key
                speech, digit = state.next_frame(t, result)
                if digit is not None:
                    proto.send_dtmf(digit)
                    result.timeline.append((t, f"dtmf {digit}"))
                frame = ulaw_encode(speech) if speech else SILENCE_FRAME
                caller_pcm.extend(ulaw_decode(frame))
                proto.send_media(frame, timestamp_ms=round(n * FRAME_SECONDS * 1000))
                await flush()
                if state.done(t):
                    result.hung_up_by = "caller"
                    proto.send_stop()
                    await flush()
                    return
                n += 1
                # asyncio's own sleep: anyio's looks its backend up twice per frame
                await asyncio.sleep(max(0.0, t0 + n * FRAME_SECONDS - loop_time()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            try:
                await tick()
            except ConnectionClosed:
                pass
            with anyio.move_on_after(2.0):
                await ws.close()
            tg.cancel_scope.cancel()
    result.caller_pcm = bytes(caller_pcm)
    result.bot_pcm = bytes(bot_pcm)
    return result


class _ScriptState:
    """Which step runs, what the caller says this frame, and the latency measurements."""

    def __init__(self, script: CallScript, result: CallResult) -> None:
        self.script = script
        self.result = result
        self.last_activity = 0.0
        self.steps = deque(script.steps)
        self.speech = b""  # PCM16 still to say
        self.speech_started: float | None = None
        self.barging = False
        self.waiting_response_since: float | None = None
        self.bot_audio_since_step = 0.0
        self.bot_silent_since: float | None = 0.0
        self.step_ready_at = 0.0
        self.said_at: float | None = None  # when our last utterance ended
        self.answered = True  # the bot spoke after our last utterance

    def bot_media(self, t: float) -> None:
        if self.waiting_response_since is not None:
            self.result.response_latencies.append(t - self.waiting_response_since)
            self.waiting_response_since = None

    def bot_cleared(self, t: float, result: CallResult) -> None:
        if self.barging and self.speech_started is not None:
            result.barge_in_reactions.append(t - self.speech_started)
            self.barging = False

    def bot_played(self, t: float, had_audio: bool) -> None:
        if had_audio:
            self.answered = True
            self.last_activity = t
            self.bot_audio_since_step += FRAME_SECONDS
            self.bot_silent_since = None
        elif self.bot_silent_since is None:
            self.bot_silent_since = t

    def _silent_for(self, t: float) -> float:
        return 0.0 if self.bot_silent_since is None else t - self.bot_silent_since

    def next_frame(self, t: float, result: CallResult) -> tuple[bytes, str | None]:
        digit: str | None = None
        if not self.speech and self.steps:
            step = self.steps[0]
            if step.at is not None:
                ready = t >= step.at
            elif isinstance(step, Say) and step.after_bot_audio is not None:
                ready = self.bot_audio_since_step >= step.after_bot_audio
            elif isinstance(step, Say):
                # The next question waits for the answer to the last one (or for a bot that
                # stays silent NO_ANSWER_S), then for the bot's silence.
                waited = self.said_at is not None and t - self.said_at >= NO_ANSWER_S
                ready = (self.answered or waited) and (
                    self._silent_for(t) >= step.after_bot_silence
                )
            else:
                ready = True
            if ready:
                self.steps.popleft()
                self.bot_audio_since_step = 0.0
                if isinstance(step, Press):
                    digit = step.digit
                    result.timeline.append((t, f"press {step.digit}"))
                else:
                    self.speech = step.pcm
                    self.speech_started = t
                    self.barging = self.bot_silent_since is None
                    self.waiting_response_since = None
                    result.timeline.append((t, "say" + (" (barge-in)" if self.barging else "")))
        if self.speech:
            chunk = self.speech[: FRAME_BYTES * 2]
            self.speech = self.speech[FRAME_BYTES * 2 :]
            if len(chunk) < FRAME_BYTES * 2:
                chunk += bytes(FRAME_BYTES * 2 - len(chunk))
            if not self.speech:
                self.waiting_response_since = t + FRAME_SECONDS
                self.said_at = t + FRAME_SECONDS
                self.answered = False
                self.last_activity = t + FRAME_SECONDS
                self.bot_audio_since_step = 0.0
                result.timeline.append((t + FRAME_SECONDS, "said"))
            return chunk, digit
        return b"", digit

    def done(self, t: float) -> bool:
        if t >= self.script.max_seconds:
            return True
        return (
            not self.steps
            and not self.speech
            and self.bot_silent_since is not None
            and t - self.last_activity >= self.script.hang_up_after_silence
        )


def summary(result: CallResult) -> str:
    """One JSON line of the call's measurements (for the CLI and benches)."""
    return json.dumps(
        {
            "response_latencies_s": [round(x, 3) for x in result.response_latencies],
            "barge_in_reactions_s": [round(x, 3) for x in result.barge_in_reactions],
            "media_in": result.media_in,
            "marks_in": result.marks_in,
            "clears": result.clears,
            "hung_up_by": result.hung_up_by,
            "close_code": result.close_code,
        }
    )
