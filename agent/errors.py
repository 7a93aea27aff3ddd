"""The framework's base error, and how the CLI turns errors into one clear line."""

from __future__ import annotations

from typing import TypeVar

from agent.audio import AudioDeviceError
from agent.llm_errors import LLMError

E = TypeVar("E", bound=BaseException)


class VoxloopError(Exception):
    """An error whose message already names the cause and the fix (shown without a traceback)."""


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
    if isinstance(leaf, VoxloopError | LLMError | AudioDeviceError):
        return str(leaf)
    if isinstance(leaf, ConnectionRefusedError):
        return f"connection refused ({leaf}): is the server running and the URL right?"
    if isinstance(leaf, BaseExceptionGroup):
        lines = [d for d in (describe_error(e) for e in leaf.exceptions) if d]
        return "; ".join(lines) if lines else None
    return None
