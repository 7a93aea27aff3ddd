"""voxloop's errors: one root, `VoxloopError`, with a branch per stage beneath it.

    VoxloopError
    ├── AudioDeviceError   a microphone or speaker missing, busy or lost
    ├── LLMError           the chat model could not produce (the rest of) a reply
    ├── STTError           speech to text failed
    ├── TTSError           text to speech failed (the ElevenLabs plugin's errors)
    └── ProtocolError      a peer broke a wire protocol

Every message names the cause and the fix and never contains a key, so the CLI shows it as one
line without a traceback. Plugins raise subclasses of these; `except VoxloopError` catches them
all. The module also has the helpers that find such an error inside a task group's failure.
"""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class VoxloopError(Exception):
    """An error whose message already names the cause and the fix (shown without a traceback)."""


class AudioDeviceError(VoxloopError, RuntimeError):
    """An audio device (or the system library behind it) is missing, busy or was lost.

    The message always says what to do about it (install a library, pick another device, ...).
    """


class STTError(VoxloopError):
    """Speech to text failed (bad key, unreachable server, a model that will not load)."""


class TTSError(VoxloopError):
    """Text to speech failed (bad key, socket lost, the server closed or went silent)."""


class ProtocolError(VoxloopError):
    """A peer sent something its wire protocol does not allow."""


class LLMError(VoxloopError):
    """Base class: the LLM could not produce (the rest of) a reply."""


class LLMConfigError(LLMError):
    """The LLM is misconfigured locally (no key for a remote server, bad argument)."""


class LLMAuthError(LLMError):
    """The server rejected the credentials (HTTP 401/403). Never retried."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LLMRequestError(LLMError):
    """The server rejected the request itself (4xx other than auth, e.g. unknown model)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LLMConnectionError(LLMError):
    """The server could not be reached (after the bounded retries before the first token)."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class LLMServerError(LLMError):
    """The server failed (5xx / 429 / an error event) before the first token, on every attempt."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts


class LLMTimeoutError(LLMError):
    """The stream stalled: no first token, or too long a gap between tokens.

    `phase` is "first_token" (retried before giving up) or "inter_token" (never retried: part
    of the reply was already delivered).
    """

    def __init__(self, message: str, *, phase: str, seconds: float, attempts: int = 1) -> None:
        super().__init__(message)
        self.phase = phase
        self.seconds = seconds
        self.attempts = attempts


class LLMStreamError(LLMError):
    """The stream broke after the first token (error event, dropped connection). Not retried.

    `deltas_delivered` counts the text deltas already yielded to the consumer before the failure.
    """

    def __init__(self, message: str, *, deltas_delivered: int) -> None:
        super().__init__(message)
        self.deltas_delivered = deltas_delivered


def unwrap(err: BaseException) -> BaseException:
    """The single leaf of nested exception groups (task groups wrap errors), else ``err``."""
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    return err


def sole(err: BaseException, kind: type[E]) -> E | None:
    """The ``kind`` error that ``err`` is, or that a task group's exception group holds and
    holds nothing else (the first, if several); None otherwise."""
    if isinstance(err, BaseExceptionGroup):
        match, rest = err.split(kind)
        if match is None or rest is not None:
            return None
        leaf: BaseException = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        err = leaf
    return err if isinstance(err, kind) else None


def describe_error(err: BaseException) -> str | None:
    """One line for an error the user can act on; None for a bug (show the traceback)."""
    leaf = unwrap(err)
    if isinstance(leaf, VoxloopError):
        return str(leaf)
    if isinstance(leaf, ConnectionRefusedError):
        return f"connection refused ({leaf}): is the server running and the URL right?"
    if isinstance(leaf, BaseExceptionGroup):
        lines = [d for d in (describe_error(e) for e in leaf.exceptions) if d]
        return "; ".join(lines) if lines else None
    return None
