"""Server -> client frames of the ElevenLabs WebSocket protocol: audio (with per-chunk character
alignment), final and error frames, and the close instruction the I/O layer executes.

Pure data: encoders for the server role, decoders for the client role (each raises
`ProtocolError`, which the client protocol turns into a ProtocolViolation event).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .client_messages import MAX_MESSAGE_CHARS, dumps, loads_object
from .errors import ProtocolError, invalid, type_name

#: Largest raw audio chunk `ServerProtocol.send_audio` accepts (base64 makes it 4/3 larger;
#: clients keep the default 1 MiB incoming limit).
MAX_AUDIO_CHUNK_BYTES = 512 * 1024
#: Largest server frame a client accepts (the socket's limit too). The live service sends audio
#: frames over 1 MiB (pcm_44100, long generations) and uses 16 MiB itself; MAX_MESSAGE_CHARS
#: limits what clients send, not what they receive.
MAX_SERVER_FRAME_BYTES = 16 * 1024 * 1024


def _times(values: object, name: str) -> tuple[int | float, ...]:
    if not isinstance(values, list):
        raise invalid(f"alignment.{name} must be a list of numbers, got {type_name(values)}", 1007)
    out: list[int | float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(f"alignment.{name} must hold numbers, got {type_name(value)}", 1007)
        if not math.isfinite(value):
            raise invalid(f"alignment.{name} must hold finite numbers", 1007)
        out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class Alignment:
    """Character timings of one audio chunk, in ms relative to the start of THAT chunk."""

    chars: tuple[str, ...]
    char_start_times_ms: tuple[int | float, ...]
    char_durations_ms: tuple[int | float, ...]

    def __post_init__(self) -> None:
        n = len(self.chars)
        if len(self.char_start_times_ms) != n or len(self.char_durations_ms) != n:
            raise invalid(
                "alignment arrays must have equal lengths: "
                f"chars={n}, charStartTimesMs={len(self.char_start_times_ms)}, "
                f"charDurationsMs={len(self.char_durations_ms)}",
                1007,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "chars": list(self.chars),
            "charStartTimesMs": list(self.char_start_times_ms),
            "charDurationsMs": list(self.char_durations_ms),
        }

    @classmethod
    def from_json(cls, obj: object) -> Alignment:
        """Parse an alignment object; reads both `charDurationsMs` and `charsDurationsMs`."""
        if not isinstance(obj, dict):
            raise invalid(f"alignment must be an object, got {type_name(obj)}", 1007)
        chars = obj.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise invalid("alignment.chars must be a list of strings", 1007)
        durations = obj.get("charDurationsMs", obj.get("charsDurationsMs"))
        return cls(
            tuple(chars),
            _times(obj.get("charStartTimesMs"), "charStartTimesMs"),
            _times(durations, "charDurationsMs"),
        )

    @property
    def text(self) -> str:
        return "".join(self.chars)


# ---------------------------------------------------------------------------------------------
# close instruction


@dataclass(frozen=True)
class Close:
    """An outgoing close instruction (code + reason) for the I/O layer."""

    code: int
    reason: str = ""


def encode_audio_frame(
    context_id: str | None,
    audio: bytes,
    alignment: Alignment | None,
    normalized_alignment: Alignment | None,
    *,
    multi: bool,
) -> str:
    """An audio frame; `contextId` only on the multi-context endpoint."""
    obj: dict[str, Any] = {
        "audio": base64.b64encode(audio).decode("ascii"),
        "isFinal": None,
        "normalizedAlignment": None
        if normalized_alignment is None
        else normalized_alignment.to_json(),
        "alignment": None if alignment is None else alignment.to_json(),
    }
    if multi and context_id is not None:
        obj["contextId"] = context_id
    return dumps(obj)


def encode_final_frame(context_id: str | None, *, multi: bool) -> str:
    """`{"isFinal": true}` (+ `contextId`); carries no `message` key."""
    obj: dict[str, Any] = {"isFinal": True}
    if multi and context_id is not None:
        obj["contextId"] = context_id
    return dumps(obj)


def decode_audio(value: str) -> bytes:
    """Strict base64 decode, raising ProtocolError(1007) on garbage."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise invalid("audio is not valid base64", 1007) from None


def frame_context_id(obj: Mapping[str, Any]) -> str | None:
    """`contextId` or `context_id` of a server frame (ProtocolError if not a string)."""
    value = obj.get("contextId", obj.get("context_id"))
    if value is not None and not isinstance(value, str):
        raise invalid(f"contextId must be a string, got {type_name(value)}", 1007)
    return value


def optional_alignment(obj: Mapping[str, Any], *names: str) -> Alignment | None:
    for name in names:
        value = obj.get(name)
        if value is not None:
            return Alignment.from_json(value)
    return None


def encode_error_frame(err: ProtocolError) -> str:
    """`{"error", "message", "code"}`."""
    return dumps(err.to_frame())


def parse_server_frame(data: str | bytes) -> dict[str, object]:
    """One server frame as a JSON object (ProtocolError otherwise): `loads_object`, except that
    audio frames may be far larger than any client message, so MAX_SERVER_FRAME_BYTES bounds
    them instead of MAX_MESSAGE_CHARS."""
    if isinstance(data, str) and len(data) > MAX_MESSAGE_CHARS:
        if len(data) > MAX_SERVER_FRAME_BYTES:
            raise ProtocolError(
                message=f"server frame too large: {len(data)} characters, the limit is "
                f"{MAX_SERVER_FRAME_BYTES}",
                code=1009,
                error="message_too_large",
            )
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            raise ProtocolError(
                message="invalid JSON: the server must send one JSON object per text frame",
                code=1007,
            ) from None
        if not isinstance(obj, dict):
            raise ProtocolError(message="expected a JSON object from the server", code=1007)
        return obj
    return loads_object(data, "the server")
