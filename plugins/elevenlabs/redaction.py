"""Keep every API key a client sends out of the server's logs, the socket library's included.

A client may send its key four ways: the `xi-api-key` header, `authorization=Bearer KEY` or
`xi_api_key=KEY` in the query string, or `xi_api_key` / `xi-api-key` in a JSON message. The
socket library logs handshake lines and every frame at DEBUG, before our protocol has read
them, and elides long frames to their beginning and end (so a key can be cut in two). So:

- `redact_text` masks the value after any key-like name, whatever the separator (header
  `name: value`, query `name=value`, JSON `"name":"value"`), plus every key registered with
  `remember_key` or `agent.redact.register_secret`;
- `SecretFilter` also replaces the socket library's frame objects in a record's arguments
  before they are rendered: a complete JSON text frame is rendered with its key fields masked
  (and the key remembered), a fragment or a binary frame by its length only; exception text
  attached to a record is masked too.

`secret_safe_logger(name)` gives a logger with that filter (hand it to the socket library).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

from websockets.frames import Frame, Opcode

from agent.redact import redact

#: Client-sent keys remembered for masking (the oldest is forgotten first; the name patterns
#: still mask a forgotten key wherever it appears next to its name).
MAX_REMEMBERED_KEYS = 256

_NAMES = r"xi[_-]api[_-]key|x[_-]api[_-]key|api[_-]key|authorization"
_KEY_VALUE = re.compile(
    r"(?i)(\b(?:" + _NAMES + r"))"  # the name
    r"((?:\\?[\"'])?\s*(?:[:=]|%3A|%3D)\s*(?:\\?[\"'])?)"  # separator, optionally quoted
    r"((?:bearer(?:\s+|%20|\+))?)"  # an optional scheme
    r"([^\s\"'&,;}\\]+)"  # the value
)
_KEY_FIELDS = ("xi_api_key", "xi-api-key")

_lock = threading.Lock()
_remembered: OrderedDict[str, None] = OrderedDict()


def remember_key(value: str) -> None:
    """Mask this exact value in every record a `SecretFilter` sees from now on."""
    if len(value) < 4:
        return
    with _lock:
        _remembered[value] = None
        _remembered.move_to_end(value)
        while len(_remembered) > MAX_REMEMBERED_KEYS:
            _remembered.popitem(last=False)


def redact_text(text: str) -> str:
    """`text` with key values after key-like names and every remembered key replaced by ***."""
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}***", text)
    with _lock:
        keys = [k for k in _remembered if k in text]
    for key in sorted(keys, key=len, reverse=True):
        text = text.replace(key, "***")
    return redact(text)


def _mask_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for name, value in obj.items():
            if isinstance(name, str) and name.lower() in _KEY_FIELDS:
                if isinstance(value, str) and value:
                    remember_key(value)
                out[name] = "***"
            else:
                out[name] = _mask_json(value)
        return out
    if isinstance(obj, list):
        return [_mask_json(item) for item in obj]
    return obj


def safe_frame(frame: Frame) -> str:
    """How a frame may be shown in a log line: keys masked, fragments by length only."""
    size = len(frame.data)
    if frame.opcode is Opcode.CONT or (frame.opcode is Opcode.TEXT and not frame.fin):
        return f"{frame.opcode.name} <fragment, {size} bytes, not shown>"
    if frame.opcode is Opcode.BINARY:
        return f"BINARY <{size} bytes, not shown>"
    if frame.opcode is not Opcode.TEXT:
        return redact_text(str(frame))
    try:
        text = bytes(frame.data).decode("utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return f"TEXT <{size} bytes, not JSON, not shown>"
    masked = json.dumps(_mask_json(obj), separators=(",", ":"), ensure_ascii=True)
    return redact_text(str(Frame(Opcode.TEXT, masked.encode("ascii"))))


class SecretFilter(logging.Filter):
    """Masks keys in a record (its arguments' frames, its message, its exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if isinstance(record.args, tuple) and any(isinstance(a, Frame) for a in record.args):
                record.args = tuple(
                    safe_frame(a) if isinstance(a, Frame) else a for a in record.args
                )
            message = record.getMessage()
        except Exception:  # a record that cannot be rendered is shown by its template only
            record.msg, record.args = redact_text(str(record.msg)), ()
            return True
        masked = redact_text(message)
        if masked != message or record.args:
            record.msg, record.args = masked, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def secret_safe_logger(name: str) -> logging.Logger:
    """The logger `name` with a SecretFilter (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, SecretFilter) for f in logger.filters):
        logger.addFilter(SecretFilter())
    return logger


__all__ = [
    "MAX_REMEMBERED_KEYS",
    "SecretFilter",
    "redact_text",
    "remember_key",
    "safe_frame",
    "secret_safe_logger",
]
