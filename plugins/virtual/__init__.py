"""Virtual audio transport: a scripted microphone and a recorded speaker on one sample clock."""

from __future__ import annotations

from plugins.virtual.transport import MicSource, VirtualTransport

__all__ = ["MicSource", "VirtualTransport"]
