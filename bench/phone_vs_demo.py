"""A phone call's time to first audio next to the demo's voice-to-voice, on the same engines.

Used by ``python -m bench.phone_calls --mode real --demo-turns K``. The two paths share one STT
(whisper tiny.en), one LLM endpoint (the llama.cpp server) and one local TTS server (piper), in
this process, and take turns: K times, one question asked

- on the phone: our caller (its own process, Twilio's side in real time) calls `voxloop phone`'s
  `PhoneBot` behind the real phone server; a fresh call: the greeting, the question, the answer;
- on the demo's line: the same question in the demo's user voice, into a fresh conversation on
  the virtual transport (16 kHz, real time), the agent built as `voxloop demo` builds it; it
  greets first, as the phone bot does, so the LLM sees the same history (and with the LLM's
  temperature at 0, the answers match as far as the two transcripts do);

in alternating order (demo first on even turns, phone first on odd ones), so a machine whose load
changes (a shared one) weighs on both alike. Each answered turn is split into stages as
`bench.voice_to_voice` splits the demo's; on the phone, voice-to-voice is the caller's speech end
-> the first media frame out (the bot's clock). The report: medians per stage for each path, and
the median of the per-question differences (phone minus demo) of voice-to-voice and of the
framework share (target: within 20 ms).
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import anyio

from bench._report import verdict

Row = tuple[str, str, str, str]
#: One answered turn: its stages (ms, as `bench.voice_to_voice.breakdown` gives them) and what
#: was said ("transcript -> answer"), to see whether the two paths heard and answered alike.
Turn = tuple[dict[str, float], str]

LABELS = {
    "voice_to_voice": "caller stops -> first audio out",
    "framework": "  framework share (the rest)",
}
TARGETED = ("voice_to_voice", "framework")
TARGET_MS = 20.0
PAUSE_S = 0.8  # the caller's pause after the greeting (bench.phone_callers --pause)


async def _after_the_greeting(transport: Any, conversation: Any, voice: bytes) -> None:
    """The caller's part, on the demo's line: wait for the greeting to end, pause as our phone
    caller does, ask, wait for the answer to end. Bounded; cancelling stops it."""
    from agent.app.demo import RATE, WAIT_LIMIT_S

    async def until(condition: Callable[[], bool]) -> None:
        with anyio.move_on_after(WAIT_LIMIT_S):
            while not condition():  # checked once per audio block of the transport's clock
                await transport.wait_until(transport.clock_seconds + 0.02)

    await until(lambda: len(conversation.log.turns) >= 1 and conversation.idle)
    await anyio.sleep(PAUSE_S)
    transport.inject(voice)
    await transport.wait_until(transport.clock_seconds + len(voice) / 2 / RATE)
    await until(lambda: len(conversation.log.turns) >= 2 and conversation.idle)
    await anyio.sleep(0.5)


def answered(log: Any) -> list[Turn]:
    """The answered turns of a conversation's log (greetings have no voice-to-voice)."""
    from bench.voice_to_voice import breakdown

    turns: list[Turn] = []
    for turn in log.turns:
        rows = breakdown(SimpleNamespace(turns=[turn]))
        if rows:
            turns.append((rows[0], f"{turn.transcript.strip()!r} -> {turn.agent_text[:70]!r}"))
    return turns


async def demo_turn(
    voice16k: bytes, *, stt: Any, llm: Any, tts_ep: Any, settings: Any, greeting: str
) -> list[Turn]:
    """One question on the demo's line (a fresh conversation on the virtual transport, in real
    time, on the given engines, greeting first as the phone bot does, so the LLM sees the same
    history); its answered turn split into stages (empty if not answered). Cancelling stops
    the conversation."""
    from agent.app.compose import make_tts
    from agent.app.demo import RATE, add_tts_timings
    from agent.vad import VadConfig
    from agent.voice_agent import Agent, AgentOptions
    from plugins.virtual.transport import VirtualTransport

    transport = VirtualTransport(RATE, block_ms=20, realtime=True, max_output_seconds=2.0)
    async with make_tts(settings, tts_ep, RATE) as tts:
        agent = Agent(
            stt=stt,
            llm=llm,
            tts=tts,
            instructions=settings.instructions,
            # the demo's options; no warm-up (the phone bot has none, and both paths are warm)
            options=AgentOptions(
                vad=VadConfig(min_silence_ms=500), sentence_mode=settings.sentence_mode
            ),
        )
        async with transport.running(), agent.conversation(transport) as conversation:
            conversation.say(greeting)
            async with anyio.create_task_group() as tg:

                async def script() -> None:
                    try:
                        await _after_the_greeting(transport, conversation, voice16k)
                    finally:
                        conversation.hang_up()

                tg.start_soon(script)
                async for _event in conversation:
                    pass
        log = conversation.log
    if tts_ep.server is not None:
        add_tts_timings(log, tts_ep.server)
    return answered(log)


Pair = tuple[Turn | None, Turn | None]  # (phone, demo) for one question


async def paired_turns(
    turns: int,
    demo: Callable[[int], Awaitable[list[Turn]]],
    phone: Callable[[int], Awaitable[list[Turn]]],
    say: Callable[[str], None],
    before_each: Callable[[], Awaitable[None]] | None = None,
) -> list[Pair]:
    """`turns` rounds of (phone turn, demo turn) for question i, alternating which goes first;
    `before_each` runs before every turn (`forget_prompt`: the two sides ask the LLM the same
    prompt, and llama.cpp reuses the previous request's evaluated prefix, so the second of a
    pair would start its answer ~70 ms sooner)."""
    pairs: list[Pair] = []
    for i in range(turns):
        got: dict[str, list[Turn]] = {}
        order = ("demo", "phone") if i % 2 == 0 else ("phone", "demo")
        for which in order:
            if before_each is not None:
                await before_each()
            got[which] = await (demo(i) if which == "demo" else phone(i))
        p = got["phone"][-1] if got["phone"] else None
        d = got["demo"][-1] if got["demo"] else None
        for name, turn in (("phone", p), ("demo", d)):
            v2v = f"{turn[0]['voice_to_voice']:.0f} ms" if turn else "not answered"
            say(f"turn {i + 1} {name}: voice-to-voice {v2v}; {turn[1] if turn else ''}")
        pairs.append((p, d))
    return pairs


def versus_demo(
    pairs: list[Pair], caller_first_audio_s: list[float]
) -> tuple[list[Row], dict[str, Any]]:
    """The table rows and the JSON: per stage, phone / demo medians and the median of the
    per-question differences."""
    both = [(p[0], d[0]) for p, d in pairs if p is not None and d is not None]
    rows: list[Row] = []
    data: dict[str, Any] = {"pairs": len(both), "unanswered": len(pairs) - len(both)}
    if not both:
        return [("paired turns answered on both paths", "0", "", "MISS")], data
    keys = [k for k in both[0][0] if all(k in p and k in d for p, d in both)]
    keys.sort(key=lambda k: (k != "voice_to_voice", k == "framework"))  # v2v, stages, the rest
    for key in keys:
        label = LABELS.get(key, "  " + key.replace("_", " "))
        phone = statistics.median(p[key] for p, _ in both)
        demo = statistics.median(d[key] for _, d in both)
        diff = statistics.median(p[key] - d[key] for p, d in both)
        data[key] = {"phone_ms": phone, "demo_ms": demo, "median_difference_ms": diff}
        target = key in TARGETED
        rows.append(
            (
                f"{label} (phone / demo)",
                f"{phone:.0f} / {demo:.0f} ms",
                f"{diff:+.1f} ms" + (f" (target |d| <= {TARGET_MS:.0f} ms)" if target else ""),
                verdict(abs(diff), TARGET_MS) if target else "",
            )
        )
        if target:  # a median of a few noisy differences: show how far apart they were
            diffs = [p[key] - d[key] for p, d in both]
            data[key]["differences_ms"] = diffs
            rows.append(
                (
                    "    per-question differences",
                    f"{min(diffs):+.0f} .. {max(diffs):+.0f} ms",
                    "",
                    "",
                )
            )
    data["per_turn"] = [
        {"phone": p[0], "demo": d[0], "phone_said": p[1], "demo_said": d[1]}
        for p, d in pairs
        if p is not None and d is not None
    ]
    if caller_first_audio_s:
        caller = statistics.median(caller_first_audio_s) * 1000
        data["caller_first_audio_ms"] = caller
        rows.append(("first audio at our caller (its WAV's end -> first frame in)",
                     f"{caller:.0f} ms", "", ""))  # fmt: skip
    return rows, data


async def forget_prompt(llm: Any) -> None:
    """One short request whose first token already differs from the conversations' prompts,
    so the next turn finds none of its prompt evaluated (the local server keeps one)."""
    from contextlib import aclosing

    from agent.interfaces import ChatMessage

    async with aclosing(llm.stream([ChatMessage("user", "Reply with one word: ok.")])) as reply:
        async for _chunk in reply:
            break
