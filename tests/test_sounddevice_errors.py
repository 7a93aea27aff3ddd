"""sounddevice transport: clear errors for missing PortAudio / devices, and device loss.

The first tests adapt to this machine (PortAudio missing, present without devices, or present
with devices) and check the real library's behaviour. The rest script device faults with
`FakeSoundDevice`, a stand-in for the sounddevice module whose streams call back from a real
thread (tests/fakes/sounddevice.py), to check the transport's hand-over and failure handling.
"""

from __future__ import annotations

import importlib
from typing import Any

import anyio
import numpy as np
import pytest

from agent.errors import AudioDeviceError
from plugins.sounddevice import (
    SoundDeviceTransport,
    list_devices,
    load_sounddevice,
    resolve_device,
)
from plugins.sounddevice import transport as sd_transport
from tests.fakes.sounddevice import FakeSoundDevice, device

pytestmark = pytest.mark.anyio


def real_sounddevice_state() -> tuple[str, Any]:
    """("no-portaudio", error) | ("no-device", module) | ("devices", module)."""
    try:
        sd = importlib.import_module("sounddevice")
    except OSError as exc:
        return "no-portaudio", exc
    try:
        devices = list(sd.query_devices())
    except Exception:
        devices = []
    return ("devices" if devices else "no-device"), sd


# -- the real library on this machine ------------------------------------------------------------


def test_this_machine_gets_a_clear_message() -> None:
    state, _ = real_sounddevice_state()
    if state == "no-portaudio":
        with pytest.raises(AudioDeviceError, match="libportaudio2") as info:
            list_devices()
        assert "voxloop chat --out" in str(info.value)
    elif state == "no-device":
        with pytest.raises(AudioDeviceError, match=r"no audio input device.*voxloop chat --out"):
            resolve_device(None, "input")
        assert "no audio devices" in list_devices()
    else:
        table = list_devices()
        assert table.splitlines()[0].split()[:3] == ["#", "in", "out"]
        assert len(table.splitlines()) >= 2


async def test_this_machine_transport_fails_clearly_or_opens() -> None:
    state, _ = real_sounddevice_state()
    transport = SoundDeviceTransport()
    if state == "no-portaudio":
        with pytest.raises(AudioDeviceError, match="apt-get install libportaudio2"):
            async with transport.running():
                pass
    elif state == "no-device":
        with pytest.raises(AudioDeviceError, match="no audio input device"):
            async with transport.running():
                pass
    else:
        pytest.skip("real audio devices present; not opening them in a test")


def fail_import(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Make `import sounddevice` fail with `error`; every other import works as usual."""
    real_import_module = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        if name == "sounddevice":
            raise error
        return real_import_module(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)


def test_missing_portaudio_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_import(monkeypatch, OSError("PortAudio library not found"))
    with pytest.raises(AudioDeviceError) as info:
        load_sounddevice()
    message = str(info.value)
    assert "apt-get install libportaudio2" in message
    assert "PortAudio library not found" in message


def test_missing_sounddevice_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_import(monkeypatch, ModuleNotFoundError("No module named 'sounddevice'"))
    with pytest.raises(AudioDeviceError, match=r"voxloop\[audio\]"):
        load_sounddevice()


# -- scripted devices ----------------------------------------------------------------------------


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch) -> FakeSoundDevice:
    fake = FakeSoundDevice(
        [
            device("USB Headset Mic", 1, 0),
            device("Built-in Speakers", 0, 2),
            device("USB Headset Phones", 0, 2),
        ],
        default=(0, 1),
    )
    monkeypatch.setattr(sd_transport, "load_sounddevice", lambda: fake)
    return fake


def test_devices_by_default_index_and_name(fake_sd: FakeSoundDevice) -> None:
    assert resolve_device(None, "input", fake_sd) == 0  # type: ignore[arg-type]
    assert resolve_device(None, "output", fake_sd) == 1  # type: ignore[arg-type]
    assert resolve_device(2, "output", fake_sd) == 2  # type: ignore[arg-type]
    assert resolve_device("phones", "output", fake_sd) == 2  # type: ignore[arg-type]
    assert resolve_device("built-in speakers", "output", fake_sd) == 1  # type: ignore[arg-type]


def test_device_errors_list_the_choices(fake_sd: FakeSoundDevice) -> None:
    with pytest.raises(AudioDeviceError, match=r"not an input device.*0: 'USB Headset Mic'"):
        resolve_device(1, "input", fake_sd)  # type: ignore[arg-type]
    with pytest.raises(AudioDeviceError, match="several output devices"):
        resolve_device("s", "output", fake_sd)  # type: ignore[arg-type]
    with pytest.raises(AudioDeviceError, match="no input device name contains 'webcam'"):
        resolve_device("webcam", "input", fake_sd)  # type: ignore[arg-type]


def test_no_input_device_says_to_use_files(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSoundDevice([device("Speakers", 0, 2)], default=(-1, 0))
    monkeypatch.setattr(sd_transport, "load_sounddevice", lambda: fake)
    with pytest.raises(AudioDeviceError, match=r"no audio input device.*voxloop chat --out"):
        resolve_device(None, "input")


def test_list_devices_marks_defaults(fake_sd: FakeSoundDevice) -> None:
    lines = list_devices().splitlines()
    assert lines[1].startswith(">") and "USB Headset Mic (FakeAPI)" in lines[1]
    assert lines[2][1] == "<" and "Built-in Speakers" in lines[2]


async def test_refused_sample_rate_suggests_the_device_rate(fake_sd: FakeSoundDevice) -> None:
    fake_sd.refuse_rate = 16000
    with pytest.raises(AudioDeviceError, match=r"16000 Hz.*48000"):
        async with SoundDeviceTransport().running():
            pass


async def test_mic_frames_cross_from_the_audio_thread_in_order(fake_sd: FakeSoundDevice) -> None:
    fake_sd.input_source = lambda block: np.full(320, block, dtype=np.int16).tobytes()
    transport = SoundDeviceTransport(use_output=False)
    got: list[int] = []
    async with transport.running():
        with anyio.fail_after(10):
            async for frame in transport.mic_frames():
                assert frame.samples == 320 and frame.sample_rate == 16000
                got.append(int(frame.to_array()[0]))
                if len(got) == 30:
                    break
    assert got == list(range(30))
    assert transport.error is None


async def test_output_callback_plays_the_buffer(fake_sd: FakeSoundDevice) -> None:
    transport = SoundDeviceTransport(use_input=False)
    pcm = np.arange(1, 3201, dtype=np.int16).tobytes()
    async with transport.running():
        with anyio.fail_after(10):
            await transport.output.play(pcm)
            await transport.output.drain()
    played = np.frombuffer(bytes(fake_sd.streams[0].played), np.int16)
    start = int(np.nonzero(played)[0][0])
    assert played[start : start + 3200].tolist() == list(range(1, 3201))
    assert transport.output.samples_played == 3200


async def test_device_lost_mid_session_surfaces_one_clear_error(fake_sd: FakeSoundDevice) -> None:
    transport = SoundDeviceTransport()
    frames = 0
    async with transport.running():
        mic, speaker = fake_sd.streams
        with anyio.fail_after(10), pytest.raises(AudioDeviceError, match="stopped unexpectedly"):
            async for _ in transport.mic_frames():
                frames += 1
                if frames == 5:
                    mic.die()
        assert transport.error is not None
        # The speaker fails loudly too instead of waiting forever.
        speaker.die()
        with anyio.fail_after(10), pytest.raises(AudioDeviceError, match="stopped unexpectedly"):
            for _ in range(200):
                await transport.output.play(bytes(16000))
        first_error = transport.error
    assert transport.error is first_error  # the first failure is the one reported
    assert "input device 'USB Headset Mic'" in str(first_error)


async def test_silent_device_is_reported_after_the_stall_timeout(fake_sd: FakeSoundDevice) -> None:
    fake_sd.input_delivers = "hang"  # the stream starts, but no callback, no finished signal
    transport = SoundDeviceTransport(use_output=False, stall_timeout_s=0.2)
    async with transport.running():
        with anyio.fail_after(10), pytest.raises(AudioDeviceError, match="no audio from the input"):
            async for _ in transport.mic_frames():
                pass


async def test_mic_iteration_ends_when_the_transport_stops(fake_sd: FakeSoundDevice) -> None:
    transport = SoundDeviceTransport(use_output=False)
    count = 0
    three = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            nonlocal count
            async for _ in transport.mic_frames():
                count += 1
                if count == 3:
                    three.set()

        async with transport.running():
            tg.start_soon(consume)
            with anyio.fail_after(10):
                await three.wait()
    # Leaving `running()` ended the iteration: the task group could exit.
    assert count >= 3
    assert transport.error is None
