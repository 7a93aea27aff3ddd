"""Settings of the ElevenLabs WebSocket protocol: the connection's parameters (path and query,
with `output_format` parsed once into a typed `OutputFormat`), voice settings, the chunk
schedule, pronunciation dictionaries, and `Secret`, the wrapper that keeps an API key out of
every repr.

Pure data and validation. Every parser raises `ProtocolError` naming the field.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from .errors import ProtocolError, format_seconds, invalid, plain_string, type_name
from .formats import DEFAULT_OUTPUT_FORMAT, OutputFormat, parse_output_format

DEFAULT_SCHEDULE: tuple[int, ...] = (120, 160, 250, 290)
MIN_SCHEDULE_VALUE = 50
MAX_SCHEDULE_VALUE = 500
DEFAULT_INACTIVITY_TIMEOUT = 20.0
MIN_INACTIVITY_TIMEOUT = 1.0
MAX_INACTIVITY_TIMEOUT = 180.0
MAX_SEED = 4_294_967_295
APPLY_TEXT_NORMALIZATION_VALUES = ("auto", "on", "off")
#: try_trigger_generation only generates when at least this many characters are buffered.
TRY_TRIGGER_MIN_CHARS = 50

#: A stock voice of the service; the local server speaks it (and any unknown id, unless
#: strict) in its own voice.
DEFAULT_VOICE_ID = "JBFqnCBsd6RMkjVDRZzb"

SINGLE_PATH_SUFFIX = "/stream-input"
MULTI_PATH_SUFFIX = "/multi-stream-input"
PATH_PREFIX = "/v1/text-to-speech/"

#: The local server names each accepted socket in this handshake response header (a number,
#: 1, 2, ...); its per-context timings carry it, since context ids repeat across sockets.
#: The real service sends no such header.
CONNECTION_ID_HEADER = "X-Voxloop-Connection"


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


def _number(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(
            f"{name} must be a number between {low:g} and {high:g}, got {type_name(value)}"
        )
    if not math.isfinite(value) or not low <= value <= high:
        raise invalid(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


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
            raise invalid(f"voice_settings must be an object, got {type_name(obj)}")
        values: dict[str, Any] = {}
        for name in ("stability", "similarity_boost", "style"):
            if obj.get(name) is not None:
                values[name] = _number(obj[name], f"voice_settings.{name}", 0.0, 1.0)
        if obj.get("speed") is not None:
            values["speed"] = _number(obj["speed"], "voice_settings.speed", 0.7, 1.2)
        boost = obj.get("use_speaker_boost")
        if boost is not None:
            if not isinstance(boost, bool):
                raise invalid(
                    "voice_settings.use_speaker_boost must be true or false, "
                    f"got {type_name(boost)}"
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
            raise invalid(
                "generation_config.chunk_length_schedule must be a non-empty list of ints"
            )
        for value in schedule:
            if isinstance(value, bool) or not isinstance(value, int):
                raise invalid(
                    "generation_config.chunk_length_schedule must hold integers, "
                    f"got {type_name(value)}"
                )
            if not MIN_SCHEDULE_VALUE <= value <= MAX_SCHEDULE_VALUE:
                raise invalid(
                    "generation_config.chunk_length_schedule values must be between "
                    f"{MIN_SCHEDULE_VALUE} and {MAX_SCHEDULE_VALUE}, got {value}"
                )

    def to_json(self) -> dict[str, Any]:
        return {"chunk_length_schedule": list(self.chunk_length_schedule)}

    @classmethod
    def from_json(cls, obj: object) -> GenerationConfig:
        """Validate a generation_config object; a missing schedule means the default."""
        if not isinstance(obj, dict):
            raise invalid(f"generation_config must be an object, got {type_name(obj)}")
        schedule = obj.get("chunk_length_schedule")
        if schedule is None:
            return cls()
        if not isinstance(schedule, list):
            raise invalid(
                "generation_config.chunk_length_schedule must be a list of integers, "
                f"got {type_name(schedule)}"
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
            raise invalid(
                "each pronunciation_dictionary_locators entry must be an object, "
                f"got {type_name(obj)}"
            )
        dict_id = obj.get("pronunciation_dictionary_id")
        if not isinstance(dict_id, str) or not dict_id:
            raise invalid("pronunciation_dictionary_id must be a non-empty string")
        plain_string(dict_id, "pronunciation_dictionary_id")
        version = obj.get("version_id")
        if version is not None and not isinstance(version, str):
            raise invalid(f"version_id must be a string, got {type_name(version)}")
        if version is not None:
            plain_string(version, "version_id")
        return cls(dict_id, version)


def parse_locators(obj: object) -> tuple[PronunciationDictionaryLocator, ...]:
    """Validate pronunciation_dictionary_locators (a list of locator objects)."""
    if not isinstance(obj, list):
        raise invalid(f"pronunciation_dictionary_locators must be a list, got {type_name(obj)}")
    return tuple(PronunciationDictionaryLocator.from_json(item) for item in obj)


def _query_bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise invalid(
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
    output_format: OutputFormat = DEFAULT_OUTPUT_FORMAT
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
        ProtocolError(code=1008, error="invalid_request") naming the bad part, or
        error="invalid_output_format" (listing the supported formats) for an unknown format.
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

        raw_format = merged.get("output_format", DEFAULT_OUTPUT_FORMAT.name).strip()
        if not raw_format:
            raise invalid(
                "query parameter output_format must not be empty", error="invalid_request"
            )
        try:
            output_format = parse_output_format(raw_format)
        except ValueError as err:
            # the service accepts the handshake, then sends this error frame and closes (1008)
            raise ProtocolError(str(err), code=1008, error="invalid_output_format") from None
        timeout = DEFAULT_INACTIVITY_TIMEOUT
        raw_timeout = merged.get("inactivity_timeout")
        if raw_timeout is not None:
            try:
                timeout = float(raw_timeout)
            except ValueError:
                timeout = math.nan
            if not MIN_INACTIVITY_TIMEOUT <= timeout <= MAX_INACTIVITY_TIMEOUT:
                raise invalid(
                    "query parameter inactivity_timeout must be a number of seconds between "
                    f"{MIN_INACTIVITY_TIMEOUT:g} and {MAX_INACTIVITY_TIMEOUT:g}, "
                    f"got {raw_timeout[:40]!r}",
                    error="invalid_request",
                )
        seed: int | None = None
        raw_seed = merged.get("seed")
        if raw_seed is not None and raw_seed != "":
            if not raw_seed.isdigit() or int(raw_seed) > MAX_SEED:
                raise invalid(
                    f"query parameter seed must be an integer between 0 and {MAX_SEED}, "
                    f"got {raw_seed[:40]!r}",
                    error="invalid_request",
                )
            seed = int(raw_seed)
        normalization = merged.get("apply_text_normalization", "auto").strip().lower()
        if normalization not in APPLY_TEXT_NORMALIZATION_VALUES:
            raise invalid(
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
        query: dict[str, str] = {"output_format": self.output_format.name}
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
        raise invalid(
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
        raise invalid(
            "unknown endpoint: the path must end with /stream-input or /multi-stream-input",
            error="invalid_request",
        )
    voice_id = unquote(raw_voice)
    if not voice_id or "/" in voice_id:
        raise invalid(
            f"missing or malformed voice_id in the path (expected {PATH_PREFIX}{{voice_id}}/...)",
            error="invalid_request",
        )
    return voice_id, multi
