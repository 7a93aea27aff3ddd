"""Errors of the ElevenLabs WebSocket protocol, and the reasons the service closes with.

`ProtocolError` derives from the framework's `agent.errors.ProtocolError` (root
`VoxloopError`), so `except VoxloopError` catches every protocol error of this plugin. Every
message names the offending field and what to send instead, and never contains a key or a raw
frame.
"""

from __future__ import annotations

import re
from typing import Any, overload

from agent import errors

#: At most this many contexts per connection (closed ones count until their final).
MAX_CONTEXTS = 5
#: WebSocket close reasons are limited to 123 UTF-8 bytes.
MAX_CLOSE_REASON_BYTES = 123

SETTINGS_CHANGED_REASON = (
    "voice_settings field must be provided in the first message and then either be not "
    "provided or not change."
)
MAX_CONTEXTS_MESSAGE = (
    f"Too many active contexts: at most {MAX_CONTEXTS} per connection, and a closed context "
    "counts until its isFinal message has been sent. Close contexts and wait for their "
    "isFinal before opening new ones."
)


def format_seconds(value: float) -> str:
    """Format a number of seconds like the service does: 20 -> "20", 2.5 -> "2.5"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def INACTIVITY_REASON(timeout: float) -> str:
    """The service's inactivity close reason for `timeout` seconds."""
    return (
        f"Have not received a new text input within the timeout of {format_seconds(timeout)} "
        "seconds. Streaming input terminated. Please send a new text input to continue."
    )


def fit_close_reason(reason: str) -> str:
    """Shorten `reason` to fit a WebSocket close frame (123 UTF-8 bytes).

    Drops whole trailing sentences first (so the inactivity reason keeps "... Streaming input
    terminated."), then cuts at a character boundary.
    """
    if len(reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES:
        return reason
    sentences = re.split(r"(?<=[.!?])\s+", reason)
    while len(sentences) > 1:
        sentences.pop()
        candidate = " ".join(sentences)
        if len(candidate.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES:
            return candidate
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
    return raw.decode("utf-8", errors="ignore")


class ProtocolError(errors.ProtocolError):
    """A protocol rule was broken (by the peer, or by a request we refuse).

    `code` is the WebSocket close code it maps to (1008 policy, 1007 bad data, 1009 too big,
    1003 unsupported data), `error` a short slug ("invalid_message", "max_active_conversations"),
    `message` a human explanation that names cause and fix. The message never contains a key.
    Construct as ProtocolError(code, error, message) or ProtocolError(message, code=..,
    error=..); subclasses default `code`/`error`, so `TooManyContextsError("...")` is enough.
    """

    default_code = 1008
    default_error = "invalid_message"

    @overload
    def __init__(
        self, message: str, *, code: int | None = None, error: str | None = None
    ) -> None: ...

    @overload
    def __init__(
        self, code: int | None = None, error: str | None = None, message: str | None = None
    ) -> None: ...

    def __init__(
        self,
        *args: int | str | None,
        code: int | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        if args and isinstance(args[0], str):  # ProtocolError(message, code=..., error=...)
            message, args = args[0], args[1:]
        if args:  # ProtocolError(code, error, message)
            names = ("code", "error", "message")
            if len(args) > 3:
                raise TypeError("ProtocolError takes at most (code, error, message)")
            values = dict(zip(names, args, strict=False))
            code = values.get("code", code)  # type: ignore[assignment]
            error = values.get("error", error)  # type: ignore[assignment]
            message = values.get("message", message)  # type: ignore[assignment]
        self.code = self.default_code if code is None else int(code)
        self.error = self.default_error if error is None else str(error)
        self.message = message or f"protocol error {self.error} (code {self.code})"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code}, error={self.error!r}, message={self.message!r})"

    def to_frame(self) -> dict[str, Any]:
        """The error frame the server sends: {"error", "message", "code"}."""
        return {"error": self.error, "message": self.message, "code": self.code}


class InactivityTimeoutError(ProtocolError):
    """The server closed the socket because no text arrived within inactivity_timeout."""

    default_error = "inactivity_timeout"


class SettingsChangedError(ProtocolError):
    """voice_settings changed after a context's first message (the live service closes 1008)."""

    default_error = "settings_changed"


class TooManyContextsError(ProtocolError):
    """More than MAX_CONTEXTS contexts at once (closed contexts count until their final)."""

    default_error = "max_active_conversations"


class QuotaExceededError(ProtocolError):
    """The account's character quota is used up; retrying will not help."""

    default_error = "quota_exceeded"


class TextBufferFullError(ProtocolError):
    """A connection holds more unspoken text than the server buffers; the message was refused."""

    default_error = "text_buffer_full"


class InvalidTextError(ProtocolError):
    """A string field held control characters or a lone surrogate (not text)."""

    default_error = "invalid_text"
    default_code = 1007


def invalid(message: str, code: int = 1008, error: str = "invalid_message") -> ProtocolError:
    return ProtocolError(code=code, error=error, message=message)


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")
_SILENT_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def spoken_text(value: str, name: str = "text") -> str:
    """`value` with silent control characters stripped; InvalidTextError on a lone surrogate."""
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise InvalidTextError(
            f"{name} contains a lone surrogate (U+{ord(bad.group()):04X}) at character "
            f"{bad.start()}: send valid Unicode text (encode characters outside the BMP as "
            "UTF-8, or as a complete surrogate pair in a JSON escape)"
        )
    return _SILENT_CONTROL.sub("", value) if _SILENT_CONTROL.search(value) else value


def plain_string(value: str, name: str) -> str:
    """`value` unchanged, or InvalidTextError naming `name` if it holds a control character or
    a lone surrogate."""
    bad = _SURROGATE.search(value) or _ANY_CONTROL.search(value)
    if bad is not None:
        kind = "a lone surrogate" if _SURROGATE.match(bad.group()) else "a control character"
        raise InvalidTextError(
            f"{name} contains {kind} (U+{ord(bad.group()):04X}) at character {bad.start()}: "
            "send printable text"
        )
    return value
