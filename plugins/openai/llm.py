"""Streaming chat completions through `openai.AsyncOpenAI`, for the cloud and for local servers.

`OpenAILLM.stream()` yields text deltas as they arrive. It watches for stalls (no first token,
or too long a gap between tokens), retries only while nothing has been said yet, fails fast on
bad credentials, and closes the HTTP stream when the consumer stops listening.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Sequence

import anyio
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from agent.errors import (
    LLMAuthError,
    LLMConfigError,
    LLMConnectionError,
    LLMError,
    LLMRequestError,
    LLMServerError,
    LLMStreamError,
    LLMTimeoutError,
)
from agent.interfaces import ChatMessage, LLMChunk, TextDelta, ToolSchema
from plugins.openai.endpoint import describe_failure, resolve_endpoint

__all__ = ["OpenAILLM"]

log = logging.getLogger(__name__)

_CLOSE_GRACE_SECONDS = 1.0


class _MalformedChunk(ValueError):
    """Internal: a stream chunk that is not JSON or lacks the chat.completion.chunk shape."""


#: What a malformed chunk raises while reading: the SDK's JSON decoding, or our shape check.
_MALFORMED = (json.JSONDecodeError, _MalformedChunk)


class _Retryable(Exception):
    """Internal: an attempt failed before the first token in a way worth retrying."""

    def __init__(self, kind: str, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind  # "timeout" | "connection" | "server"
        self.detail = detail
        self.status_code = status_code


class OpenAILLM:
    """An `agent.interfaces.LLM` over any OpenAI-compatible chat completions endpoint.

    base_url defaults to $OPENAI_BASE_URL, then to the OpenAI service. api_key defaults to
    $OPENAI_API_KEY; a loopback base_url without a key gets the placeholder "local".

    Use as `async with OpenAILLM(...) as llm:` (or call `aclose()`) to release the HTTP pool.
    """

    def __init__(
        self,
        model: str,
        *,
        system_prompt: str | None = None,
        temperature: float | None = 0.7,
        max_tokens: int | None = 200,
        base_url: str | None = None,
        api_key: str | None = None,
        first_token_timeout: float = 10.0,
        inter_token_timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_cap: float = 2.0,
    ) -> None:
        if first_token_timeout <= 0 or inter_token_timeout <= 0:
            raise LLMConfigError("first_token_timeout and inter_token_timeout must be > 0 seconds")
        if max_attempts < 1:
            raise LLMConfigError("max_attempts must be at least 1")
        self.model = model
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.first_token_timeout = first_token_timeout
        self.inter_token_timeout = inter_token_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

        endpoint = resolve_endpoint(base_url, api_key)
        self._display_url = endpoint.display_url
        key = endpoint.key
        resolved_url = endpoint.url
        if key is None:
            raise LLMConfigError(
                f"No API key for {self._display_url}: set OPENAI_API_KEY (or pass api_key=). "
                "For a local OpenAI-compatible server, set OPENAI_BASE_URL to its "
                "http://127.0.0.1:PORT/v1 address; any placeholder key works there."
            )
        self._key = key
        backstop = max(first_token_timeout, inter_token_timeout) * 2 + 5.0
        self._client = AsyncOpenAI(
            api_key=key, base_url=resolved_url, max_retries=0, timeout=backstop
        )

    def __repr__(self) -> str:
        return f"OpenAILLM(model={self.model!r}, base_url={self._display_url!r})"

    @property
    def base_url(self) -> str:
        """The endpoint in use, without credentials or query string."""
        return self._display_url

    async def __aenter__(self) -> OpenAILLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Runs shielded, so cancelling does not skip it."""
        with anyio.CancelScope(shield=True):
            await self._client.close()

    def build_messages(self, messages: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
        """Convert the history to the wire format.

        The system prompt is prepended unless the history already starts with a system message.
        Empty assistant messages (a reply interrupted before any of it was heard) are dropped.
        """
        wire: list[ChatCompletionMessageParam] = []
        if self.system_prompt and not (messages and messages[0].role == "system"):
            wire.append({"role": "system", "content": self.system_prompt})
        for message in messages:
            if message.role == "system":
                wire.append({"role": "system", "content": message.content})
            elif message.role == "user":
                wire.append({"role": "user", "content": message.content})
            elif message.content:
                wire.append({"role": "assistant", "content": message.content})
        return wire

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        """Yield the reply's text deltas as they arrive (never empty strings).

        Raises `LLMError` subclasses: `LLMAuthError` at once on 401/403; `LLMTimeoutError`,
        `LLMServerError` or `LLMConnectionError` after `max_attempts` failed attempts before the
        first token; `LLMTimeoutError(phase="inter_token")` or `LLMStreamError` after the first
        token (never retried, since part of the reply was already delivered).

        Consume it under `contextlib.aclosing(llm.stream(...))`: cancelling the consumer, or
        leaving the `aclosing` block early, then closes the HTTP stream at once so the server
        stops generating (the close runs shielded). Without `aclosing` the stream is still
        closed, but only when the generator is garbage-collected.
        """
        wire = self.build_messages(messages)
        chunks, first = await self._open_with_retries(wire)
        delivered = 0
        try:
            if first is None:
                return
            yield TextDelta(first)
            delivered = 1
            while True:
                try:
                    with anyio.fail_after(self.inter_token_timeout):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise LLMTimeoutError(
                        f"LLM stream from {self._display_url} stalled: no token for "
                        f"{self.inter_token_timeout:g} s after {delivered} deltas. The server may "
                        "be overloaded; raise inter_token_timeout if it is just slow.",
                        phase="inter_token",
                        seconds=self.inter_token_timeout,
                    ) from None
                except openai.OpenAIError as exc:
                    raise LLMStreamError(
                        f"LLM stream from {self._display_url} broke after {delivered} deltas: "
                        f"{self._describe(exc)}",
                        deltas_delivered=delivered,
                    ) from None
                except _MALFORMED as exc:
                    raise self._malformed(exc, delivered) from None
                try:
                    text = _delta_text(chunk)
                except _MalformedChunk as exc:
                    raise self._malformed(exc, delivered) from None
                if text:
                    yield TextDelta(text)
                    delivered += 1
        finally:
            await _close_stream(chunks)

    async def _open_with_retries(
        self, wire: list[ChatCompletionMessageParam]
    ) -> tuple[AsyncStream[ChatCompletionChunk], str | None]:
        """Open the stream and read up to the first text, retrying transient failures."""
        last: _Retryable | None = None
        for attempt in range(1, self.max_attempts + 1):
            if last is not None:
                delay = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 2))
                log.info(
                    "LLM attempt %d/%d failed (%s); retrying in %.2f s",
                    attempt - 1,
                    self.max_attempts,
                    last.detail,
                    delay,
                )
                await anyio.sleep(delay)
            try:
                return await self._open_once(wire)
            except _Retryable as exc:
                last = exc
        assert last is not None
        raise self._exhausted(last)

    async def _open_once(
        self, wire: list[ChatCompletionMessageParam]
    ) -> tuple[AsyncStream[ChatCompletionChunk], str | None]:
        """One attempt: send the request, then read until the first non-empty delta.

        Returns the open stream and that first text (None if the reply was empty).
        """
        chunks: AsyncStream[ChatCompletionChunk] | None = None
        try:
            with anyio.fail_after(self.first_token_timeout):
                chunks = await self._client.chat.completions.create(
                    model=self.model,
                    messages=wire,
                    stream=True,
                    temperature=openai.omit if self.temperature is None else self.temperature,
                    max_tokens=openai.omit if self.max_tokens is None else self.max_tokens,
                )
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        return chunks, None
                    text = _delta_text(chunk)
                    if text:
                        return chunks, text
        except TimeoutError:
            if chunks is not None:
                await _close_stream(chunks)
            raise _Retryable(
                "timeout", f"no first token within {self.first_token_timeout:g} s"
            ) from None
        except openai.OpenAIError as exc:
            if chunks is not None:
                await _close_stream(chunks)
            raise self._classify(exc) from None
        except _MALFORMED as exc:
            if chunks is not None:
                await _close_stream(chunks)
            raise _Retryable("server", f"malformed stream chunk ({_what(exc)})") from None
        except BaseException:
            if chunks is not None:
                await _close_stream(chunks)
            raise

    def _classify(self, exc: openai.OpenAIError) -> Exception:
        """Map an SDK error before the first token to a retryable or a final error."""
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return LLMAuthError(
                f"The LLM server at {self._display_url} rejected the API key "
                f"(HTTP {exc.status_code}). Check OPENAI_API_KEY (and OPENAI_BASE_URL).",
                status_code=exc.status_code,
            )
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code >= 500 or exc.status_code in (408, 429):
                return _Retryable("server", self._describe(exc), exc.status_code)
            hint = ""
            if exc.status_code == 404:
                hint = f" Check the model name ({self.model!r}) and that base_url ends in /v1."
            return LLMRequestError(
                f"The LLM server at {self._display_url} refused the request: "
                f"{self._describe(exc)}.{hint}",
                status_code=exc.status_code,
            )
        if isinstance(exc, openai.APITimeoutError):
            return _Retryable("timeout", "the HTTP request timed out")
        if isinstance(exc, openai.APIConnectionError):
            return _Retryable("connection", self._describe(exc))
        if isinstance(exc, openai.APIError):
            return _Retryable("server", self._describe(exc))
        return LLMError(f"LLM call to {self._display_url} failed: {self._describe(exc)}")

    def _exhausted(self, last: _Retryable) -> LLMError:
        """The final error once every attempt failed before the first token."""
        attempts = self.max_attempts
        where = f"{self._display_url} (model {self.model!r}), {attempts} attempt(s)"
        if last.kind == "timeout":
            return LLMTimeoutError(
                f"No first token from {where}: {last.detail}. Is the server running and not "
                "overloaded? Raise first_token_timeout if it is just slow.",
                phase="first_token",
                seconds=self.first_token_timeout,
                attempts=attempts,
            )
        if last.kind == "connection":
            return LLMConnectionError(
                f"Cannot reach the LLM server at {where}: {last.detail}. Start the server "
                "(e.g. `voxloop llm-server`) or fix OPENAI_BASE_URL.",
                attempts=attempts,
            )
        return LLMServerError(
            f"The LLM server failed on {where}: {last.detail}.",
            status_code=last.status_code,
            attempts=attempts,
        )

    def _malformed(self, exc: ValueError, delivered: int) -> LLMStreamError:
        """The error for a malformed chunk after the first token (never retried)."""
        return LLMStreamError(
            f"LLM stream from {self._display_url} sent a malformed chunk after {delivered} "
            f"deltas ({_what(exc)}); the server is not speaking the OpenAI streaming format.",
            deltas_delivered=delivered,
        )

    def _describe(self, exc: BaseException) -> str:
        """The SDK error as one line, with anything key-like removed."""
        return describe_failure(exc, self._key)


def _delta_text(chunk: ChatCompletionChunk) -> str | None:
    """The text content of a chunk's first choice, or None (no choices / no content).

    The SDK builds chunks without validating them, so a server sending the wrong shape shows up
    here: raises _MalformedChunk then.
    """
    try:
        choices = chunk.choices
        if not choices:
            return None
        text: object = choices[0].delta.content
    except (AttributeError, TypeError, IndexError, KeyError):
        raise _MalformedChunk("a chunk without choices[0].delta") from None
    if text is not None and not isinstance(text, str):
        raise _MalformedChunk("delta.content is not a string")
    return text


def _what(exc: ValueError) -> str:
    """A short description of a malformed chunk (never the chunk itself)."""
    if isinstance(exc, json.JSONDecodeError):
        return "not valid JSON"
    return str(exc)


async def _close_stream(chunks: AsyncStream[ChatCompletionChunk]) -> None:
    """Close the HTTP response, shielded from cancellation, bounded by a short grace period."""
    with anyio.move_on_after(_CLOSE_GRACE_SECONDS, shield=True):
        try:
            await chunks.close()
        except Exception as exc:  # closing a broken connection may fail; nothing to recover
            log.debug("closing the LLM stream failed: %r", type(exc).__name__)
