"""Client -> server messages of the ElevenLabs WebSocket protocol: building, decoding, validating.

`parse_client_message` checks types and values only (which keys make sense when is the state
machine's job, in `protocol.py`). It is also the protocol's input edge for hostile text:

- `text`: control characters other than tab, newline and carriage return (C0, DEL, C1) have no
  sound and are stripped from spoken text; a lone surrogate (a JSON escape such as `\\ud800`
  that is no character at all) is refused with an `invalid_text` error frame naming the field.
- every other string field (`context_id`, `xi_api_key`, dictionary ids): any control
  character or lone surrogate is refused the same way; `context_id` is at most
  MAX_CONTEXT_ID_CHARS characters (it is echoed in every audio frame).

A refused message changes nothing; the connection keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError, invalid, plain_string, spoken_text, type_name
from .settings import (
    GenerationConfig,
    PronunciationDictionaryLocator,
    Secret,
    VoiceSettings,
    parse_locators,
)

#: Largest client frame (characters) the protocol accepts; larger ones get an error frame.
MAX_MESSAGE_CHARS = 256 * 1024
#: Longest context_id accepted.
MAX_CONTEXT_ID_CHARS = 256


def _opt_bool(obj: Mapping[str, Any], key: str) -> bool:
    """A boolean flag; absent or null means false."""
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"{key} must be true or false, got {type_name(value)}")
    return value


KNOWN_CLIENT_KEYS = frozenset(
    {
        "text",
        "context_id",
        "flush",
        "try_trigger_generation",
        "close_context",
        "close_socket",
        "voice_settings",
        "generation_config",
        "pronunciation_dictionary_locators",
        "xi_api_key",
        "xi-api-key",
    }
)


@dataclass(frozen=True)
class ClientMessage:
    """One validated client -> server message. `text is None` means the key was absent."""

    text: str | None = None
    context_id: str | None = None
    flush: bool = False
    try_trigger_generation: bool = False
    close_context: bool = False
    close_socket: bool = False
    voice_settings: VoiceSettings | None = None
    generation_config: GenerationConfig | None = None
    pronunciation_dictionary_locators: tuple[PronunciationDictionaryLocator, ...] | None = None
    api_key: Secret | None = None
    unknown_keys: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The JSON object for the wire (reveals the key if one is set: never log it)."""
        out: dict[str, Any] = {}
        if self.text is not None:
            out["text"] = self.text
        if self.context_id is not None:
            out["context_id"] = self.context_id
        for name in ("flush", "try_trigger_generation", "close_context", "close_socket"):
            if getattr(self, name):
                out[name] = True
        if self.voice_settings is not None:
            out["voice_settings"] = self.voice_settings.to_json()
        if self.generation_config is not None:
            out["generation_config"] = self.generation_config.to_json()
        if self.pronunciation_dictionary_locators:
            out["pronunciation_dictionary_locators"] = [
                loc.to_json() for loc in self.pronunciation_dictionary_locators
            ]
        if self.api_key is not None:
            out["xi_api_key"] = self.api_key.reveal()
        return out

    def encode(self) -> str:
        return dumps(self.to_json())


def dumps(obj: Mapping[str, Any]) -> str:
    """Compact JSON for a frame."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def loads_object(data: str | bytes, who: str) -> dict[str, Any]:
    """Decode one text frame into a JSON object, or raise ProtocolError (1003/1007/1009)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(
            message=f"binary frames are not supported: {who} must send JSON objects in text frames",
            code=1003,
            error="invalid_message",
        )
    if len(data) > MAX_MESSAGE_CHARS:
        raise ProtocolError(
            message=f"message too large: {len(data)} characters, the limit is {MAX_MESSAGE_CHARS}; "
            "send text in smaller pieces",
            code=1009,
            error="message_too_large",
        )
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError(
            message=f"invalid JSON: {who} must send one JSON object per text frame", code=1007
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            message=f"expected a JSON object, got {type_name(obj)}: {who} must send one "
            "JSON object per text frame",
            code=1007,
        )
    return obj


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Validate one client frame (types only; which keys make sense is the state machine's job)."""
    obj = loads_object(data, "clients")
    text = obj.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise invalid(f"text must be a string, got {type_name(text)}", 1007)
        cleaned = spoken_text(text)
        # text made only of silent control characters is no text at all (not the "" that
        # closes a single-context stream)
        text = cleaned if cleaned or not text else None
    context_id = obj.get("context_id")
    if context_id is not None:
        if not isinstance(context_id, str) or not context_id:
            raise invalid(
                f"context_id must be a non-empty string, got {type_name(context_id)}", 1007
            )
        plain_string(context_id, "context_id")
        if len(context_id) > MAX_CONTEXT_ID_CHARS:
            raise invalid(
                f"context_id is {len(context_id)} characters long, the limit is "
                f"{MAX_CONTEXT_ID_CHARS}",
                1007,
            )
    voice_settings = None
    if obj.get("voice_settings") is not None:
        voice_settings = VoiceSettings.from_json(obj["voice_settings"])
    generation_config = None
    if obj.get("generation_config") is not None:
        generation_config = GenerationConfig.from_json(obj["generation_config"])
    locators = None
    if obj.get("pronunciation_dictionary_locators") is not None:
        locators = parse_locators(obj["pronunciation_dictionary_locators"])
    api_key = None
    for key_name in ("xi_api_key", "xi-api-key"):
        raw_key = obj.get(key_name)
        if raw_key is not None:
            if not isinstance(raw_key, str):
                raise invalid(f"{key_name} must be a string, got {type_name(raw_key)}", 1007)
            plain_string(raw_key, key_name)  # the message names the field, never the value
            if raw_key:
                api_key = Secret(raw_key)
    return ClientMessage(
        text=text,
        context_id=context_id,
        flush=_opt_bool(obj, "flush"),
        try_trigger_generation=_opt_bool(obj, "try_trigger_generation"),
        close_context=_opt_bool(obj, "close_context"),
        close_socket=_opt_bool(obj, "close_socket"),
        voice_settings=voice_settings,
        generation_config=generation_config,
        pronunciation_dictionary_locators=locators,
        api_key=api_key,
        unknown_keys=tuple(sorted(k for k in obj if k not in KNOWN_CLIENT_KEYS)),
    )
