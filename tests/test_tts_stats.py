"""Server timings joined to client contexts by context_id, with clock-independent durations."""

from __future__ import annotations

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
