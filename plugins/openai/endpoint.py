"""What the OpenAI-compatible plugins share: where to connect, which key, and how to say so
without leaking it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

OPENAI_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*]{4,}")


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint. ``key`` is None when none was given for a remote server: the
    caller raises its own typed error naming OPENAI_API_KEY."""

    url: str | None  # as given (argument or $OPENAI_BASE_URL); None: the OpenAI service
    display_url: str  # safe to print: no credentials, query or fragment
    key: str | None = field(repr=False)


def resolve_endpoint(base_url: str | None, api_key: str | None) -> Endpoint:
    """The argument, else $OPENAI_BASE_URL, else the OpenAI service; the key from the argument,
    else $OPENAI_API_KEY; a loopback server without a key gets the placeholder "local"."""
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = api_key or os.environ.get("OPENAI_API_KEY") or None
    if key is None and url is not None and is_loopback(url):
        key = "local"
    return Endpoint(url, safe_url(url or OPENAI_URL), key)


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


def safe_url(url: str) -> str:
    """The URL without user:password, query or fragment (where secrets could hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact(text: str, key: str | None) -> str:
    """``text`` without the key, nor anything shaped like an OpenAI key."""
    if key and len(key) >= 4:
        text = text.replace(key, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def describe_failure(exc: BaseException, key: str | None, limit: int = 300) -> str:
    """One line for an SDK error: its text (shortened), its HTTP status, never the key."""
    status = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    if len(text) > limit:
        text = text[:limit] + "…"
    if status is not None and str(status) not in text:
        text = f"HTTP {status}: {text}"
    return redact(text, key)
