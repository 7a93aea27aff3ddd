"""Microphone and speaker of this machine through sounddevice / PortAudio (imported lazily)."""

from __future__ import annotations

from plugins.sounddevice.transport import (
    DeviceSpec,
    SoundDeviceOutput,
    SoundDeviceTransport,
    device_rate,
    list_devices,
    load_sounddevice,
    resolve_device,
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
