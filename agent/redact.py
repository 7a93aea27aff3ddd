"""Keep secrets out of logs: a logging filter that masks credential headers and known keys.

Socket libraries log handshake headers at DEBUG; the `xi-api-key` and `authorization` headers
carry keys. :func:`redacting_logger` returns a logger whose records are masked before any handler
sees them; give it to the socket library (`logger=`).
"""

from __future__ import annotations

import logging
import re
import threading

_HEADER = re.compile(
    r"(?i)\b(xi-api-key|authorization|api-key|x-api-key)(\s*[:=]\s*)(\S+(?: \S+)?)"
)
_known: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Mask this exact value wherever it would appear in a redacting logger's records."""
    if len(value) >= 6:
        with _lock:
            _known.add(value)


def redact(text: str) -> str:
    """``text`` with credential header values and registered secrets replaced by ``***``."""
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    with _lock:
        secrets = list(_known)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with :func:`redact` (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg = masked
            record.args = ()
        return True


def redacting_logger(name: str) -> logging.Logger:
    """A logger (created once per name) that masks secrets in every record it emits."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
