"""Server timings joined to client contexts by context_id, with clock-independent durations."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from tests.fakes.engines import FakeToneEngine

pytestmark = pytest.mark.anyio


async def test_each_context_finds_its_server_timings_by_id() -> None:
    config = TTSConfig(voice_id="tone", output_format="pcm_16000")
    async with LocalTTSServer(FakeToneEngine()) as server:
        async with ElevenLabsTTS(config, base_url=server.url) as tts:
            ids = []
            for text in ("First turn. ", "Second turn, a little longer. "):
                ctx = await tts.open_context()
                await ctx.send(text)
                await ctx.flush()
                await ctx.close()
                assert [c async for c in ctx.chunks()]
                ids.append(ctx.context_id)
        assert ids == ["ctx-1", "ctx-2"]
        for context_id in reversed(ids):  # by id, not by order
            timing = server.stats.context(context_id)
            assert timing.context_id == context_id and timing.connection_id == 1
            assert timing.text_to_synthesis_s is not None and 0 <= timing.text_to_synthesis_s < 1
            assert timing.engine_first_chunk_s is not None and timing.engine_first_chunk_s >= 0
            assert timing.first_frame_s is not None
            assert timing.first_frame_s >= timing.engine_first_chunk_s
        with pytest.raises(KeyError):
            server.stats.context("ctx-9")
        assert server.stats.context("ctx-1", connection_id=1).context_id == "ctx-1"
        assert ctx.connection_id == 1, "the server named the socket in its handshake"


async def test_same_context_id_on_two_sockets_joins_each_turn_to_its_own_timings(
    tmp_path: Path,
) -> None:
    """Each phone call has its own TTS socket, so every call's first context is "ctx-1": the
    join must go by (context id, connection), which the server names in its handshake."""
    from agent.app.demo import add_tts_timings
    from agent.conversation import ConversationLog
    from agent.file_output import WavFileOutput
    from agent.session import Session
    from plugins.openai.llm import OpenAILLM
    from tests.fakes.scripted_llm import ScriptedChatServer, tokens

    # the first turn's text trickles in for 0.4 s before its flush; the second's comes at once
    slow = tokens("Slow ", "words ", "come ", "in.", delay=0.1)
    replies = [slow, tokens("Fast.")]
    config = TTSConfig(voice_id="tone", output_format="pcm_16000")
    records = []
    async with (
        ScriptedChatServer(replies) as fake_llm,
        LocalTTSServer(FakeToneEngine()) as server,
        OpenAILLM("scripted", base_url=fake_llm.base_url) as llm,
    ):
        for i in range(2):  # one after the other, each on a socket of its own
            async with ElevenLabsTTS(config, base_url=server.url) as tts:
                session = Session(llm, tts, WavFileOutput(16000, tmp_path / str(i)))
                with anyio.fail_after(20):
                    records.append(await session.respond("hi"))
    slow_turn, fast_turn = records
    assert slow_turn.tts_context == fast_turn.tts_context == "ctx-1"
    assert slow_turn.tts_connection == 1 and fast_turn.tts_connection == 2
    for record in records:
        add_tts_timings(ConversationLog(16000, turns=[record]), server)
    # the slow turn found its own timings, not the most recent "ctx-1" (the fast turn's)
    assert slow_turn.durations_ms["llm_until_tts"] >= 250
    assert fast_turn.durations_ms["llm_until_tts"] < 200
