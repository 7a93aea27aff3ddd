"""`voxloop demo`: an offline conversation with a barge-in, on the embedded defaults.

It starts the local servers (TTS, LLM) and the local STT, then plays a scripted user through
the virtual transport in real time: the user speaks after each answer, and once cuts the agent
off mid-answer. Everything the microphone and the speaker carried is recorded on one sample
clock, and `output/demo/` receives `conversation.wav` (user left, agent right), a transcript,
`metrics.json` and `timeline.png`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from agent.app.compose import (
    AgentSettings,
    Progress,
    llm_endpoint,
    load_stt,
    load_tools,
    load_turn_detector,
    make_llm,
    make_tts,
    remote_stt,
    stderr_progress,
    tools_notice,
    tts_endpoint,
)
from agent.conversation import ConversationLog
from agent.events import StateChanged
from agent.interfaces import ChatMessage
from agent.vad import VadConfig
from agent.voice_agent import Agent, AgentOptions, Conversation

if TYPE_CHECKING:
    from plugins.elevenlabs.server import LocalTTSServer
    from plugins.virtual.transport import VirtualTransport

RATE = 16000
WAIT_LIMIT_S = 90.0  # the longest the scripted user waits for the agent before giving up


@dataclass(frozen=True)
class UserLine:
    """One scripted user turn. ``when``: speak once the agent has finished answering
    ("after_answer"), or cut in after the agent has been audible for ``after_s`` ("interrupt")."""

    text: str
    when: Literal["after_answer", "interrupt"] = "after_answer"
    after_s: float = 0.8


DEMO_SCRIPT: tuple[UserLine, ...] = (
    UserLine("Hello! What color is the sky on a clear day?"),
    UserLine("Tell me a long story about a brave little dragon."),
    UserLine("Sorry to cut in. How many days are in a week?", when="interrupt", after_s=3.0),
    UserLine("Thank you, that is all for today."),
)

# SmolLM2-135M is a very small model: simple, concrete questions get sensible English answers
# (it drifts into French at any mention of France).
DEMO_PROMPT = (
    "You are a friendly voice assistant. Answer in one or two short sentences, except when "
    "asked for a story."
)


@dataclass
class DemoResult:
    log: ConversationLog
    files: dict[str, Path]
    history: list[ChatMessage]


class ScriptedUser:
    """Speaks `lines` into a virtual transport, reacting to what the agent does."""

    def __init__(
        self,
        transport: VirtualTransport,
        agent: Conversation,
        lines: Sequence[UserLine],
        voices: Sequence[bytes],
        progress: Progress | None = None,
    ) -> None:
        self.transport = transport
        self.agent = agent
        self.lines = lines
        self.voices = voices
        self.progress = progress

    async def _until(self, condition: Callable[[], bool], what: str) -> None:
        with anyio.move_on_after(WAIT_LIMIT_S) as scope:
            while not condition():  # checked once per audio block of the transport's clock
                await self.transport.wait_until(self.transport.clock_seconds + 0.02)
        if scope.cancelled_caught:
            raise TimeoutError(f"the demo's user waited {WAIT_LIMIT_S:.0f} s for {what}")

    def _audible_for(self, seconds: float) -> bool:
        return self.agent.speaking_for() >= seconds

    def _answered(self, turns: int) -> bool:
        return len(self.agent.log.turns) >= turns and self.agent.idle

    async def play(self) -> None:
        """Speak every line, then wait for the last answer. Cancelling stops the script."""
        for i, (line, pcm) in enumerate(zip(self.lines, self.voices, strict=True)):
            if line.when == "interrupt":
                await self._until(partial(self._audible_for, line.after_s), "the agent to speak")
            else:
                await self._until(partial(self._answered, i), "the agent to finish")
                await anyio.sleep(line.after_s)
            if self.progress:
                self.progress(f"user says: {line.text!r}")
            self.transport.inject(pcm)
            await self.transport.wait_until(self.transport.clock_seconds + len(pcm) / 2 / RATE)
        await self._until(
            partial(self._answered, len(self.lines)),
            "the last answer",
        )
        await anyio.sleep(0.5)


async def run_demo(
    out_dir: Path,
    *,
    lines: Sequence[UserLine] = DEMO_SCRIPT,
    settings: AgentSettings | None = None,
    stt_url: str | None = None,
    progress: Progress | None = None,
    echo_gain: float = 0.0,
) -> DemoResult:
    """Run the scripted conversation and write the reports. Cancelling stops it (servers and
    models are shut down by their context managers)."""
    from agent.app.report import turn_table, write_all
    from agent.app.user_voice import synthesize_user_lines
    from plugins.local.piper_tts import PiperEngine
    from plugins.virtual.transport import VirtualTransport

    settings = settings or AgentSettings(instructions=DEMO_PROMPT, max_tokens=90)
    say = progress or (lambda _m: None)
    tools = load_tools(settings.tools_file)
    say("preparing the scripted user's voice")
    engine = await anyio.to_thread.run_sync(lambda: PiperEngine.load(progress=progress))
    voices = await anyio.to_thread.run_sync(
        lambda: synthesize_user_lines([line.text for line in lines], engine, sample_rate=RATE)
    )
    stt = await load_stt(stt_url, progress=progress)
    detector = await load_turn_detector(settings.end_of_turn, progress=progress)
    transport = VirtualTransport(
        RATE, block_ms=20, realtime=True, echo_gain=echo_gain, max_output_seconds=2.0
    )
    async with (
        llm_endpoint(settings.llm_url, progress=progress) as llm_ep,
        tts_endpoint(settings.tts_url, progress=progress) as tts_ep,
    ):
        say(f"LLM: {llm_ep.describe()}")
        say(f"TTS: {tts_ep.describe()}")
        async with make_llm(settings, llm_ep) as llm, make_tts(settings, tts_ep, RATE) as tts:
            tools_notice(llm, tools, say)
            agent = Agent(
                stt=stt,
                llm=llm,
                tts=tts,
                instructions=settings.instructions,
                tools=tools,
                options=AgentOptions(
                    vad=VadConfig(min_silence_ms=500),
                    sentence_mode=settings.sentence_mode,
                    warm_up=llm_ep.local and tts_ep.local,
                    first_clause=not tts_ep.local,  # the local server starts on it itself
                    transcribe_early=not remote_stt(stt_url),
                ),
                turn_detector=detector,
            )
            say("conversation starts (real time)")
            async with transport.running(), agent.conversation(transport) as conversation:
                user = ScriptedUser(transport, conversation, lines, voices, progress)
                async with anyio.create_task_group() as tg:

                    async def script() -> None:
                        try:
                            await user.play()
                        finally:
                            conversation.hang_up()

                    tg.start_soon(script)
                    async for event in conversation:
                        if isinstance(event, StateChanged):
                            say(f"agent: {event.state}")
            log = conversation.log
        if tts_ep.server is not None:
            add_tts_timings(log, tts_ep.server)
    log.notes["script"] = [line.text for line in lines]
    files = await anyio.to_thread.run_sync(
        write_all, out_dir, log, transport.recorded_input(), transport.recorded_output()
    )
    print(turn_table(log))
    return DemoResult(log, files, conversation.history)


def add_tts_timings(log: ConversationLog, server: LocalTTSServer) -> None:
    """With the local TTS server in this process: split each answered turn's wait for audio
    into the LLM writing enough text (first token -> synthesis starts) and the engine's own
    first chunk. The server's timings are found by each turn's context id on its connection
    (ids repeat across connections: every call of a phone server has its own socket, and each
    socket's first context is "ctx-1") and are durations, so no second clock enters the turn's
    timeline."""
    for record in log.turns:
        to_socket = record.latency_ms("text_to_socket")
        try:
            timing = server.stats.context(record.tts_context, record.tts_connection)
        except KeyError:
            continue
        if to_socket is not None and timing.text_to_synthesis_s is not None:
            waited = to_socket + timing.text_to_synthesis_s * 1000
            record.durations_ms["llm_until_tts"] = round(waited, 2)
        if timing.engine_first_chunk_s is not None:
            record.durations_ms["tts_engine"] = round(timing.engine_first_chunk_s * 1000, 2)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the offline demo."""
    progress = stderr_progress("demo")
    out_dir = Path(args.out)
    settings = AgentSettings(
        llm_url=args.llm_url,
        tts_url=args.tts_url,
        instructions=DEMO_PROMPT,
        max_tokens=90,
        tools_file=args.tools,
        end_of_turn=args.end_of_turn,
    )
    result = anyio.run(
        lambda: run_demo(out_dir, settings=settings, progress=progress, echo_gain=args.echo)
    )
    print()
    for name, path in result.files.items():
        print(f"  {name:<12} {path}")
    interrupted = [t for t in result.log.turns if t.interrupted]
    print(
        f"\n{len(result.log.turns)} user turns, {len(interrupted)} interrupted; "
        f"open {result.files.get('timeline', out_dir)} to see the conversation."
    )
    sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    """Add `demo` to the CLI's subcommands."""
    p = sub.add_parser(
        "demo",
        help="an offline conversation with a barge-in; writes output/demo/",
        description="Starts the local TTS and LLM servers and the local STT, plays a scripted "
        "user in real time (four turns, one of which cuts the agent off), and writes "
        "conversation.wav (user left, agent right), transcript.md, metrics.json and "
        "timeline.png. Needs no network and no keys; takes about a minute.",
    )
    p.add_argument(
        "--out", default="output/demo", help="folder for the files (default: %(default)s)"
    )
    p.add_argument("--llm-url", help="use this OpenAI-compatible server instead of the local one")
    p.add_argument("--tts-url", help="use this ElevenLabs-protocol server instead of the local one")
    p.add_argument(
        "--tools", metavar="FILE", help="a Python file whose @tool functions the agent may call"
    )
    p.add_argument(
        "--end-of-turn",
        choices=("smart", "silence"),
        default="smart",
        help="smart: an end-of-turn model at the user's first pause; silence: 500 ms of "
        "silence (default: %(default)s)",
    )
    p.add_argument(
        "--echo",
        type=float,
        default=0.0,
        metavar="GAIN",
        help="simulate speaker-to-mic echo at this gain (e.g. 0.3) to see the echo guard",
    )
    p.set_defaults(handler=cmd_demo)
