"""How the CLI stops: SIGTERM and SIGHUP end a command the way Ctrl-C does.

`timeout`, systemd, Docker and Kubernetes stop a process with SIGTERM; a closed terminal sends
SIGHUP. Python's default for both is to die on the spot, which skips every `finally` and
`async with` exit, so a local server a command started (llama.cpp's, a child process) would
be left running, orphaned. Ctrl-C already stops cleanly: inside `anyio.run`, asyncio's runner
turns SIGINT into a cancellation of the main task, every `async with` that started a server
exits and stops it, and `KeyboardInterrupt` is raised once the loop is done; outside the loop,
Python's `default_int_handler` raises `KeyboardInterrupt` where the main thread is.

`install()` makes SIGTERM and SIGHUP take that same path: the handler calls whatever handles
SIGINT at that moment (the runner's, or the default one). SIGINT itself is left alone: asyncio's
runner only installs its handler when SIGINT still has Python's default.

    def main() -> int:
        lifecycle.install()
        try:
            code = handler(args)
        except KeyboardInterrupt:
            code = 130
        return lifecycle.exit_status(code)   # 128 + the signal after SIGTERM / SIGHUP

A second SIGTERM or SIGHUP while stopping is ignored (the cleanup is bounded: a server gets a
few seconds to stop, then is killed); a second Ctrl-C still forces the way out. Should the
process die without cleaning up anyway (SIGKILL, a crash), the llama.cpp child dies with it on
its own (see `plugins.local.llm_server`, parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType

__all__ = ["STOP_SIGNALS", "exit_status", "install", "quiet_dead_streams", "received", "reset"]

#: The signals that stop a command cleanly, besides SIGINT (which Python handles already).
STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

_received: int | None = None


def received() -> int | None:
    """The stop signal (SIGTERM or SIGHUP) that arrived, if one did."""
    return _received


def reset() -> None:
    """Forget a received signal (for tests that call `main()` more than once in a process)."""
    global _received
    _received = None


def install() -> None:
    """Route SIGTERM and SIGHUP into the Ctrl-C path (call from the main thread, early).

    A signal ignored when the process started (SIGHUP under `nohup`) stays ignored.
    """
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        signal.signal(sig, _on_stop_signal)


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        return  # already stopping; let the cleanup finish
    _received = signum
    interrupt = signal.getsignal(signal.SIGINT)
    if callable(interrupt):
        # asyncio's runner: cancels the main task (the `async with` blocks exit and stop their
        # servers), and KeyboardInterrupt comes out of anyio.run. Default: KeyboardInterrupt.
        interrupt(signal.SIGINT, frame)
        return
    # SIGINT ignored or at the OS default (a job started in the background by a script):
    # KeyboardInterrupt from here still unwinds the loop, whose runner then cancels and awaits
    # every task, so the servers are stopped too.
    raise KeyboardInterrupt


def exit_status(code: int) -> int:
    """The command's exit status: 128 + the signal after SIGTERM or SIGHUP, else `code`."""
    if _received is not None:
        quiet_dead_streams()
        return 128 + _received
    return code


def quiet_dead_streams() -> None:
    """Point stdout and stderr at /dev/null if they can no longer be written (the terminal is
    gone after SIGHUP, a pipe's reader left), so that the interpreter's final flush does not
    turn a clean stop into exit status 120 and a traceback nobody can read."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            setattr(sys, name, open(os.devnull, "w"))  # lives until the process exits


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec (``preexec_fn``): have the kernel send ``sig`` when
    the parent dies, so a worker never outlives its supervisor. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
