"""OpenAILLM against a real HTTP server on loopback that plays scripted streams and faults."""

from __future__ import annotations

import socket
from contextlib import aclosing

import anyio
import pytest

from agent.errors import (
    LLMAuthError,
    LLMConfigError,
    LLMConnectionError,
    LLMRequestError,
    LLMServerError,
    LLMStreamError,
    LLMTimeoutError,
)
from agent.interfaces import LLM, ChatMessage, TextDelta
from plugins.openai.llm import OpenAILLM
from tests.fakes.scripted_llm import (
    Drop,
    ErrorEvent,
    HttpError,
    NoChoices,
    Reply,
    ScriptedChatServer,
    Stall,
    StreamReply,
    Token,
    tokens,
)

pytestmark = pytest.mark.anyio

SECRET = "sk-test-SECRET-0123456789"
HISTORY = [ChatMessage("user", "Say hello.")]


def make_llm(server: ScriptedChatServer, **overrides: object) -> OpenAILLM:
    options: dict[str, object] = {
        "api_key": SECRET,
        "first_token_timeout": 5.0,
        "inter_token_timeout": 5.0,
        "max_attempts": 3,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
    }
    options.update(overrides)
    return OpenAILLM("scripted", base_url=server.base_url, **options)  # type: ignore[arg-type]


async def collect(llm: OpenAILLM, history: list[ChatMessage] = HISTORY) -> list[str]:
    deltas: list[str] = []
    async with aclosing(llm.stream(history)) as stream:
        async for delta in stream:
            assert isinstance(delta, TextDelta)
            deltas.append(delta.text)
    return deltas


async def test_streams_deltas_in_order_skipping_empty_ones() -> None:
    reply = StreamReply((
        Token("Hel", 0.01), Token(None), Token(""), NoChoices(), Token("lo", 0.01),
        Token(" there"), Token(None), Token("!"),
    ))
    history = [ChatMessage("system", "Be brief."), *HISTORY]
    async with ScriptedChatServer([reply]) as server, make_llm(
        server, temperature=0.2, max_tokens=40
    ) as llm:
        as_interface: LLM = llm  # mypy checks that OpenAILLM satisfies agent.interfaces.LLM
        deltas = await collect(llm, history)

    assert as_interface is llm
    assert deltas == ["Hel", "lo", " there", "!"]
    [request] = server.chat_requests
    assert request.body["stream"] is True
    assert request.body["model"] == "scripted"
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 40
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert "tools" not in request.body, "no tools offered, none sent"


async def test_sends_the_messages_it_is_given_and_injects_no_instructions() -> None:
    async with ScriptedChatServer([tokens("Ok")]) as server, make_llm(server) as llm:
        assert await collect(llm) == ["Ok"]
    assert server.chat_requests[0].messages == [{"role": "user", "content": "Say hello."}]


async def test_stream_outside_async_with_says_how_to_fix_it() -> None:
    async with ScriptedChatServer([tokens("Ok")]) as server:
        llm = make_llm(server)
        with pytest.raises(LLMConfigError, match=r"async with OpenAILLM\(\.\.\.\) as llm"):
            await collect(llm)
        async with llm:
            assert llm.is_open
            assert await collect(llm) == ["Ok"]
        assert not llm.is_open
        with pytest.raises(LLMConfigError, match="not open"):
            await collect(llm)
        async with llm:  # an OpenAILLM may be opened again after it was closed
            assert await collect(llm) == ["Ok"]
    assert len(server.chat_requests) == 2


async def test_history_keeps_interrupted_text_and_drops_empty_assistant_turns() -> None:
    history = [
        ChatMessage("user", "Tell me a story."),
        ChatMessage("assistant", "Once upon a", interrupted=True),
        ChatMessage("user", "Stop."),
        ChatMessage("assistant", "", interrupted=True),
        ChatMessage("user", "Hi."),
    ]
    async with ScriptedChatServer([tokens("Ok")]) as server, make_llm(server) as llm:
        assert await collect(llm, history) == ["Ok"]
    assert [m["content"] for m in server.chat_requests[0].messages] == [
        "Tell me a story.", "Once upon a", "Stop.", "Hi.",
    ]


async def test_empty_reply_yields_nothing() -> None:
    async with ScriptedChatServer([tokens(None, "")]) as server, make_llm(server) as llm:
        assert await collect(llm) == []


async def test_500_before_first_token_is_retried() -> None:
    script: list[Reply] = [HttpError(500, "overloaded"), tokens("Hi", " again")]
    async with ScriptedChatServer(script) as server, make_llm(server) as llm:
        deltas = await collect(llm)
    assert deltas == ["Hi", " again"]
    assert len(server.chat_requests) == 2


async def test_persistent_500_gives_up_after_bounded_attempts() -> None:
    async with ScriptedChatServer([HttpError(503, "down")]) as server, make_llm(
        server, max_attempts=3
    ) as llm:
        with pytest.raises(LLMServerError) as caught:
            await collect(llm)
    assert len(server.chat_requests) == 3
    assert caught.value.status_code == 503
    assert caught.value.attempts == 3
    assert "down" in str(caught.value)


async def test_error_event_before_first_token_is_retried() -> None:
    script = [StreamReply((ErrorEvent("warming up"),)), tokens("Ready")]
    async with ScriptedChatServer(script) as server, make_llm(server) as llm:
        assert await collect(llm) == ["Ready"]
    assert len(server.chat_requests) == 2


async def test_500_mid_stream_surfaces_without_retry() -> None:
    reply = StreamReply((Token("Half"), Token(" a"), ErrorEvent("model crashed", 500)))
    received: list[str] = []
    async with ScriptedChatServer([reply, tokens("never")]) as server, make_llm(server) as llm:
        with pytest.raises(LLMStreamError) as caught:
            async with aclosing(llm.stream(HISTORY)) as stream:
                async for delta in stream:
                    assert isinstance(delta, TextDelta)
                    received.append(delta.text)
    assert received == ["Half", " a"]
    assert caught.value.deltas_delivered == 2
    assert "model crashed" in str(caught.value)
    assert len(server.chat_requests) == 1


async def test_dropped_connection_mid_stream_surfaces_without_retry() -> None:
    reply = StreamReply((Token("Half"), Drop(0.01)))
    received: list[str] = []
    async with ScriptedChatServer([reply, tokens("never")]) as server, make_llm(server) as llm:
        with pytest.raises(LLMStreamError):
            async with aclosing(llm.stream(HISTORY)) as stream:
                async for delta in stream:
                    assert isinstance(delta, TextDelta)
                    received.append(delta.text)
    assert received == ["Half"]
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_error_fails_fast_and_never_shows_the_key(status: int) -> None:
    leak = HttpError(status, f"Incorrect API key provided: {SECRET}")
    async with ScriptedChatServer([leak]) as server, make_llm(server) as llm:
        with pytest.raises(LLMAuthError) as caught:
            await collect(llm)
    assert len(server.chat_requests) == 1
    message = str(caught.value)
    assert "OPENAI_API_KEY" in message
    assert SECRET not in message
    assert "SECRET" not in message
    assert caught.value.status_code == status
    assert SECRET not in repr(llm)


async def test_other_4xx_fails_fast_with_request_error() -> None:
    async with ScriptedChatServer([HttpError(404, "model not found")]) as server, make_llm(
        server
    ) as llm:
        with pytest.raises(LLMRequestError) as caught:
            await collect(llm)
    assert len(server.chat_requests) == 1
    assert "model" in str(caught.value)


async def test_stall_before_first_token_times_out_and_retries() -> None:
    stall = StreamReply((Stall(60.0),))
    async with ScriptedChatServer([stall]) as server, make_llm(
        server, first_token_timeout=0.3, max_attempts=2
    ) as llm:
        with pytest.raises(LLMTimeoutError) as caught:
            await collect(llm)
        assert caught.value.phase == "first_token"
        assert len(server.chat_requests) == 2
        for request in server.chat_requests:
            with anyio.fail_after(5):
                await request.done.wait()
            assert request.closed_by_client


async def test_stall_after_first_token_times_out_without_retry() -> None:
    reply = StreamReply((Token("Well,"), Stall(60.0), Token(" never")))
    received: list[str] = []
    async with ScriptedChatServer([reply]) as server, make_llm(
        server, inter_token_timeout=0.3
    ) as llm:
        with pytest.raises(LLMTimeoutError) as caught:
            async with aclosing(llm.stream(HISTORY)) as stream:
                async for delta in stream:
                    assert isinstance(delta, TextDelta)
                    received.append(delta.text)
        assert caught.value.phase == "inter_token"
        assert received == ["Well,"]
        assert len(server.chat_requests) == 1
        with anyio.fail_after(5):
            await server.chat_requests[0].done.wait()
        assert server.chat_requests[0].closed_by_client


@pytest.mark.parametrize("cancel_while", ["waiting_for_a_token", "busy_elsewhere"])
async def test_cancelling_the_consumer_closes_the_http_stream(cancel_while: str) -> None:
    reply = StreamReply((Token("One"), Token(" two"), Stall(60.0), Token(" three")))
    received: list[str] = []
    async with ScriptedChatServer([reply]) as server, make_llm(server) as llm:
        with anyio.CancelScope() as scope:
            async with aclosing(llm.stream(HISTORY)) as stream:
                async for delta in stream:
                    assert isinstance(delta, TextDelta)
                    received.append(delta.text)
                    if len(received) == 2:
                        scope.cancel()
                        if cancel_while == "busy_elsewhere":
                            await anyio.sleep_forever()  # e.g. blocked sending to the TTS
        assert scope.cancelled_caught
        assert received == ["One", " two"]
        request = server.chat_requests[0]
        with anyio.fail_after(5):
            await request.done.wait()
        assert request.closed_by_client


async def test_unreachable_server_raises_connection_error_after_retries() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = OpenAILLM(
        "scripted", base_url=f"http://127.0.0.1:{port}/v1", max_attempts=2,
        backoff_base=0.01, first_token_timeout=5.0,
    )
    async with llm:
        with pytest.raises(LLMConnectionError) as caught:
            await collect(llm)
    assert caught.value.attempts == 2
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_loopback_server_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with ScriptedChatServer([tokens("ok")]) as server:
        async with OpenAILLM("scripted", base_url=server.base_url) as llm:
            assert await collect(llm) == ["ok"]
    assert server.chat_requests[0].headers["authorization"] == "Bearer local"


def test_remote_server_without_key_is_a_clear_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        OpenAILLM("gpt-4o-mini")


def test_repr_and_base_url_hide_credentials() -> None:
    llm = OpenAILLM(
        "m", base_url="https://user:pw@example.invalid/v1?token=abc", api_key=SECRET
    )
    assert llm.base_url == "https://example.invalid/v1"
    text = repr(llm)
    assert SECRET not in text and "pw" not in text and "token" not in text
