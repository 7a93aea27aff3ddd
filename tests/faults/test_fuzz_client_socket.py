"""Fault 6, fuzzed: random server frames thrown at our real client over a real socket.

tests/test_protocol.py fuzzes the sans-I/O protocol objects; this drives the whole client (socket
reader, routing, decoding, contexts) through `ScriptedTTSServer` (a fake, so named). Bounded: 200
examples, each a fresh server and client on loopback.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig, TTSError
from tests.fakes.faulty_tts import (
    Expect,
    Respond,
    Script,
    ScriptedTTSServer,
    SendAudio,
    SendFinal,
    SendRaw,
    Step,
    tone_pcm,
)

END_OF_NOISE = '{"type": "end-of-noise"}'
GOOD_ALIGNMENT = {"chars": ["a", "b"], "charStartTimesMs": [0, 5], "charDurationsMs": [5, 5]}
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_audio = (
    st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode("ascii"))
    | st.sampled_from(["", "!!", "AAA", "====", "QUJD\n"])
    | _json
)
_context = st.sampled_from(["ctx-1", "ctx-1", "ctx-1", "ctx-9", "", None, 5])
_final: st.SearchStrategy[object] = st.sampled_from([None, None, True, False, "yes", 1, []])
_alignment = st.sampled_from(
    [
        None,
        GOOD_ALIGNMENT,
        {"chars": ["a"], "charStartTimesMs": [0, 1], "charDurationsMs": [1]},
        {"chars": [1], "charStartTimesMs": [0], "charDurationsMs": [1]},
        {"chars": ["a"], "charStartTimesMs": ["x"], "charsDurationsMs": [1]},
        "nope",
    ]
)
_extra = st.dictionaries(
    st.sampled_from(["error", "message", "code", "type", "normalizedAlignment", "context_id"]),
    _json,
    max_size=2,
)


@st.composite
def _object_frame(draw: st.DrawFn) -> str:
    obj: dict[str, Any] = {}
    if draw(st.booleans()):
        obj["audio"] = draw(_audio)
    if draw(st.booleans()):
        obj["isFinal"] = draw(_final)
    context = draw(_context)
    if context is not None:
        obj["contextId"] = context
    if draw(st.booleans()):
        obj["alignment"] = draw(_alignment)
    obj.update(draw(_extra))
    return json.dumps(obj)


_frames = st.lists(
    _object_frame() | st.text(max_size=30) | st.binary(max_size=20) | _json.map(json.dumps),
    max_size=12,
)


def _may_end_the_context(frame: str | bytes) -> bool:
    """Whether a noise frame could legitimately end the context early (an error or a final)."""
    try:
        obj = json.loads(frame)
    except ValueError:
        return False
    return isinstance(obj, dict) and ("error" in obj or obj.get("isFinal") is True)


async def _one_example(frames: list[str | bytes]) -> None:
    good = tone_pcm(8, 16000, seed=3)
    noise: list[Step] = [SendRaw(f) for f in frames]
    end = SendRaw(END_OF_NOISE)
    steps: tuple[Step, ...] = (
        Expect("flush"),
        *noise,
        SendAudio(good),
        SendFinal(),
        end,
        Respond(),
    )
    noise_read = anyio.Event()

    def listen(direction: str, _when: float, frame: str) -> None:
        if direction == "in" and frame == END_OF_NOISE:
            noise_read.set()

    async with ScriptedTTSServer([Script(steps)]) as fake:
        with anyio.fail_after(15):  # no hang, ever
            async with ElevenLabsTTS(TTSConfig(), base_url=fake.url, frame_listener=listen) as tts:
                ctx = await tts.open_context()
                await ctx.send("Hello. ")
                await ctx.flush()
                await ctx.close()
                pcm = b""
                try:
                    async for chunk in ctx.chunks():
                        assert len(chunk.pcm) % 2 == 0, "whole samples only"
                        pcm += chunk.pcm
                except TTSError:
                    pass  # e.g. a random error frame: typed, and the socket lives on
                if not any(_may_end_the_context(f) for f in frames):
                    assert pcm.endswith(good), "noise before the good audio must not shift it"
                # the client (and its socket) survived: once every noise frame has been read,
                # the next context speaks exactly
                await noise_read.wait()
                ctx2 = await tts.open_context()
                await ctx2.send("Again. ")
                await ctx2.flush()
                await ctx2.close()
                pcm = b"".join([chunk.pcm async for chunk in ctx2.chunks()])
                assert pcm == tone_pcm(len("Again."), 16000)
                assert tts.reconnects == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=_frames)
def test_fuzz_random_server_frames_never_break_the_client(frames: list[str | bytes]) -> None:
    """Fault: up to 12 random frames (malformed JSON, binary, wrong types, bad base64, odd PCM,
    stray finals and errors, unknown keys, other contexts) before a context's good audio.

    Pass: reading the context never hangs and raises nothing but a typed TTSError; every chunk
    holds whole samples; unless the noise held an error or a final, the context's audio ends with
    the good frame's exact bytes (nothing shifted it); the same socket then serves a second
    context with exactly the right audio.
    """
    anyio.run(_one_example, frames)
