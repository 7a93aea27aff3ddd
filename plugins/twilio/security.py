"""Webhook signatures and one-time media-stream tokens.

Twilio signs each webhook request: ``X-Twilio-Signature`` is
base64(HMAC-SHA1(auth token, full URL + every POST parameter sorted by name, each name directly
followed by its value)). For a GET, the parameters are in the URL and nothing is appended.
`validate_signature` also accepts the URL with its default port added or removed, as Twilio's
own libraries do (a proxy may add or drop ``:443``). A webhook with a JSON body is signed over
the URL alone, which then carries ``bodySHA256``, the hex SHA-256 of the body
(`validate_body_signature`).

A media stream carries no signature, so a validated webhook issues a one-time token
(`StreamTokens.issue`) that goes into the TwiML as a `<Parameter>` and comes back in
``start.customParameters``; `StreamTokens.redeem` accepts it once, within its lifetime, for the
call it was issued to.

The auth token lives in `AuthToken`, whose repr and str never show it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit


class AuthToken:
    """The Twilio auth token; `repr`/`str` show only that one is set."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("the Twilio auth token is empty: set TWILIO_AUTH_TOKEN or omit it")
        self._value = value

    def reveal(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return "AuthToken(<hidden>)"

    __str__ = __repr__


def compute_signature(token: AuthToken, url: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """Twilio's X-Twilio-Signature for `url` and POST `params` (name, value pairs)."""
    data = url + "".join(name + value for name, value in sorted(params, key=lambda p: p[0]))
    digest = hmac.new(token.reveal(), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    variants = [url]
    if default is None or parts.hostname is None:
        return variants
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    if parts.port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return variants


def validate_signature(
    token: AuthToken, url: str, params: Iterable[tuple[str, str]], signature: str | None
) -> bool:
    """True if `signature` is Twilio's for this request (constant-time comparison)."""
    if not signature:
        return False
    pairs = list(params)
    return any(
        hmac.compare_digest(compute_signature(token, candidate, pairs).encode(),
                            signature.encode("utf-8", "replace"))
        for candidate in _port_variants(url)
    )


def validate_body_signature(
    token: AuthToken, url: str, body: bytes, signature: str | None
) -> bool:
    """True if `signature` is Twilio's for a webhook with a JSON `body`: the URL (with its
    ``bodySHA256`` query parameter) is signed with no parameters appended, and that parameter
    is the SHA-256 of the body, in hex. A URL without it never validates."""
    digests = [v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)
               if k == "bodySHA256"]
    if len(digests) != 1 or not validate_signature(token, url, (), signature):
        return False
    expected = hashlib.sha256(body).hexdigest()
    return hmac.compare_digest(expected.encode(), digests[0].lower().encode("utf-8", "replace"))


class StreamTokens:
    """One-time tokens tying a media stream to the validated webhook that announced it.

    Bounded: at most `max_pending` unredeemed tokens (the oldest are forgotten first), each valid
    for `ttl` seconds. Time is passed in (`now`), as everywhere in the sans-I/O parts.
    """

    def __init__(self, ttl: float = 60.0, max_pending: int = 10_000) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def issue(self, call_sid: str, now: float) -> str:
        self._expire(now)
        token = secrets.token_urlsafe(24)
        self._pending[token] = (call_sid, now + self.ttl)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        return token

    def redeem(self, token: str | None, call_sid: str, now: float) -> str | None:
        """None if the token is good (it is then spent), else why the stream is refused."""
        self._expire(now)
        if not token:
            return "no stream token: the call did not come through the validated webhook"
        entry = self._pending.pop(token, None)
        if entry is None:
            return "unknown, expired or already used stream token"
        issued_for, _ = entry
        if issued_for and call_sid and not hmac.compare_digest(issued_for, call_sid):
            return "stream token was issued for another call"
        return None

    def __len__(self) -> int:
        return len(self._pending)

    def _expire(self, now: float) -> None:
        while self._pending:
            token, (_, expiry) = next(iter(self._pending.items()))
            if expiry > now:
                break
            del self._pending[token]
