"""Outbound audio to a phone line, sans-I/O: fixed frames, real-time pacing, heard-by-marks.

`OutboundPacer` takes the bot's mu-law audio (`push(ulaw, now)`, any chunk size; TTS asked for
`ulaw_8000` passes through untouched) and says, in `tick(now)`, what to send now: whole
160-byte (20 ms) frames and marks. `next_deadline()` says when to call `tick` again.

Pacing. The far end plays what it receives in real time. The pacer keeps an estimate of when the
far end finishes playing what was sent (`play_end`; it restarts at `now` when the far end has run
dry) and sends a frame only while that stays within `lead` seconds of now. So the far end's
buffer never holds more than `lead` (default 100 ms: enough for event-loop and network jitter,
little enough that a `clear` discards almost nothing and barge-in stays instant), frames go out
one per 20 ms after at most `lead` of start-up, and there is never a burst. Frames are always
whole: a tail shorter than 160 bytes waits for more audio, and is padded with mu-law silence
(0xFF) and sent when `finish()` says the utterance ended, or when it has waited `partial_hold`
seconds and the far end would otherwise run dry.

Heard position. Every `mark_every` frames, and after the last frame of a burst, a mark follows
the audio; its name carries the clear-epoch and the position (in 8 kHz samples) that the far
end has played when it echoes it: ``vx:<epoch>:<position>``. `mark_echoed(name)` moves
`heard` forward only for marks of the current epoch. `clear()` starts a new epoch, so marks
echoed after it (Twilio echoes the marks whose audio a clear dropped; some simulators do not)
never count. Audio sent after the last echoed mark is not counted as heard: the count is
conservative by at most one mark interval plus the round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import FRAME_BYTES, SAMPLE_RATE

ULAW_SILENCE = 0xFF
FRAME_SECONDS = FRAME_BYTES / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SendFrame:
    ulaw: bytes


@dataclass(frozen=True, slots=True)
class SendMark:
    name: str


PacerAction = SendFrame | SendMark


class OutboundPacer:
    """Frames, paces and marks one call's outbound audio (see the module docstring)."""

    def __init__(
        self,
        lead: float = 0.1,
        mark_every: int = 5,
        partial_hold: float = 0.04,
        prefix: str = "vx",
    ) -> None:
        if lead < FRAME_SECONDS:
            raise ValueError(f"lead must be at least one frame ({FRAME_SECONDS} s), got {lead}")
        if mark_every < 1:
            raise ValueError(f"mark_every must be >= 1 frame, got {mark_every}")
        self.lead = lead
        self.mark_every = mark_every
        self.partial_hold = partial_hold
        self.prefix = prefix
        self._pending = bytearray()
        self._partial_since: float | None = None
        self._finish = False
        self._play_end: float | None = None
        self._paused = False
        self.epoch = 0
        self.position = 0  # samples that count as played once everything sent so far is played
        self.heard = 0  # samples the far end confirmed by echoing a mark
        self._base = 0  # `position` (plus what was queued) at the last `mark()`
        self._unmarked = 0
        self._last_mark_position = 0
        self.frames_sent = 0
        self.marks_sent = 0
        self.stale_marks = 0

    # ---- in ----

    def push(self, ulaw: bytes, now: float) -> None:
        """Queue mu-law audio (any length) behind what is queued."""
        if not ulaw:
            return
        self._pending += ulaw
        self._finish = False
        self._partial_since = now if len(self._pending) % FRAME_BYTES else None

    def finish(self) -> None:
        """The utterance ended: send the last partial frame padded with silence, no waiting."""
        self._finish = True

    def pause(self) -> None:
        """Stop sending (what the far end already has still plays)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def clear(self) -> int:
        """Forget everything not yet heard; returns the samples dropped (queued + unconfirmed).

        The caller sends the protocol's `clear` at once. A new mark epoch starts, so marks of
        the dropped audio that the far end echoes later are ignored.
        """
        dropped = len(self._pending) + (self.position - self.heard)
        self._pending.clear()
        self._partial_since = None
        self._finish = False
        self._play_end = None
        self.epoch += 1
        self.position = self.heard
        self._last_mark_position = self.heard
        self._base = min(self._base, self.heard)
        self._unmarked = 0
        return dropped

    def drop_unsent(self) -> int:
        """Forget the audio queued and not yet sent (held while paused); returns the samples
        dropped. What was sent still plays, and its marks still count: no new epoch."""
        dropped = len(self._pending)
        self._pending.clear()
        self._partial_since = None
        self._finish = False
        return dropped

    def mark_echoed(self, name: str) -> bool:
        """The far end echoed a mark; True if it moved `heard` forward."""
        parts = name.split(":")
        if len(parts) != 3 or parts[0] != self.prefix:
            return False
        try:
            epoch, position = int(parts[1]), int(parts[2])
        except ValueError:
            return False
        if epoch != self.epoch:
            self.stale_marks += 1
            return False
        if position <= self.heard or position > self.position:
            return False
        self.heard = position
        return True

    def mark(self) -> None:
        """Start counting `samples_played` from here (audio queued before it does not count)."""
        self._base = self.position + len(self._pending)

    # ---- state ----

    @property
    def samples_played(self) -> int:
        """8 kHz samples confirmed heard since `mark()` (from echoed marks only)."""
        return max(0, self.heard - self._base)

    @property
    def queued_bytes(self) -> int:
        """Audio not yet sent (bytes = samples)."""
        return len(self._pending)

    @property
    def unconfirmed(self) -> int:
        """Samples sent whose playout the far end has not confirmed yet."""
        return self.position - self.heard

    @property
    def play_end(self) -> float | None:
        """When the far end should have played everything sent (estimate)."""
        return self._play_end

    def all_sent(self) -> bool:
        return not self._pending

    def all_heard(self) -> bool:
        return not self._pending and self.heard >= self.position

    # ---- timers ----

    def next_deadline(self) -> float | None:
        if self._paused or not self._pending:
            return None
        if len(self._pending) >= FRAME_BYTES or self._finish:
            if self._play_end is None:
                return float("-inf")
            return self._play_end - (self.lead - FRAME_SECONDS)
        assert self._partial_since is not None
        hold = self._partial_since + self.partial_hold
        if self._play_end is None:
            return hold
        return max(hold, self._play_end - FRAME_SECONDS)

    def tick(self, now: float) -> list[PacerAction]:
        """What to send now: whole frames, each batch followed by a mark when one is due."""
        actions: list[PacerAction] = []
        if self._paused:
            return actions
        while self._pending:
            if self._play_end is None or self._play_end < now:
                self._play_end = now
            if self._play_end - now > self.lead - FRAME_SECONDS + 1e-9:
                break
            real = min(len(self._pending), FRAME_BYTES)
            if real < FRAME_BYTES:
                due = self._finish or (
                    self._partial_since is not None
                    and now >= self._partial_since + self.partial_hold
                    and self._play_end - now <= FRAME_SECONDS + 1e-9
                )
                if not due:
                    break
                frame = bytes(self._pending) + bytes([ULAW_SILENCE]) * (
                    FRAME_BYTES - len(self._pending))
                self._pending.clear()
                self._partial_since = None
                self._finish = False
            else:
                frame = bytes(self._pending[:FRAME_BYTES])
                del self._pending[:FRAME_BYTES]
            actions.append(SendFrame(frame))
            self.frames_sent += 1
            self._play_end += FRAME_SECONDS
            self.position += real  # padding is not the bot's audio: it never counts as heard
            self._unmarked += 1
            if self._unmarked >= self.mark_every or not self._pending:
                actions.append(self._mark())
        return actions

    def _mark(self) -> SendMark:
        self._unmarked = 0
        self._last_mark_position = self.position
        self.marks_sent += 1
        return SendMark(f"{self.prefix}:{self.epoch}:{self.position}")
