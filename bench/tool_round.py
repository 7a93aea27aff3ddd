"""The framework's own cost of one tool round (a benchmark, not a test).

A reply that calls a tool, through the real path: ScriptedChatServer (the fake OpenAI-compatible
server, on loopback HTTP, in this process) streams two parallel calls whose fragments
interleave, ending with `finish_reason: "tool_calls"`; OpenAILLM reassembles them;
`agent.tools.reply_with_tools` (the loop a turn runner does: stream -> calls -> ToolBox round
-> history -> follow-up stream) runs a tool that returns at once and sends the follow-up.

Measured per round, from the moment OpenAILLM yields the calls (the finish chunk was seen):
- (in process, no HTTP) the ToolBox round, the history and the request body alone;
- to the follow-up `stream()` call: draining the finished response, the ToolBox round, the
  history (the turn runner's part);
- to the follow-up request arriving at the server: the above plus building the request, the
  openai SDK, a new loopback connection (the fake server closes each one) and the fake's
  request parsing. Target: median <= 2 ms.
The fake server shares the event loop, so its few sends after the finish chunk are billed to
the client: the figures are an upper bound.

    python -m bench.tool_round --rounds 300
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import anyio

from agent.interfaces import ChatMessage, LLMChunk, TextDelta, ToolCall, ToolSchema
from agent.tools import Tool, ToolBox, append_tool_round, check_history, reply_with_tools, tool
from bench._report import print_table, summary, verdict, write_json
from plugins.openai.chat_format import wire_messages
from plugins.openai.llm import OpenAILLM
from tests.fakes.scripted_llm import RecordedRequest, Reply, ScriptedChatServer, tokens
from tests.fakes.scripted_llm import tool_call_reply as scripted_calls

TARGET_MS = 2.0


@tool
async def lookup(city: str) -> dict[str, str]:
    """Look a city up (returns at once)."""
    return {"city": city, "sky": "clear"}


@tool(name="lookup")
def lookup_sync(city: str) -> dict[str, str]:
    """Look a city up (returns at once, from a worker thread)."""
    return {"city": city, "sky": "clear"}


class StampedLLM:
    """Forwards to OpenAILLM, noting when the calls came out and when the next stream began."""

    def __init__(self, inner: OpenAILLM) -> None:
        self.inner = inner
        self.calls_at: list[float] = []
        self.stream_at: list[float] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncGenerator[LLMChunk, None]:
        """The inner stream; closing this closes it."""
        self.stream_at.append(time.monotonic())
        stamped = False
        async with aclosing(self.inner.stream(messages, tools=tools)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, ToolCall) and not stamped:
                    self.calls_at.append(time.monotonic())
                    stamped = True
                yield chunk


def script(request: RecordedRequest) -> Reply:
    if request.messages and request.messages[-1]["role"] == "tool":
        return tokens("Both are clear.")
    return scripted_calls(
        ("call_a", "lookup", '{"city": "Oslo"}'),
        ("call_b", "lookup", '{"city": "Rome"}'),
        text=["Checking."],
        interleave=True,
    )


async def measure(the_tool: Tool[..., Any], rounds: int, warmup: int) -> dict[str, list[float]]:
    loop_ms: list[float] = []
    request_ms: list[float] = []
    async with (
        ScriptedChatServer(script) as server,
        OpenAILLM("scripted", base_url=server.base_url) as openai_llm,
        ToolBox([the_tool]) as box,
    ):
        llm = StampedLLM(openai_llm)
        for n in range(warmup + rounds):
            history = [ChatMessage("system", "Be brief."), ChatMessage("user", "Oslo, Rome?")]
            llm.calls_at.clear()
            llm.stream_at.clear()
            before = len(server.chat_requests)
            async with aclosing(reply_with_tools(llm, history, box)) as reply:
                text = "".join([d.text async for d in reply if isinstance(d, TextDelta)])
            assert text == "Checking.Both are clear.", text
            check_history(history)
            follow_up = server.chat_requests[before + 1]
            if n >= warmup:
                loop_ms.append((llm.stream_at[1] - llm.calls_at[0]) * 1000)
                request_ms.append((follow_up.received_at - llm.calls_at[0]) * 1000)
    return {"loop": loop_ms, "request": request_ms}


async def measure_in_process(the_tool: Tool[..., Any], rounds: int) -> list[float]:
    """The framework's part alone: ToolBox round, history, check and wire body (no HTTP)."""
    calls = [
        ToolCall("call_a", "lookup", '{"city": "Oslo"}'),
        ToolCall("call_b", "lookup", '{"city": "Rome"}'),
    ]
    spent: list[float] = []
    async with ToolBox([the_tool]) as box:
        for _ in range(rounds):
            started = time.monotonic()
            history = [ChatMessage("system", "Be brief."), ChatMessage("user", "Oslo, Rome?")]
            tool_round = box.round(calls)
            append_tool_round(history, tool_round, "Checking.")
            await tool_round.run()
            wire_messages(history)
            check_history(history)
            spent.append((time.monotonic() - started) * 1000)
    return spent


async def measure_voice_turn(turns: int) -> dict[str, list[float]]:
    """Time to first audio in a voice turn with a tool round, through the real Session, TTS
    client and the TTS server with a silent fake engine in its own process: the pre-tool text's
    first audio (from the LLM request) and the answer's first audio after the tool results."""
    from agent.conversation import TurnRecord
    from agent.file_output import MemoryOutput
    from agent.session import Session
    from bench.fakes import silent_server_process
    from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig

    first_audio: list[float] = []
    after_tools: list[float] = []
    frames: list[tuple[float, str]] = []

    def listen(direction: str, when: float, frame: str) -> None:
        if direction == "in" and '"audio"' in frame[:200]:
            frames.append((when, frame))

    config = TTSConfig(output_format="pcm_16000", voice_id="silent")
    async with (
        ScriptedChatServer(script) as server,
        silent_server_process() as url,
        OpenAILLM("scripted", base_url=server.base_url) as llm,
        ElevenLabsTTS(config, base_url=url, frame_listener=listen) as tts,
        ToolBox([lookup]) as box,
    ):
        session = Session(llm, tts, MemoryOutput(), instructions="Be brief.", toolbox=box)
        for n in range(turns):
            frames.clear()
            session.history = session.history[:1]
            record = await session.respond("Oslo, Rome?", TurnRecord(n + 1))
            request, audio = record.at("llm_request"), record.at("first_audio_byte")
            results = record.at("tool_results")
            assert request is not None and audio is not None and results is not None
            first_audio.append((audio - request) * 1000)
            later = [when for when, _ in frames if when > results]
            if later:
                after_tools.append((later[0] - results) * 1000)
    return {"first_audio": first_audio, "answer_audio_after_results": after_tools}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--turns", type=int, default=20, help="voice turns with a tool round")
    args = parser.parse_args()

    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]] = []
    for label, the_tool in (("async tool", lookup), ("sync tool (thread)", lookup_sync)):
        measured = anyio.run(measure, the_tool, args.rounds, args.warmup)
        loop, request = summary(measured["loop"]), summary(measured["request"])
        alone = summary(anyio.run(measure_in_process, the_tool, args.rounds))
        results[label] = {
            "finish_to_followup_stream_ms": loop,
            "finish_to_followup_request_ms": request,
            "toolbox_history_wire_ms": alone,
        }
        rows += [
            (
                f"{label}: ToolBox round + history + wire body median",
                f"{alone['median']:.3f} ms",
                "",
                "",
            ),
            (f"{label}: finish -> follow-up stream() median", f"{loop['median']:.3f} ms", "", ""),
            (f"{label}: finish -> follow-up stream() p95", f"{loop['p95']:.3f} ms", "", ""),
            (
                f"{label}: finish -> request at server median",
                f"{request['median']:.3f} ms",
                f"<= {TARGET_MS:g} ms",
                verdict(request["median"], TARGET_MS),
            ),
            (f"{label}: finish -> request at server p95", f"{request['p95']:.3f} ms", "", ""),
        ]
    voice = anyio.run(measure_voice_turn, args.turns)
    first, after = summary(voice["first_audio"]), summary(voice["answer_audio_after_results"])
    results["voice_turn"] = {"first_audio_ms": first, "answer_audio_after_results_ms": after}
    rows += [
        (
            "voice turn: LLM request -> first audio (pre-tool text) median",
            f"{first['median']:.1f} ms",
            "",
            "",
        ),
        (
            "voice turn: tool results -> the answer's first audio median",
            f"{after['median']:.1f} ms",
            "",
            "",
        ),
    ]
    print_table(
        f"Tool round overhead ({args.rounds} rounds, 2 parallel calls each, tool returns at once)",
        rows,
    )
    write_json("tool_round", {"rounds": args.rounds, "target_median_ms": TARGET_MS, **results})


if __name__ == "__main__":
    main()
