"""Typed errors for LLM streaming, shared by every LLM plugin.

They live in the framework so a turn can `except LLMError` without importing a plugin. Messages
name the cause and the fix; they never contain an API key.
"""

from __future__ import annotations


class LLMError(Exception):
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
