"""A stopped command leaves nothing behind (issue 14, point 6).

Each command that starts a local server runs as a real `python -m agent.app.cli` process; once
its servers are up (a readiness line on its output), it gets SIGTERM (`timeout`, systemd,
Docker, Kubernetes), SIGINT (Ctrl-C) or SIGHUP (a closed terminal). Then: it exits within a
bound, with 128 + the signal, and the process table holds nothing of it: not its process
group, not the llama.cpp server it started (found by a marker in its environment, so other
runs on the same machine do not count), and the servers' ports are free again. SIGKILL of the
parent, which no cleanup can answer, must take the llama.cpp server with it too. And the real
hang-up: `llm-server` on a pseudo-terminal that closes; a second signal during the cleanup;
SIGHUP under `nohup`.

`run` needs a sound device: its process installs the named fake of the sounddevice module
(tests/fakes/sounddevice.py) as `sounddevice` before the CLI starts, and uses a placeholder
STT address on loopback (nobody speaks, so it is never called, and whisper need not load).
"""

from __future__ import annotations

import contextlib
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process table in /proc"
)

ROOT = Path(__file__).resolve().parents[1]
MARKER = "VOXLOOP_SIGNAL_TEST"
READY_S = 90.0  # servers up (piper and whisper load, the user's lines are synthesized ...)
EXIT_S = 20.0  # stop after the signal: a server gets 3 s to stop before it is killed
GONE_S = 5.0  # an orphan's parent-death signal, and init reaping it

TTS_READY = r"local TTS server ready on ws://[\d.]+:(\d+)"
LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog, and then it rests."] * 40)
FAKE_SOUNDDEVICE = (
    "import sys\n"
    "from tests.fakes.sounddevice import FakeSoundDevice, device\n"
    "sys.modules['sounddevice'] = FakeSoundDevice(\n"
    "    [device('Mic', 1, 0), device('Speakers', 0, 2)], default=(0, 1), speed=1.0)\n"
    "from agent.app.cli import main\n"
    "sys.exit(main())\n"
)


@dataclass(frozen=True)
class Command:
    """A CLI command that starts servers, and the line that says they are up."""

    name: str
    argv: tuple[str, ...]
    ready: str  # regex on the merged output; group 1, when present, is the TTS server's port
    llm: bool  # starts the llama.cpp server (a child process)
    stdin: str = ""
    fake_sounddevice: bool = False


COMMANDS = {
    c.name: c
    for c in (
        Command("llm-server", ("llm-server", "--port", "0"), r"serving OpenAI-compatible", True),
        Command("tts-server", ("tts-server", "--port", "0"), r"TTS on ws://[\d.]+:(\d+)", False),
        Command("say", ("say", LONG_TEXT, "--out", "{tmp}"), TTS_READY, False),
        Command("latency", ("latency", "--trials", "1000"), TTS_READY, False),
        Command(
            "chat",
            ("chat", "--out", "{tmp}"),
            TTS_READY,
            True,
            stdin="Tell me about the moon.\nAnd the sun?\nAnd the sea?\n",
        ),
        Command("demo", ("demo", "--out", "{tmp}"), TTS_READY, True),
        Command("phone", ("phone", "--port", "0", "--out", "{tmp}"), r"phone server on", True),
        Command("web", ("web", "--port", "0"), r"open http", True),
        Command(
            "run",
            ("run", "--stt-url", "http://127.0.0.1:9/v1"),
            TTS_READY,
            True,
            fake_sounddevice=True,
        ),
    )
}
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGHUP": signal.SIGHUP}


@dataclass
class Child:
    """A CLI process in its own session, its merged output read line by line on a thread."""

    process: subprocess.Popen[str]
    marker: str
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`; fails after `timeout` or at exit."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {pattern!r} within {timeout:g} s:\n{self.transcript()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"exited before {pattern!r}:\n{self.transcript()}")
            if match := re.search(pattern, line):
                return match

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {timeout:g} s after the signal:\n{self.transcript()}")

    def kill_all(self) -> None:
        """After a failure: kill whatever of this run is left, so that it fails alone."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        for proc in processes_marked(self.marker):
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)

    def transcript(self) -> str:
        return "".join(self.output[-40:])


def start(command: Command, tmp: Path) -> Child:
    marker = uuid.uuid4().hex
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("ELEVENLABS_API_KEY", "ELEVENLABS_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        TMPDIR=str(tmp),
        PYTHONUNBUFFERED="1",
        **{MARKER: marker},
    )
    argv = [a.replace("{tmp}", str(tmp)) for a in command.argv]
    if command.fake_sounddevice:
        head = [sys.executable, "-c", FAKE_SOUNDDEVICE]
    else:
        head = [sys.executable, "-m", "agent.app.cli"]
    process = subprocess.Popen(
        [*head, *argv],
        cwd=tmp,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, and our signals reach only it
    )
    child = Child(process, marker)
    assert process.stdin is not None
    process.stdin.write(command.stdin)
    process.stdin.close()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            child.output.append(line)
            child.lines.put(line)
        child.lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return child


@dataclass(frozen=True)
class Proc:
    pid: int
    pgid: int
    state: str
    cmdline: str


def processes_marked(marker: str) -> list[Proc]:
    """Every live process (zombies excluded: they hold no memory and no port) whose
    environment carries `marker`: the CLI process and whatever it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{MARKER}={marker}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            found.append(Proc(int(entry.name), int(fields[2]), fields[0], cmdline))
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    """killpg succeeds while a zombie of the group awaits its reaper: look for a live one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def eventually(check: object, timeout: float) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def llama_server(marker: str) -> Proc:
    """The llama.cpp server the CLI process started (it must exist by now)."""
    servers = [p for p in processes_marked(marker) if "llama_cpp.server" in p.cmdline]
    assert len(servers) == 1, f"expected one llama_cpp.server, found {servers}"
    return servers[0]


def llama_port(server: Proc) -> int:
    match = re.search(r"--port (\d+)", server.cmdline)
    assert match, server.cmdline
    return int(match.group(1))


def assert_nothing_left(child: Child, ports: list[int], tmp: Path) -> None:
    leftovers = processes_marked(child.marker)
    assert eventually(lambda: not processes_marked(child.marker), GONE_S), (
        f"left running: {leftovers}\n{child.transcript()}"
    )
    assert eventually(lambda: not group_alive(child.process.pid), GONE_S)
    for port in ports:
        assert eventually(lambda port=port: port_free(port), GONE_S), f"port {port} still held"
    assert not list(tmp.glob("voxloop-llm-*")), "the llama server's log directory was left"


@pytest.mark.parametrize("sig_name", list(SIGNALS))
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_signal_stops_the_command_and_its_servers(
    name: str, sig_name: str, tmp_path: Path
) -> None:
    command, sig = COMMANDS[name], SIGNALS[sig_name]
    child = start(command, tmp_path)
    try:
        ready = child.wait_for(command.ready, READY_S)
        ports = [int(ready.group(1))] if ready.groups() else []
        servers = []
        if command.llm:
            server = llama_server(child.marker)
            servers.append(server)
            ports.append(llama_port(server))
        child.process.send_signal(sig)
        code = child.wait_exit(EXIT_S)
        if sig == signal.SIGINT:
            # Ctrl-C: 130, or 0 from the commands that catch it and say goodbye (run, the
            # servers); what matters is that it stopped, and stopped everything.
            assert code in (0, 128 + sig), child.transcript()
        else:
            assert code == 128 + sig, child.transcript()
        assert "Traceback" not in child.transcript(), child.transcript()
        assert_nothing_left(child, ports, tmp_path)
        for server in servers:
            assert not group_alive(server.pgid)
    finally:
        child.kill_all()


@pytest.mark.parametrize("name", ["llm-server", "run"])
def test_the_llama_server_dies_with_a_killed_parent(name: str, tmp_path: Path) -> None:
    """SIGKILL: no handler runs, no `async with` exits; the kernel's parent-death signal
    still takes the llama.cpp server down."""
    command = COMMANDS[name]
    child = start(command, tmp_path)
    try:
        child.wait_for(command.ready, READY_S)
        server = llama_server(child.marker)
        child.process.kill()
        assert child.wait_exit(EXIT_S) == -signal.SIGKILL
        assert eventually(lambda: not processes_marked(child.marker), GONE_S), (
            f"left running: {processes_marked(child.marker)}"
        )
        assert eventually(lambda: port_free(llama_port(server)), GONE_S)
    finally:
        child.kill_all()


def test_sigterm_while_the_model_loads_stops_the_half_started_server(tmp_path: Path) -> None:
    """Stopped while llama.cpp is still loading: the half-started server is stopped, and its
    log directory removed (it is kept only when the start fails)."""
    command = COMMANDS["llm-server"]
    child = start(command, tmp_path)
    try:
        child.wait_for(r"loading SmolLM2", READY_S)
        child.process.send_signal(signal.SIGTERM)
        assert child.wait_exit(EXIT_S) == 128 + signal.SIGTERM, child.transcript()
        assert_nothing_left(child, [], tmp_path)
    finally:
        child.kill_all()


def test_a_closed_terminal_stops_the_llm_server(tmp_path: Path) -> None:
    """The real SIGHUP: `voxloop llm-server` in a terminal (a pty, whose session it leads),
    and the terminal closes. Its last lines go to a dead terminal (EIO): still a clean 129."""
    marker = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path))
    env[MARKER] = marker
    argv = [sys.executable, "-m", "agent.app.cli", "llm-server", "--port", "0"]
    pid, master = pty.fork()
    if pid == 0:  # the child: a new session, the pty its controlling terminal
        try:
            os.chdir(tmp_path)
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)
    output = b""
    try:
        deadline = time.monotonic() + READY_S
        while b"serving OpenAI-compatible" not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            readable, _, _ = select.select([master], [], [], 0.5)
            if readable:
                try:
                    output += os.read(master, 4096)
                except OSError:  # EIO: the child is gone
                    pytest.fail(output.decode(errors="replace"))
        server = llama_server(marker)
        os.close(master)  # the terminal closes: the kernel sends SIGHUP to the session
        master = -1
        status = _wait_pid(pid, EXIT_S)
        assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGHUP
        assert eventually(lambda: not processes_marked(marker), GONE_S), processes_marked(marker)
        assert eventually(lambda: port_free(llama_port(server)), GONE_S)
        assert not list(tmp_path.glob("voxloop-llm-*"))
    finally:
        if master >= 0:
            os.close(master)
        for proc in processes_marked(marker):
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _wait_pid(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"still running {timeout:g} s after the hang-up")
        time.sleep(0.05)


CLEANUP_SCRIPT = """\
import sys, time
import anyio
from agent.app import lifecycle

async def main():
    try:
        print("ready", flush=True)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            print("cleaning up", flush=True)
            await anyio.sleep(1.0)
            print("cleaned up", flush=True)

lifecycle.install()
try:
    anyio.run(main)
    code = 0
except KeyboardInterrupt:
    code = 130
sys.exit(lifecycle.exit_status(code))
"""


@pytest.mark.parametrize("second", ["SIGTERM", "SIGHUP"])
def test_a_second_signal_does_not_cut_the_cleanup_short(second: str) -> None:
    """systemd, `kill` twice, a hang-up then a SIGTERM: the first starts the clean stop, the
    next one must not abort it halfway (the cleanup is what stops the servers)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLEANUP_SCRIPT],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert process.stdout.readline() == "cleaning up\n"
        process.send_signal(SIGNALS[second])
        assert process.stdout.readline() == "cleaned up\n"
        assert process.wait(10) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_a_signal_ignored_at_start_stays_ignored() -> None:
    """Under `nohup` SIGHUP is ignored on purpose: installing the handlers keeps it so."""
    script = (
        "import signal, sys\n"
        "from agent.app import lifecycle\n"
        "lifecycle.install()\n"
        "sys.exit(0 if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else 1)\n"
    )
    result = subprocess.run(
        ["nohup", sys.executable, "-c", script],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
