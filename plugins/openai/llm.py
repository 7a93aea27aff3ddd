"""Streaming chat completions through `openai.AsyncOpenAI`, for the cloud and for local servers.

`OpenAILLM.stream()` yields the reply as it arrives: `TextDelta`s, and whole `ToolCall`s when the
model calls tools. It watches for stalls (no first token, or too long a gap between tokens),
retries only while nothing has been said yet, fails fast on bad credentials, and closes the HTTP
stream when the consumer stops listening. Its HTTP client lives exactly as long as its
`async with` block.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

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
from agent.tools import check_history
from plugins.openai.chat_format import MalformedChunk, ReplyDecoder, wire_messages, wire_tools
from plugins.openai.endpoint import describe_failure, resolve_endpoint

__all__ = ["NO_TOOLS_WARNING", "OpenAILLM"]

log = logging.getLogger(__name__)

_CLOSE_GRACE_SECONDS = 1.0
#: After the finish chunk, how long to wait for the rest ([DONE]) before closing anyway.
_TAIL_SECONDS = 1.0

#: What `OpenAILLM.tool_warning` says for a model that cannot call tools (e.g. the local one).
NO_TOOLS_WARNING = (
    "The LLM at {url} (model {model!r}) cannot call tools, so the agent's {count} tool(s) "
    "({names}) are not offered to it and it will answer in words only. To use tools, point "
    "OPENAI_BASE_URL at a tool-capable OpenAI-compatible server (streamed tool calls work)."
)

#: What a malformed chunk raises while reading: the SDK's JSON decoding, or our shape check.
_MALFORMED = (json.JSONDecodeError, MalformedChunk)


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

        async with OpenAILLM("gpt-4o-mini") as llm:
            async with aclosing(llm.stream(history, tools=toolbox.schemas)) as reply:
                async for chunk in reply:  # TextDelta | ToolCall
                    ...

    The HTTP client is created when the block is entered and closed when it is left; calling
    `stream()` outside the block raises `LLMConfigError`. The messages are sent as given (the
    agent owns its instructions: put the system message first).

    ``can_call_tools=False`` marks a model that cannot call tools (the embedded SmolLM2): tools
    given to `stream()` are then not sent, and a warning says so once (see `tool_warning`).
    ``text_tool_calls=True`` also accepts calls the model writes as JSON in its reply text
    (common among small local models; off by default, since such a reply is held back until
    it ends).
    """

    def __init__(
        self,
        model: str,
        *,
        temperature: float | None = 0.7,
        max_tokens: int | None = 200,
        base_url: str | None = None,
        api_key: str | None = None,
        first_token_timeout: float = 10.0,
        inter_token_timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_base: float = 0.25,
        backoff_cap: float = 2.0,
        can_call_tools: bool = True,
        text_tool_calls: bool = False,
    ) -> None:
        if first_token_timeout <= 0 or inter_token_timeout <= 0:
            raise LLMConfigError("first_token_timeout and inter_token_timeout must be > 0 seconds")
        if max_attempts < 1:
            raise LLMConfigError("max_attempts must be at least 1")
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.first_token_timeout = first_token_timeout
        self.inter_token_timeout = inter_token_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.can_call_tools = can_call_tools
        self.text_tool_calls = text_tool_calls

        endpoint = resolve_endpoint(base_url, api_key)
        self._display_url = endpoint.display_url
        if endpoint.key is None:
            raise LLMConfigError(
                f"No API key for {self._display_url}: set OPENAI_API_KEY (or pass api_key=). "
                "For a local OpenAI-compatible server, set OPENAI_BASE_URL to its "
                "http://127.0.0.1:PORT/v1 address; any placeholder key works there."
            )
        self._key = endpoint.key
        self._url = endpoint.url
        self._client: AsyncOpenAI | None = None
        self._warned_tools = False

    def __repr__(self) -> str:
        return f"OpenAILLM(model={self.model!r}, base_url={self._display_url!r})"

    @property
    def base_url(self) -> str:
        """The endpoint in use, without credentials or query string."""
        return self._display_url

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def __aenter__(self) -> OpenAILLM:
        """Create the HTTP client (no request is made, so there is nothing to cancel)."""
        if self._client is not None:
            raise LLMConfigError(f"{self!r} is already open: enter its `async with` once")
        backstop = max(self.first_token_timeout, self.inter_token_timeout) * 2 + 5.0
        self._client = AsyncOpenAI(
            api_key=self._key, base_url=self._url, max_retries=0, timeout=backstop
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client. Runs shielded, so cancelling does not skip it."""
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.close()

    def tool_warning(self, tools: Sequence[ToolSchema]) -> str | None:
        """The line to show at start when ``tools`` are given to a model that cannot call them
        (``can_call_tools=False`` and no ``text_tool_calls``), else None. Once it was returned
        here, `stream()` does not log it again."""
        if not tools or self.can_call_tools or self.text_tool_calls:
            return None
        self._warned_tools = True
        return NO_TOOLS_WARNING.format(
            url=self._display_url,
            model=self.model,
            count=len(tools),
            names=", ".join(t.name for t in tools),
        )

    def build_messages(self, messages: Sequence[ChatMessage]) -> list[ChatCompletionMessageParam]:
        """The history in the wire format (see `plugins.openai.chat_format.wire_messages`).

        Raises `agent.tools.InvalidHistory` if a tool call is not answered by exactly one tool
        message right after it: a bug in whoever built the history, caught before sending.
        """
        check_history(messages)
        return wire_messages(messages, native_tools=self.can_call_tools)

    def _offered(self, tools: Sequence[ToolSchema]) -> Sequence[ToolSchema]:
        """The tools to send: none to a model that cannot call them (warned once)."""
        if not tools or self.can_call_tools:
            return tools
        if not self._warned_tools:
            warning = self.tool_warning(tools)
            if warning:
                log.warning("%s", warning)
        return tools if self.text_tool_calls else ()

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        """Yield the reply as it arrives: `TextDelta`s (never empty) and whole `ToolCall`s.

        Tool calls are yielded together, in index order, when the finish chunk arrives (their
        fragments may interleave); text before them is yielded as it arrives.

        Raises `LLMError` subclasses: `LLMAuthError` at once on 401/403; `LLMTimeoutError`,
        `LLMServerError` or `LLMConnectionError` after `max_attempts` failed attempts before the
        first token (text or a tool-call fragment); `LLMTimeoutError(phase="inter_token")` or
        `LLMStreamError` after it (never retried, since the model already started its reply).
        `LLMConfigError` if the OpenAILLM is not open (`async with`).

        Consume it under `contextlib.aclosing(llm.stream(...))`: cancelling the consumer, or
        leaving the `aclosing` block early, then closes the HTTP stream at once so the server
        stops generating (the close runs shielded). Without `aclosing` the stream is still
        closed, but only when the generator is garbage-collected.
        """
        client = self._client
        if client is None:
            raise LLMConfigError(
                f"{self!r} is not open: use `async with OpenAILLM(...) as llm:` around the "
                "conversation, then call llm.stream() inside it"
            )
        offered = self._offered(tools)
        # The history and tools are already plain JSON, so they travel in `extra_body`, which
        # the SDK sends as is and which takes precedence over its typed parameters (documented
        # in `_merge_mappings`). Through the typed `messages=` the SDK walks every message
        # against its TypedDicts first: measured 2.2 ms for 5 messages and a tool, 17 ms for
        # 50 messages, on every request of every turn.
        body: dict[str, Any] = {"messages": self.build_messages(messages)}
        if offered and self.can_call_tools:
            body["tools"] = wire_tools(offered)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [],
            "stream": True,
            "temperature": openai.omit if self.temperature is None else self.temperature,
            "max_tokens": openai.omit if self.max_tokens is None else self.max_tokens,
            "extra_body": body,
        }
        names = [t.name for t in offered]

        def decoder() -> ReplyDecoder:
            return ReplyDecoder(text_tool_calls=self.text_tool_calls, tool_names=names)

        chunks, reply, ready = await self._open_with_retries(client, request, decoder)
        delivered = 0
        try:
            for item in ready:
                yield item
                delivered += isinstance(item, TextDelta)
            while chunks is not None:
                finished = reply.finished
                wait = _TAIL_SECONDS if finished else self.inter_token_timeout
                try:
                    with anyio.fail_after(wait):
                        chunk = await chunks.__anext__()
                    items = reply.feed(chunk)
                except StopAsyncIteration:
                    break
                except (TimeoutError, openai.OpenAIError, *_MALFORMED) as exc:
                    if finished:  # the reply is whole; only its tail ([DONE]) went wrong
                        log.debug("LLM stream tail after finish: %s", type(exc).__name__)
                        break
                    raise self._broken(exc, delivered) from None
                for item in items:
                    yield item
                    delivered += isinstance(item, TextDelta)
            try:
                tail = reply.finish()
            except MalformedChunk as exc:
                raise self._malformed(exc, delivered) from None
            for item in tail:
                yield item
        finally:
            if chunks is not None:
                await _close_stream(chunks)

    def _broken(self, exc: BaseException, delivered: int) -> LLMError:
        """The error for a stream that failed after its first token (never retried)."""
        if isinstance(exc, TimeoutError):
            return LLMTimeoutError(
                f"LLM stream from {self._display_url} stalled: no token for "
                f"{self.inter_token_timeout:g} s after {delivered} deltas. The server may "
                "be overloaded; raise inter_token_timeout if it is just slow.",
                phase="inter_token",
                seconds=self.inter_token_timeout,
            )
        if isinstance(exc, ValueError):
            return self._malformed(exc, delivered)
        return LLMStreamError(
            f"LLM stream from {self._display_url} broke after {delivered} deltas: "
            f"{self._describe(exc)}",
            deltas_delivered=delivered,
        )

    async def _open_with_retries(
        self, client: AsyncOpenAI, request: dict[str, Any], decoder: Any
    ) -> tuple[AsyncStream[ChatCompletionChunk] | None, ReplyDecoder, list[LLMChunk]]:
        """Open the stream and read up to the first content, retrying transient failures."""
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
                return await self._open_once(client, request, decoder())
            except _Retryable as exc:
                last = exc
        assert last is not None
        raise self._exhausted(last)

    async def _open_once(
        self, client: AsyncOpenAI, request: dict[str, Any], reply: ReplyDecoder
    ) -> tuple[AsyncStream[ChatCompletionChunk] | None, ReplyDecoder, list[LLMChunk]]:
        """One attempt: send the request, then read until the first content.

        Returns the open stream (None if it already ended), the decoder and what it released.
        """
        chunks: AsyncStream[ChatCompletionChunk] | None = None
        try:
            with anyio.fail_after(self.first_token_timeout):
                chunks = await client.chat.completions.create(**request)
                ready: list[LLMChunk] = []
                while not (reply.started or reply.finished):
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        await _close_stream(chunks)
                        return None, reply, reply.finish()
                    ready += reply.feed(chunk)
                return chunks, reply, ready
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
