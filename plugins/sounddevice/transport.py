"""Microphone and speaker through sounddevice (PortAudio) callback streams.

sounddevice is imported lazily (`load_sounddevice`), so the rest of voxloop works on machines
without PortAudio; every failure becomes an `AudioDeviceError` that says what to do.

Threads and hand-over:
- The output callback (PortAudio's thread) pulls from a `PlayoutBuffer` (`read` never blocks).
- The input callback copies the block into a bounded thread-safe `queue.Queue` and writes one
  byte to a non-blocking socketpair (the self-pipe trick). `mic_frames()` takes frames from the
  queue and, when it is empty, awaits `anyio.wait_readable` on the other end of the pair. The
  callback never blocks and never touches the event loop; the reader wakes within a scheduler
  tick of each block (no polling), and cancellation loses nothing: the frame stays queued.
  If the consumer falls behind by `mic_queue_blocks`, new blocks are dropped and counted in
  `mic_overruns`.

Device loss: a stream that stops on its own (PortAudio's finished callback while we did not ask
it to stop), an exception in a callback, no input for `stall_timeout_s`, or an output device that
takes no audio for `stall_timeout_s` while the speaker waits on it, records one
`AudioDeviceError` (the first wins). `mic_frames()` raises it, and `output.play()` /
`output.drain()` raise it instead of waiting forever. Nothing retries in a loop.
"""

from __future__ import annotations

import importlib
import queue
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from time import monotonic
from types import ModuleType
from typing import Any, Literal

import anyio

from agent.audio import AudioFrame, PlayoutBuffer
from agent.errors import AudioDeviceError
from agent.interfaces import AudioOutput

DeviceSpec = int | str | None
"""A device index, a (case-insensitive) name or name substring, or None for the default."""

Kind = Literal["input", "output"]

_NO_DEVICE_HINT = {
    "input": (
        "no audio input device found (PortAudio lists none). Connect a microphone, or run "
        "without one: `voxloop chat --out output/` (typed input, answers written to files) "
        "or `voxloop demo` (a scripted user)"
    ),
    "output": (
        "no audio output device found (PortAudio lists none). Connect a speaker, or run "
        "without one: `voxloop chat --out output/` writes the answers to files"
    ),
}


def load_sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing package or PortAudio into `AudioDeviceError`."""
    try:
        return importlib.import_module("sounddevice")
    except ImportError as exc:
        raise AudioDeviceError(
            "the sounddevice package is not installed: pip install 'voxloop[audio]' "
            "(or pip install sounddevice). Or run without audio devices: "
            "`voxloop chat --out output/` writes the answers to files"
        ) from exc
    except OSError as exc:
        raise AudioDeviceError(
            f"PortAudio, the system audio library sounddevice needs, is missing ({exc}). "
            "Install it: `sudo apt-get install libportaudio2` (Debian/Ubuntu), "
            "`sudo dnf install portaudio` (Fedora), `brew install portaudio` (macOS). "
            "Or run without audio devices: `voxloop chat --out output/` writes the answers "
            "to files"
        ) from exc


def _devices(sd: ModuleType) -> list[dict[str, Any]]:
    try:
        return [dict(d) for d in sd.query_devices()]
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"PortAudio cannot list audio devices: {exc}") from exc


def _default_index(sd: ModuleType, kind: Kind) -> int:
    try:
        pair = sd.default.device
        value = pair[0 if kind == "input" else 1]
        return int(value) if value is not None else -1
    except (TypeError, ValueError, IndexError):
        return -1


def list_devices() -> str:
    """A table of audio devices: index, input/output channels, default rate, name, host API.

    `>` marks the default input, `<` the default output. Raises `AudioDeviceError` if
    sounddevice/PortAudio is missing.
    """
    sd = load_sounddevice()
    devices = _devices(sd)
    if not devices:
        return "no audio devices found (PortAudio lists none)"
    default_in, default_out = _default_index(sd, "input"), _default_index(sd, "output")
    try:
        hostapis = [str(h["name"]) for h in sd.query_hostapis()]
    except Exception:  # host API names are decoration only
        hostapis = []
    lines = ["    #   in  out     rate  name"]
    for i, d in enumerate(devices):
        index = int(d.get("index", i))
        mark = (">" if index == default_in else " ") + ("<" if index == default_out else " ")
        api_index = int(d.get("hostapi", -1))
        api = f" ({hostapis[api_index]})" if 0 <= api_index < len(hostapis) else ""
        lines.append(
            f"{mark} {index:2d}  {int(d['max_input_channels']):3d}  "
            f"{int(d['max_output_channels']):3d}  {float(d['default_samplerate']):7.0f}  "
            f"{d['name']}{api}"
        )
    return "\n".join(lines)


def resolve_device(spec: DeviceSpec, kind: Kind, sd: ModuleType | None = None) -> int:
    """The index of the device `spec` names that can do `kind`.

    `spec`: None (the system default, else the first capable device), an index, or a name:
    an exact (case-insensitive) name wins, otherwise the substring must match one device.
    """
    sd = sd or load_sounddevice()
    channels_key = f"max_{kind}_channels"
    devices = _devices(sd)
    capable = {
        int(d.get("index", i)): str(d["name"])
        for i, d in enumerate(devices)
        if int(d[channels_key]) > 0
    }
    if not capable:
        raise AudioDeviceError(_NO_DEVICE_HINT[kind])
    choices = ", ".join(f"{i}: {name!r}" for i, name in capable.items())
    if spec is None:
        default = _default_index(sd, kind)
        return default if default in capable else next(iter(capable))
    if isinstance(spec, int):
        if spec not in capable:
            raise AudioDeviceError(
                f"audio device {spec} is not an {kind} device; {kind} devices are {choices}"
            )
        return spec
    wanted = spec.casefold()
    exact = [i for i, name in capable.items() if name.casefold() == wanted]
    if exact:
        return exact[0]
    matches = [i for i, name in capable.items() if wanted in name.casefold()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AudioDeviceError(f"no {kind} device name contains {spec!r}; choose from {choices}")
    named = ", ".join(f"{i}: {capable[i]!r}" for i in matches)
    raise AudioDeviceError(
        f"{spec!r} matches several {kind} devices ({named}); give an index or a longer name"
    )


def device_rate(spec: DeviceSpec, kind: Kind, sd: ModuleType | None = None) -> int:
    """The own sample rate (PortAudio's default) of the device `spec` names: a stream at it
    needs no conversion by the host. Raises `AudioDeviceError` as `resolve_device` does."""
    sd = sd or load_sounddevice()
    index = resolve_device(spec, kind, sd)
    try:
        rate = round(float(sd.query_devices(index)["default_samplerate"]))
    except (KeyError, TypeError, ValueError):
        rate = 0
    return rate if rate > 0 else 48000


class SoundDeviceOutput:
    """`AudioOutput` for the speaker: a `PlayoutBuffer` that fails loudly if the device dies."""

    _CHECK_EVERY = 0.25

    def __init__(self, playout: PlayoutBuffer, failure: Callable[[], AudioDeviceError | None]):
        self.sample_rate = playout.sample_rate
        self._playout = playout
        self._failure = failure

    def _raise_if_failed(self) -> None:
        error = self._failure()
        if error is not None:
            raise error

    async def play(self, pcm: bytes) -> None:
        """Queue PCM16 for the speaker, waiting for room; raises `AudioDeviceError` if the
        device was lost. Cancelling queues nothing of `pcm`."""
        while True:
            self._raise_if_failed()
            # `write` queues all or nothing, so timing out and retrying is safe.
            with anyio.move_on_after(self._CHECK_EVERY):
                await self._playout.write(pcm)
                return

    def clear(self, *, held_only: bool = False) -> int:
        """Drop queued audio at once; return the samples dropped (``held_only`` changes
        nothing: the queue is ours)."""
        return self._playout.clear()

    def pause(self) -> float:
        """Hold playout (the callback plays silence); return when the silence begins."""
        return self._playout.pause()

    def resume(self) -> None:
        """Play on from where playout was held."""
        self._playout.resume()

    @property
    def first_played_at(self) -> float | None:
        return self._playout.first_played_at

    @property
    def last_played_end(self) -> float | None:
        return self._playout.last_played_end

    @property
    def level(self) -> float:
        return self._playout.level

    @property
    def samples_played(self) -> int:
        """Samples handed to the device since `mark()`."""
        return self._playout.samples_played

    def mark(self) -> None:
        """Restart `samples_played` from zero."""
        self._playout.mark()

    async def drain(self) -> None:
        """Wait until the device has taken everything queued; raises `AudioDeviceError` if it
        was lost. Cancelling stops the waiting only."""
        while True:
            self._raise_if_failed()
            with anyio.move_on_after(self._CHECK_EVERY):
                await self._playout.drain()
                return


class SoundDeviceTransport:
    """Mic and speaker of this machine. Use ``async with transport.running(): ...``.

    `block_ms` sets the callback block size (and the mic frame length). Set `use_input` or
    `use_output` to False to open only one side.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        block_ms: int = 20,
        input_device: DeviceSpec = None,
        output_device: DeviceSpec = None,
        *,
        use_input: bool = True,
        use_output: bool = True,
        latency: float | Literal["low", "high"] = "low",
        max_output_seconds: float = 2.0,
        mic_queue_blocks: int = 50,
        stall_timeout_s: float = 2.0,
    ) -> None:
        if block_ms <= 0 or sample_rate * block_ms % 1000:
            raise ValueError(
                f"block_ms={block_ms} must be > 0 and a whole number of samples at "
                f"{sample_rate} Hz (e.g. 10, 20 or 30)"
            )
        if not (use_input or use_output):
            raise ValueError("open at least one side: use_input or use_output must be True")
        self.sample_rate = sample_rate
        self.block_ms = block_ms
        self.block_samples = sample_rate * block_ms // 1000
        self.input_device = input_device
        self.output_device = output_device
        self.use_input = use_input
        self.use_output = use_output
        self.latency = latency
        self.stall_timeout_s = stall_timeout_s
        self._playout = PlayoutBuffer(sample_rate, max_output_seconds)
        self._output = SoundDeviceOutput(self._playout, self._output_failure)
        self._out_position = -1  # output clock at the last look, and when it was taken
        self._out_seen_at = 0.0
        self._names: dict[Kind, str] = {}  # the opened devices' names, for messages
        self._frames: queue.Queue[bytes] = queue.Queue(maxsize=mic_queue_blocks)
        self._error_lock = threading.Lock()
        self._error: AudioDeviceError | None = None
        self._stopping = False
        self._running = False
        self._started = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sd: Any = None
        self._mic_samples = 0  # microphone samples delivered: the conversation's clock
        self._mic_seen_at = monotonic()
        self.mic_overruns = 0
        self.input_overflows = 0
        self.output_underflows = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def output(self) -> AudioOutput:
        """The speaker."""
        return self._output

    @property
    def playout(self) -> PlayoutBuffer:
        """The speaker's buffer (for `gain` ducking and `pending_samples`)."""
        return self._playout

    def now(self) -> float:
        """Stream time: microphone seconds delivered, plus the time since the last frame
        (at most one block), so marks between frames keep their order."""
        since = min(monotonic() - self._mic_seen_at, self.block_ms / 1000)
        return self._mic_samples / self.sample_rate + max(0.0, since)

    @property
    def error(self) -> AudioDeviceError | None:
        """The device failure, if one happened."""
        return self._error

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SoundDeviceTransport]:
        """Open and start the streams; stop and close them on exit.

        Raises `AudioDeviceError` if PortAudio or a device is missing or refuses the format.
        Opening is synchronous (PortAudio's open is quick). Cancelling the body closes the
        streams as well. One use per transport.
        """
        if self._started:
            raise RuntimeError("a SoundDeviceTransport runs once; create a new one")
        self._started = True
        sd = load_sounddevice()
        self._sd = sd
        streams: list[Any] = []
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_r, self._wake_w = wake_r, wake_w
        try:
            try:
                if self.use_input:
                    streams.append(self._open(sd, "input"))
                if self.use_output:
                    streams.append(self._open(sd, "output"))
                for stream in streams:
                    stream.start()
            except sd.PortAudioError as exc:
                raise AudioDeviceError(f"the audio device failed to start: {exc}") from exc
            self._running = True
            yield self
        finally:
            self._stopping = True
            self._running = False
            for stream in streams:
                try:
                    stream.abort()
                    stream.close()
                except Exception:  # closing a lost device may fail too; nothing left to do
                    pass
            # Callbacks are over once the streams are closed; only then drop the wake-up pair.
            self._wake_w = None
            anyio.notify_closing(wake_r)  # a reader waiting on it gets ClosedResourceError
            wake_w.close()
            wake_r.close()

    def mic_frames(self) -> AsyncIterator[AudioFrame]:
        """Microphone blocks as they arrive; ends when the transport stops.

        Raises `AudioDeviceError` if the input device is lost. One consumer at a time.
        Cancelling the iteration loses no frame.
        """
        if not self.use_input:
            raise RuntimeError("this transport was created with use_input=False")
        return self._mic_iter()

    # -- internals: event loop side ------------------------------------------------------------

    async def _mic_iter(self) -> AsyncIterator[AudioFrame]:
        while True:
            try:
                pcm = self._frames.get_nowait()
            except queue.Empty:
                if self._error is not None:
                    raise self._error from None
                if self._stopping or self._wake_r is None:
                    return
                if not await self._wait_for_wakeup():
                    self._fail(
                        AudioDeviceError(
                            f"no audio from {self._device('input')} for "
                            f"{self.stall_timeout_s:g} s "
                            "(unplugged, or taken by another program?); check it and restart, "
                            "or pick another one with --input (see `voxloop devices`)"
                        )
                    )
                continue
            self._mic_samples += len(pcm) // 2
            self._mic_seen_at = monotonic()
            if self.use_output and self._output_failure() is not None:
                # the speaker stopped calling back while the microphone goes on: noticed
                # here too, not only when the agent next waits to play
                assert self._error is not None
                raise self._error
            yield AudioFrame(pcm, self.sample_rate)

    def _device(self, kind: Kind) -> str:
        name = self._names.get(kind)
        return f"the {kind} device" + (f" {name!r}" if name else "")

    def _output_failure(self) -> AudioDeviceError | None:
        """The device failure, if any; the speaker's waits call this (every 0.25 s at most), and
        the microphone's reader at every block.

        It also notices an output device that stopped calling back without a word (a hung
        driver, no finished report): the output clock has not moved for `stall_timeout_s`.
        """
        if self._error is None and self._running and self.use_output:
            now, position = monotonic(), self._playout.position
            if position != self._out_position:
                self._out_position, self._out_seen_at = position, now
            elif now - self._out_seen_at >= self.stall_timeout_s:
                self._fail(
                    AudioDeviceError(
                        f"{self._device('output')} took no audio for {self.stall_timeout_s:g} s "
                        "(unplugged, or taken by another program?); check it and restart, "
                        "or pick another one with --output (see `voxloop devices`)"
                    )
                )
        return self._error

    async def _wait_for_wakeup(self) -> bool:
        """Wait for the callback's wake-up byte; False after `stall_timeout_s` of nothing."""
        assert self._wake_r is not None
        with anyio.move_on_after(self.stall_timeout_s):
            try:
                await anyio.wait_readable(self._wake_r)
            except anyio.ClosedResourceError:
                return True  # the transport is stopping
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            return True
        return self._stopping

    def _open(self, sd: ModuleType, kind: Kind) -> Any:
        spec = self.input_device if kind == "input" else self.output_device
        index = resolve_device(spec, kind, sd)
        name = str(sd.query_devices(index)["name"])
        self._names[kind] = name
        check = sd.check_input_settings if kind == "input" else sd.check_output_settings
        try:
            check(device=index, channels=1, dtype="int16", samplerate=self.sample_rate)
        except sd.PortAudioError as exc:
            rate = sd.query_devices(index).get("default_samplerate")
            raise AudioDeviceError(
                f"{kind} device {index} ({name!r}) refuses mono 16-bit audio at "
                f"{self.sample_rate} Hz: {exc}. Try its own rate ({rate}), or another device "
                "(see list_devices())"
            ) from exc
        stream_class = sd.RawInputStream if kind == "input" else sd.RawOutputStream
        callback = self._on_input if kind == "input" else self._on_output
        try:
            return stream_class(
                samplerate=self.sample_rate,
                blocksize=self.block_samples,
                device=index,
                channels=1,
                dtype="int16",
                latency=self.latency,
                callback=callback,
                finished_callback=lambda: self._on_finished(kind, name),
            )
        except sd.PortAudioError as exc:
            raise AudioDeviceError(
                f"cannot open {kind} device {index} ({name!r}): {exc}. Is another program "
                "using it? Pick another one (see list_devices())"
            ) from exc

    # -- internals: PortAudio thread side ------------------------------------------------------

    def _fail(self, error: AudioDeviceError) -> None:
        with self._error_lock:
            if self._error is None:
                self._error = error
        self._wake()

    def _wake(self) -> None:
        sock = self._wake_w
        if sock is None:
            return
        try:
            sock.send(b"\0")
        except OSError:  # full (the reader is awake anyway) or closed (shutting down)
            pass

    def _on_input(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        try:
            if getattr(status, "input_overflow", False):
                self.input_overflows += 1
            try:
                self._frames.put_nowait(bytes(indata))
            except queue.Full:
                self.mic_overruns += 1
            self._wake()
        except Exception as exc:
            self._fail(AudioDeviceError(f"the input callback failed: {exc!r}"))
            raise self._sd.CallbackAbort from exc

    def _on_output(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        try:
            if getattr(status, "output_underflow", False):
                self.output_underflows += 1
            outdata[:] = self._playout.read(frames)
        except Exception as exc:
            self._fail(AudioDeviceError(f"the output callback failed: {exc!r}"))
            raise self._sd.CallbackAbort from exc

    def _on_finished(self, kind: Kind, name: str) -> None:
        if not self._stopping:
            self._fail(
                AudioDeviceError(
                    f"the {kind} device {name!r} stopped unexpectedly (unplugged, or taken by "
                    "another program?); check it and restart, or pick another device"
                )
            )


__all__ = [
    "DeviceSpec",
    "SoundDeviceOutput",
    "SoundDeviceTransport",
    "device_rate",
    "list_devices",
    "load_sounddevice",
    "resolve_device",
]
