"""Wire types of the ElevenLabs WebSocket TTS protocol: constants, settings, errors, parsing.

Pure data and validation, no state machine (that is `protocol.py`). Every parser raises
`ProtocolError` with a message that names the offending field and what to send instead; no
message ever contains an API key or a raw frame.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload
from urllib.parse import parse_qsl, quote, unquote

# ---------------------------------------------------------------------------------------------
# constants

DEFAULT_SCHEDULE: tuple[int, ...] = (120, 160, 250, 290)
MIN_SCHEDULE_VALUE = 50
MAX_SCHEDULE_VALUE = 500
MAX_CONTEXTS = 5
DEFAULT_INACTIVITY_TIMEOUT = 20.0
MIN_INACTIVITY_TIMEOUT = 1.0
MAX_INACTIVITY_TIMEOUT = 180.0
MAX_SEED = 4_294_967_295
MAX_MESSAGE_CHARS = 256 * 1024
#: Largest raw audio chunk `ServerProtocol.send_audio` accepts (base64 makes it 4/3 larger;
#: clients keep the default 1 MiB incoming limit).
MAX_AUDIO_CHUNK_BYTES = 512 * 1024
#: try_trigger_generation only generates when at least this many characters are buffered.
TRY_TRIGGER_MIN_CHARS = 50
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
#: WebSocket close reasons are limited to 123 UTF-8 bytes.
MAX_CLOSE_REASON_BYTES = 123
APPLY_TEXT_NORMALIZATION_VALUES = ("auto", "on", "off")

SETTINGS_CHANGED_REASON = (
    "voice_settings field must be provided in the first message and then either be not "
    "provided or not change."
)
MAX_CONTEXTS_MESSAGE = (
    f"Too many active contexts: at most {MAX_CONTEXTS} per connection, and a closed context "
    "counts until its isFinal message has been sent. Close contexts and wait for their "
    "isFinal before opening new ones."
)

SINGLE_PATH_SUFFIX = "/stream-input"
MULTI_PATH_SUFFIX = "/multi-stream-input"
PATH_PREFIX = "/v1/text-to-speech/"


def format_seconds(value: float) -> str:
    """Format a number of seconds like the service does: 20 -> "20", 2.5 -> "2.5"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def INACTIVITY_REASON(timeout: float) -> str:
    """The service's inactivity close reason for `timeout` seconds."""
    return (
        f"Have not received a new text input within the timeout of {format_seconds(timeout)} "
        "seconds. Streaming input terminated. Please send a new text input to continue."
    )


def fit_close_reason(reason: str) -> str:
    """Shorten `reason` to fit a WebSocket close frame (123 UTF-8 bytes).

    Drops whole trailing sentences first (so the inactivity reason keeps "... Streaming input
    terminated."), then cuts at a character boundary.
    """
    if len(reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES:
        return reason
    sentences = re.split(r"(?<=[.!?])\s+", reason)
    while len(sentences) > 1:
        sentences.pop()
        candidate = " ".join(sentences)
        if len(candidate.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES:
            return candidate
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
    return raw.decode("utf-8", errors="ignore")


# ---------------------------------------------------------------------------------------------
# errors


class ProtocolError(Exception):
    """A protocol rule was broken (by the peer, or by a request we refuse).

    `code` is the WebSocket close code it maps to (1008 policy, 1007 bad data, 1009 too big,
    1003 unsupported data), `error` a short slug ("invalid_message", "max_active_conversations"),
    `message` a human explanation that names cause and fix. The message never contains a key.
    Construct as ProtocolError(code, error, message) or ProtocolError(message, code=..,
    error=..); subclasses default `code`/`error`, so `TooManyContextsError("...")` is enough.
    """

    default_code = 1008
    default_error = "invalid_message"

    @overload
    def __init__(
        self, message: str, *, code: int | None = None, error: str | None = None
    ) -> None: ...

    @overload
    def __init__(
        self, code: int | None = None, error: str | None = None, message: str | None = None
    ) -> None: ...

    def __init__(
        self,
        *args: int | str | None,
        code: int | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> None:
        if args and isinstance(args[0], str):  # ProtocolError(message, code=..., error=...)
            message, args = args[0], args[1:]
        if args:  # ProtocolError(code, error, message)
            names = ("code", "error", "message")
            if len(args) > 3:
                raise TypeError("ProtocolError takes at most (code, error, message)")
            values = dict(zip(names, args, strict=False))
            code = values.get("code", code)  # type: ignore[assignment]
            error = values.get("error", error)  # type: ignore[assignment]
            message = values.get("message", message)  # type: ignore[assignment]
        self.code = self.default_code if code is None else int(code)
        self.error = self.default_error if error is None else str(error)
        self.message = message or f"protocol error {self.error} (code {self.code})"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code}, error={self.error!r}, message={self.message!r})"

    def to_frame(self) -> dict[str, Any]:
        """The error frame the server sends: {"error", "message", "code"}."""
        return {"error": self.error, "message": self.message, "code": self.code}


class InactivityTimeoutError(ProtocolError):
    """The server closed the socket because no text arrived within inactivity_timeout."""

    default_error = "inactivity_timeout"


class SettingsChangedError(ProtocolError):
    """voice_settings changed after a context's first message (the live service closes 1008)."""

    default_error = "settings_changed"


class TooManyContextsError(ProtocolError):
    """More than MAX_CONTEXTS contexts at once (closed contexts count until their final)."""

    default_error = "max_active_conversations"


class QuotaExceededError(ProtocolError):
    """The account's character quota is used up; retrying will not help."""

    default_error = "quota_exceeded"


# ---------------------------------------------------------------------------------------------
# secrets


class Secret:
    """An API key. Never shown by repr/str; `reveal()` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value = value

    def reveal(self) -> str:
        """The key itself, for a header or a first message. Never log the result."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode("utf-8"), other._value.encode("utf-8"))

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


# ---------------------------------------------------------------------------------------------
# small validators (raise ProtocolError naming the field)


def _bad(message: str, code: int = 1008, error: str = "invalid_message") -> ProtocolError:
    return ProtocolError(code=code, error=error, message=message)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{name} must be a number between {low:g} and {high:g}, got {_type_name(value)}")
    if not math.isfinite(value) or not low <= value <= high:
        raise _bad(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def _opt_bool(obj: Mapping[str, Any], key: str) -> bool:
    """A boolean flag; absent or null means false."""
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false, got {_type_name(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class VoiceSettings:
    """Per-context voice settings; None fields are left to the server's defaults."""

    stability: float | None = None
    similarity_boost: float | None = None
    style: float | None = None
    use_speaker_boost: bool | None = None
    speed: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object, omitting unset fields."""
        out: dict[str, Any] = {}
        for name in ("stability", "similarity_boost", "style", "use_speaker_boost", "speed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, obj: object) -> VoiceSettings:
        """Validate voice_settings (speed 0.7..1.2, the others 0..1; unknown keys ignored)."""
        if not isinstance(obj, dict):
            raise _bad(f"voice_settings must be an object, got {_type_name(obj)}")
        values: dict[str, Any] = {}
        for name in ("stability", "similarity_boost", "style"):
            if obj.get(name) is not None:
                values[name] = _number(obj[name], f"voice_settings.{name}", 0.0, 1.0)
        if obj.get("speed") is not None:
            values["speed"] = _number(obj["speed"], "voice_settings.speed", 0.7, 1.2)
        boost = obj.get("use_speaker_boost")
        if boost is not None:
            if not isinstance(boost, bool):
                raise _bad(
                    "voice_settings.use_speaker_boost must be true or false, "
                    f"got {_type_name(boost)}"
                )
            values["use_speaker_boost"] = boost
        return cls(**values)


@dataclass(frozen=True)
class GenerationConfig:
    """How many characters to buffer before each generation (each 50..500)."""

    chunk_length_schedule: tuple[int, ...] = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        schedule = self.chunk_length_schedule
        if not isinstance(schedule, tuple) or not schedule:
            raise _bad("generation_config.chunk_length_schedule must be a non-empty list of ints")
        for value in schedule:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad(
                    "generation_config.chunk_length_schedule must hold integers, "
                    f"got {_type_name(value)}"
                )
            if not MIN_SCHEDULE_VALUE <= value <= MAX_SCHEDULE_VALUE:
                raise _bad(
                    "generation_config.chunk_length_schedule values must be between "
                    f"{MIN_SCHEDULE_VALUE} and {MAX_SCHEDULE_VALUE}, got {value}"
                )

    def to_json(self) -> dict[str, Any]:
        return {"chunk_length_schedule": list(self.chunk_length_schedule)}

    @classmethod
    def from_json(cls, obj: object) -> GenerationConfig:
        """Validate a generation_config object; a missing schedule means the default."""
        if not isinstance(obj, dict):
            raise _bad(f"generation_config must be an object, got {_type_name(obj)}")
        schedule = obj.get("chunk_length_schedule")
        if schedule is None:
            return cls()
        if not isinstance(schedule, list):
            raise _bad(
                "generation_config.chunk_length_schedule must be a list of integers, "
                f"got {_type_name(schedule)}"
            )
        # Whole floats such as 120.0 are accepted as ints (JSON has one number type).
        values: list[Any] = [
            int(v) if isinstance(v, float) and v.is_integer() else v for v in schedule
        ]
        return cls(tuple(values))

    def threshold(self, index: int) -> int:
        """Characters to buffer before generation number `index` (the last value repeats)."""
        return self.chunk_length_schedule[min(index, len(self.chunk_length_schedule) - 1)]


@dataclass(frozen=True)
class PronunciationDictionaryLocator:
    """A pronunciation dictionary reference (allowed on a context's first message)."""

    pronunciation_dictionary_id: str
    version_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pronunciation_dictionary_id": self.pronunciation_dictionary_id}
        if self.version_id is not None:
            out["version_id"] = self.version_id
        return out

    @classmethod
    def from_json(cls, obj: object) -> PronunciationDictionaryLocator:
        if not isinstance(obj, dict):
            raise _bad(
                "each pronunciation_dictionary_locators entry must be an object, "
                f"got {_type_name(obj)}"
            )
        dict_id = obj.get("pronunciation_dictionary_id")
        if not isinstance(dict_id, str) or not dict_id:
            raise _bad("pronunciation_dictionary_id must be a non-empty string")
        version = obj.get("version_id")
        if version is not None and not isinstance(version, str):
            raise _bad(f"version_id must be a string, got {_type_name(version)}")
        return cls(dict_id, version)


def parse_locators(obj: object) -> tuple[PronunciationDictionaryLocator, ...]:
    """Validate pronunciation_dictionary_locators (a list of locator objects)."""
    if not isinstance(obj, list):
        raise _bad(f"pronunciation_dictionary_locators must be a list, got {_type_name(obj)}")
    return tuple(PronunciationDictionaryLocator.from_json(item) for item in obj)


# ---------------------------------------------------------------------------------------------
# connection parameters (path + query)


def _query_bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise _bad(
        f"query parameter {name} must be 'true' or 'false', got {raw[:40]!r}",
        error="invalid_request",
    )


def api_key_from_query(query: Mapping[str, str]) -> Secret | None:
    """The key a client put in the query (`authorization=Bearer ...` or `xi_api_key`), if any.

    Servers accept it for compatibility; our client never sends a key in a URL.
    """
    for name in ("authorization", "xi_api_key", "xi-api-key"):
        raw = query.get(name)
        if raw:
            value = raw.strip()
            if value.lower().startswith("bearer "):
                value = value[len("bearer ") :].strip()
            if value:
                return Secret(value)
    return None


@dataclass(frozen=True)
class StreamParams:
    """What a client asked for in the connection URL (never holds a key)."""

    voice_id: str
    multi: bool = False
    model_id: str | None = None
    output_format: str = DEFAULT_OUTPUT_FORMAT
    inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT
    sync_alignment: bool = False
    auto_mode: bool = False
    language_code: str | None = None
    enable_logging: bool = True
    enable_ssml_parsing: bool = False
    apply_text_normalization: str = "auto"
    seed: int | None = None

    @classmethod
    def from_path_and_query(cls, path: str, query: Mapping[str, str]) -> StreamParams:
        """Parse `/v1/text-to-speech/{voice_id}/stream-input` (or `multi-stream-input`) + query.

        A query string left on `path` is parsed too (`query` wins). Raises
        ProtocolError(code=1008, error="invalid_request") naming the bad part.
        """
        merged: dict[str, str] = {}
        if "?" in path:
            path, _, raw_query = path.partition("?")
            merged.update(parse_qsl(raw_query, keep_blank_values=True))
        merged.update(query)
        voice_id, multi = _parse_path(path)

        def text_param(name: str) -> str | None:
            value = merged.get(name)
            if value is None or value == "":
                return None
            return value

        output_format = merged.get("output_format", DEFAULT_OUTPUT_FORMAT).strip()
        if not output_format:
            raise _bad("query parameter output_format must not be empty", error="invalid_request")
        timeout = DEFAULT_INACTIVITY_TIMEOUT
        raw_timeout = merged.get("inactivity_timeout")
        if raw_timeout is not None:
            try:
                timeout = float(raw_timeout)
            except ValueError:
                timeout = math.nan
            if not MIN_INACTIVITY_TIMEOUT <= timeout <= MAX_INACTIVITY_TIMEOUT:
                raise _bad(
                    "query parameter inactivity_timeout must be a number of seconds between "
                    f"{MIN_INACTIVITY_TIMEOUT:g} and {MAX_INACTIVITY_TIMEOUT:g}, "
                    f"got {raw_timeout[:40]!r}",
                    error="invalid_request",
                )
        seed: int | None = None
        raw_seed = merged.get("seed")
        if raw_seed is not None and raw_seed != "":
            if not raw_seed.isdigit() or int(raw_seed) > MAX_SEED:
                raise _bad(
                    f"query parameter seed must be an integer between 0 and {MAX_SEED}, "
                    f"got {raw_seed[:40]!r}",
                    error="invalid_request",
                )
            seed = int(raw_seed)
        normalization = merged.get("apply_text_normalization", "auto").strip().lower()
        if normalization not in APPLY_TEXT_NORMALIZATION_VALUES:
            raise _bad(
                "query parameter apply_text_normalization must be one of auto, on, off, "
                f"got {normalization[:40]!r}",
                error="invalid_request",
            )
        return cls(
            voice_id=voice_id,
            multi=multi,
            model_id=text_param("model_id"),
            output_format=output_format,
            inactivity_timeout=timeout,
            sync_alignment=_query_bool(merged, "sync_alignment", False),
            auto_mode=_query_bool(merged, "auto_mode", False),
            language_code=text_param("language_code"),
            enable_logging=_query_bool(merged, "enable_logging", True),
            enable_ssml_parsing=_query_bool(merged, "enable_ssml_parsing", False),
            apply_text_normalization=normalization,
            seed=seed,
        )

    def to_path_and_query(self) -> tuple[str, dict[str, str]]:
        """The URL path and query a client connects with. Never includes a key."""
        suffix = MULTI_PATH_SUFFIX if self.multi else SINGLE_PATH_SUFFIX
        path = PATH_PREFIX + quote(self.voice_id, safe="") + suffix
        query: dict[str, str] = {"output_format": self.output_format}
        if self.model_id is not None:
            query["model_id"] = self.model_id
        if self.inactivity_timeout != DEFAULT_INACTIVITY_TIMEOUT:
            query["inactivity_timeout"] = format_seconds(self.inactivity_timeout)
        flags = {
            "sync_alignment": (self.sync_alignment, False),
            "auto_mode": (self.auto_mode, False),
            "enable_logging": (self.enable_logging, True),
            "enable_ssml_parsing": (self.enable_ssml_parsing, False),
        }
        for name, (value, default) in flags.items():
            if value != default:
                query[name] = "true" if value else "false"
        if self.language_code is not None:
            query["language_code"] = self.language_code
        if self.apply_text_normalization != "auto":
            query["apply_text_normalization"] = self.apply_text_normalization
        if self.seed is not None:
            query["seed"] = str(self.seed)
        return path, query


def _parse_path(path: str) -> tuple[str, bool]:
    if not path.startswith(PATH_PREFIX):
        raise _bad(
            f"unknown path: expected {PATH_PREFIX}{{voice_id}}{SINGLE_PATH_SUFFIX} or "
            f"{PATH_PREFIX}{{voice_id}}{MULTI_PATH_SUFFIX}",
            error="invalid_request",
        )
    rest = path[len(PATH_PREFIX) :]
    if rest.endswith(MULTI_PATH_SUFFIX):
        raw_voice, multi = rest[: -len(MULTI_PATH_SUFFIX)], True
    elif rest.endswith(SINGLE_PATH_SUFFIX):
        raw_voice, multi = rest[: -len(SINGLE_PATH_SUFFIX)], False
    else:
        raise _bad(
            "unknown endpoint: the path must end with /stream-input or /multi-stream-input",
            error="invalid_request",
        )
    voice_id = unquote(raw_voice)
    if not voice_id or "/" in voice_id:
        raise _bad(
            f"missing or malformed voice_id in the path (expected {PATH_PREFIX}{{voice_id}}/...)",
            error="invalid_request",
        )
    return voice_id, multi


# ---------------------------------------------------------------------------------------------
# alignment


def _times(values: object, name: str) -> tuple[int | float, ...]:
    if not isinstance(values, list):
        raise _bad(f"alignment.{name} must be a list of numbers, got {_type_name(values)}", 1007)
    out: list[int | float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(f"alignment.{name} must hold numbers, got {_type_name(value)}", 1007)
        if not math.isfinite(value):
            raise _bad(f"alignment.{name} must hold finite numbers", 1007)
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
            raise _bad(
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
            raise _bad(f"alignment must be an object, got {_type_name(obj)}", 1007)
        chars = obj.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise _bad("alignment.chars must be a list of strings", 1007)
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


# ---------------------------------------------------------------------------------------------
# client -> server messages


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
            message=f"expected a JSON object, got {_type_name(obj)}: {who} must send one "
            "JSON object per text frame",
            code=1007,
        )
    return obj


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Validate one client frame (types only; which keys make sense is the state machine's job)."""
    obj = loads_object(data, "clients")
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise _bad(f"text must be a string, got {_type_name(text)}", 1007)
    context_id = obj.get("context_id")
    if context_id is not None and (not isinstance(context_id, str) or not context_id):
        raise _bad(f"context_id must be a non-empty string, got {_type_name(context_id)}", 1007)
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
                raise _bad(f"{key_name} must be a string, got {_type_name(raw_key)}", 1007)
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


# ---------------------------------------------------------------------------------------------
# server -> client frames


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
        raise _bad("audio is not valid base64", 1007) from None


def frame_context_id(obj: Mapping[str, Any]) -> str | None:
    """`contextId` or `context_id` of a server frame (ProtocolError if not a string)."""
    value = obj.get("contextId", obj.get("context_id"))
    if value is not None and not isinstance(value, str):
        raise _bad(f"contextId must be a string, got {_type_name(value)}", 1007)
    return value


def optional_alignment(obj: Mapping[str, Any], *names: str) -> Alignment | None:
    for name in names:
        value = obj.get(name)
        if value is not None:
            return Alignment.from_json(value)
    return None


__all__: Sequence[str] = (
    "APPLY_TEXT_NORMALIZATION_VALUES",
    "DEFAULT_INACTIVITY_TIMEOUT",
    "DEFAULT_OUTPUT_FORMAT",
    "DEFAULT_SCHEDULE",
    "INACTIVITY_REASON",
    "MAX_AUDIO_CHUNK_BYTES",
    "MAX_CONTEXTS",
    "MAX_CONTEXTS_MESSAGE",
    "MAX_INACTIVITY_TIMEOUT",
    "MAX_MESSAGE_CHARS",
    "SETTINGS_CHANGED_REASON",
    "Alignment",
    "ClientMessage",
    "Close",
    "GenerationConfig",
    "InactivityTimeoutError",
    "PronunciationDictionaryLocator",
    "ProtocolError",
    "QuotaExceededError",
    "Secret",
    "SettingsChangedError",
    "StreamParams",
    "TooManyContextsError",
    "VoiceSettings",
    "api_key_from_query",
    "fit_close_reason",
    "parse_client_message",
)
