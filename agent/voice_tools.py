"""Built-in tools of a voice conversation: ending it, and reading the keys a caller pressed.

Give them to an agent like any other tool: ``Agent(..., tools=[get_weather, end_call])``.
They reach the conversation through their `ToolContext` (the conversation is the ToolBox's
context), so they work on any transport: `end_call` hangs up a phone call where the transport
is a phone line.
"""

from __future__ import annotations

from typing import Protocol

from agent.tools import ToolContext, tool

__all__ = ["end_call", "read_digits"]


class _Line(Protocol):
    def end_after_turn(self) -> None: ...

    def take_digits(self) -> str: ...


def _line(context: ToolContext) -> _Line:
    line = context.state
    if not hasattr(line, "end_after_turn"):
        raise RuntimeError("this tool runs inside a voice conversation (Agent(tools=[...]))")
    return line  # type: ignore[no-any-return]


@tool
def end_call(context: ToolContext) -> str:
    """End the conversation (hang up) once your reply has been spoken. Call it when the user
    says goodbye or asks to end the call; say a short goodbye in the same reply."""
    _line(context).end_after_turn()
    return "The call ends after this reply."


@tool
def read_digits(context: ToolContext) -> str:
    """The keys the caller pressed on the phone's keypad since you last asked (empty if none)."""
    digits = _line(context).take_digits()
    return digits or "(no keys pressed)"
