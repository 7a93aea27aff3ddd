"""The `voxloop` command line, run as a user would: real processes, real local servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest

VOXLOOP = [sys.executable, "-m", "agent.app.cli"]


def run(
    *args: str,
    stdin: str | None = None,
    timeout: float = 180,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("ELEVENLABS_API_KEY", "OPENAI_API_KEY", "ELEVENLABS_BASE_URL", "OPENAI_BASE_URL")
    }
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run(
        [*VOXLOOP, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=full_env,
        check=False,
    )


def test_help_lists_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in (
        "say",
        "latency",
        "tts-server",
        "llm-server",
        "chat",
        "run",
        "demo",
        "devices",
        "ELEVENLABS_API_KEY",
    ):
        assert command in out.stdout


def test_tts_server_refuses_zero_threads() -> None:
    out = run("tts-server", "--port", "0", "--threads", "0")
    assert out.returncode == 2 and "--threads must be at least 1" in out.stderr


def test_run_without_a_sound_device_explains_instead_of_a_traceback() -> None:
    out = run("run", timeout=60)
    if out.returncode == 0:
        pytest.skip("this machine has sound devices")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "voxloop: error:" in out.stderr
    assert any(
        hint in out.stderr
        for hint in ("libportaudio2", "no audio input device", "no audio output device")
    )


def test_say_writes_an_mp3_and_reports_ttfb(tmp_path: Path) -> None:
    out = run("say", "Hello from the command line.", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "time to first byte" in out.stdout
    files = list(tmp_path.glob("*.mp3"))
    assert len(files) == 1 and files[0].stat().st_size > 5000


def test_say_with_a_bad_format_names_the_supported_ones(tmp_path: Path) -> None:
    out = run("say", "Hi.", "--format", "wav_1", "--out", str(tmp_path))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "mp3_44100_128" in out.stderr and "pcm_16000" in out.stderr


def test_unreachable_tts_url_is_a_clear_error(tmp_path: Path) -> None:
    out = run("say", "Hi.", "--tts-url", "ws://127.0.0.1:9", "--out", str(tmp_path), timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "127.0.0.1:9" in out.stderr


@pytest.mark.engines
def test_chat_reads_piped_turns_and_writes_audio(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    out = run(
        "chat",
        "--out",
        str(tmp_path),
        "--max-tokens",
        "30",
        "--metrics-json",
        str(metrics),
        stdin="Hello, who are you?\nWhat is two plus two?\n",
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("agent> ") == 2
    for n in (1, 2):
        with wave.open(str(tmp_path / f"chat-turn-{n}.wav")) as wav:
            assert wav.getframerate() == 16000 and wav.getnframes() > 16000 * 0.5
    assert "ttft" in out.stderr
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [e["turn"] for e in events] == [1, 2]
    assert all(e["event"] == "turn" and e["latencies_ms"]["ttft"] for e in events), events


def test_chat_without_a_speaker_falls_back_to_files(tmp_path: Path) -> None:
    # no --out: the speaker is tried first; on this machine (no sound device) the answers are
    # written to output/ under the working directory instead, and the user is told so
    out = run("chat", "--llm-url", "http://127.0.0.1:9/v1", stdin="", cwd=tmp_path, timeout=120)
    if "playing answers on the speaker" in out.stderr:
        pytest.skip("this machine has a speaker")
    assert "writing answers to output/" in out.stderr
