"""FakeSoundDevice: a stand-in for the `sounddevice` module whose streams call back from real
threads, as PortAudio's do (named a fake: it scripts devices and their failures).

Each started stream runs a thread that calls the transport's callback once per block, at
`speed` times real time (4 by default, so tests need not wait; 1.0 paces like a sound card).
Faults: `FakeStream.die()` is an unplugged device (callbacks stop, PortAudio reports the stream
finished); `FakeStream.freeze()` is a device that silently stops calling back (no finished
report); `input_delivers = "hang"` makes input streams start without ever calling back.

    fake = FakeSoundDevice([device("Mic", 1, 0), device("Speakers", 0, 2)], default=(0, 1))
    monkeypatch.setattr(plugins.sounddevice.transport, "load_sounddevice", lambda: fake)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

__all__ = [
    "FakeCallbackAbort",
    "FakePortAudioError",
    "FakeSoundDevice",
    "FakeStream",
    "device",
]


class FakePortAudioError(Exception):
    """What `sounddevice.PortAudioError` is to the transport."""


class FakeCallbackAbort(Exception):
    """What `sounddevice.CallbackAbort` is to the transport."""


class FakeStream:
    """A callback stream driven by a real thread, like PortAudio's."""

    def __init__(
        self,
        kind: str,
        *,
        samplerate: int,
        blocksize: int,
        device: int,
        channels: int,
        dtype: str,
        latency: Any,
        callback: Callable[..., None],
        finished_callback: Callable[[], None],
        source: Callable[[int], bytes] | None = None,
        deliver: bool | str = True,
        speed: float = 4.0,
    ) -> None:
        assert channels == 1 and dtype == "int16"
        self.kind, self.blocksize, self.device = kind, blocksize, device
        self.callback, self.finished_callback = callback, finished_callback
        self.source, self.deliver = source, deliver
        self.played = bytearray()
        self.active = False
        self.calls = 0
        self.stopped_at: float | None = None  # monotonic time the callbacks stopped (a fault)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.period = blocksize / samplerate
        self.speed = speed

    def start(self) -> None:
        self.active = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        flags = SimpleNamespace(input_overflow=False, output_underflow=False)
        block = 0
        if self.deliver == "hang":  # started, but the callback never runs
            self._stop.wait()
        # Paced on an absolute schedule (no drift), like a sound card's clock.
        start = time.monotonic()
        while not self._stop.is_set() and self.deliver is True:
            try:
                if self.kind == "input":
                    assert self.source is not None
                    self.callback(self.source(block), self.blocksize, None, flags)
                else:
                    out = bytearray(self.blocksize * 2)
                    self.callback(out, self.blocksize, None, flags)
                    self.played += out
            except FakeCallbackAbort:
                break
            self.calls += 1
            block += 1
            delay = start + block * self.period / self.speed - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
        if self.deliver == "frozen":  # no callback, no finished report, until closed
            self._stop.wait()
        self.active = False
        if not self._stop.is_set():
            self.finished_callback()

    def die(self) -> None:
        """The device disappears: no more callbacks, PortAudio reports the stream finished."""
        self.stopped_at = time.monotonic()
        self.deliver = False

    def freeze(self) -> None:
        """The device stops calling back and says nothing (a driver that hangs)."""
        self.stopped_at = time.monotonic()
        self.deliver = "frozen"

    def abort(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.active = False

    def close(self) -> None:
        pass


class FakeSoundDevice:
    """Enough of the sounddevice module for the transport, with scriptable devices.

    `input_source(block_index)` gives each input block's PCM (silence by default).
    """

    PortAudioError = FakePortAudioError
    CallbackAbort = FakeCallbackAbort

    def __init__(
        self,
        devices: list[dict[str, Any]],
        default: tuple[int, int] = (0, 0),
        *,
        speed: float = 4.0,
    ) -> None:
        self._devices = devices
        self.default = SimpleNamespace(device=list(default))
        self.streams: list[FakeStream] = []
        self.input_source: Callable[[int], bytes] = lambda block: bytes(640)
        self.input_delivers: bool | str = True
        self.refuse_rate: int | None = None
        self.speed = speed

    def query_devices(self, device: int | None = None) -> Any:
        if device is None:
            return [dict(d, index=i) for i, d in enumerate(self._devices)]
        return dict(self._devices[device], index=device)

    def query_hostapis(self) -> list[dict[str, str]]:
        return [{"name": "FakeAPI"}]

    def _check(self, device: int, channels: int, dtype: str, samplerate: int) -> None:
        if samplerate == self.refuse_rate:
            raise FakePortAudioError("Invalid sample rate", -9997)

    check_input_settings = _check
    check_output_settings = _check

    def RawInputStream(self, **kwargs: Any) -> FakeStream:
        stream = FakeStream(
            "input",
            source=self.input_source,
            deliver=self.input_delivers,
            speed=self.speed,
            **kwargs,
        )
        self.streams.append(stream)
        return stream

    def RawOutputStream(self, **kwargs: Any) -> FakeStream:
        stream = FakeStream("output", speed=self.speed, **kwargs)
        self.streams.append(stream)
        return stream


def device(name: str, inputs: int, outputs: int) -> dict[str, Any]:
    """One entry of `query_devices()`."""
    return {
        "name": name,
        "max_input_channels": inputs,
        "max_output_channels": outputs,
        "default_samplerate": 48000.0,
        "hostapi": 0,
    }
