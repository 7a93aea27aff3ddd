"""`voxloop run`: a spoken conversation on this machine's microphone and speaker, and
`voxloop devices` to list them.

Without an echo canceller the agent hears itself through the speaker; the echo guard (on by
default) keeps it from interrupting itself, but headphones work best: then `--no-echo-guard`
lets the quietest interruption through.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from agent.app.chat import add_agent_options, settings_from
from agent.app.compose import (
    AgentSettings,
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
from agent.conversation import TurnRecord
from agent.echo import EchoConfig
from agent.events import StateChanged, TurnFinished
from agent.timeline import format_ms
from agent.turntaking import BargeInRules
from agent.vad import VadConfig
from agent.voice_agent import Agent, AgentOptions, EndOfTurn

RATE = 16000


def turn_line(record: TurnRecord) -> str:
    """The per-turn latency line shown live."""
    parts = [
        f"turn {record.index}",
        f"voice-to-voice {format_ms(record.latency_ms('voice_to_voice'))}",
        f"stt {format_ms(record.latency_ms('stt'))}",
        f"llm first token {format_ms(record.latency_ms('ttft'))}",
        f"tts first byte {format_ms(record.latency_ms('ttfb'))}",
    ]
    reaction = record.latency_ms("barge_in_reaction")
    if record.interrupted and reaction is not None:
        parts.append(f"barge-in stop {format_ms(reaction)}")
    return " · ".join(parts)


def options_from(args: argparse.Namespace) -> AgentOptions:
    """The listening and barge-in options of `run` (and the commands that share them)."""
    for name in ("end_of_turn_ms", "pause_ms", "unsure_ms"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be a positive number of ms")
    if args.pause_ms >= args.unsure_ms:
        raise SystemExit("--pause-ms must be shorter than --unsure-ms")
    return AgentOptions(
        vad=VadConfig(min_silence_ms=args.end_of_turn_ms, aggressiveness=args.vad_aggressiveness),
        end_of_turn=EndOfTurn(pause_ms=args.pause_ms, unsure_silence_ms=args.unsure_ms),
        barge_in=BargeInRules(enabled=not args.no_barge_in, think_ahead=not args.no_think_ahead),
        echo=EchoConfig(enabled=not args.no_echo_guard),
        sentence_mode=args.sentence_mode,
        transcribe_early=not remote_stt(args.stt_url),
    )


def cmd_run(args: argparse.Namespace) -> int:
    """A conversation on mic and speaker."""
    from plugins.sounddevice import SoundDeviceTransport

    settings: AgentSettings = settings_from(args)
    progress = stderr_progress("run")
    tools = load_tools(settings.tools_file)

    def on_turn(record: TurnRecord) -> None:
        print()
        if record.transcript:
            print(f"you:   {record.transcript}")
        if record.heard_text:
            cut = " [interrupted]" if record.interrupted else ""
            print(f"agent: {record.heard_text}{cut}")
        print(f"  ({turn_line(record)})", flush=True)

    async def main() -> None:
        transport = SoundDeviceTransport(
            RATE, block_ms=20, input_device=args.input, output_device=args.output
        )
        async with transport.running():  # devices first: a missing one fails in a second
            stt = await load_stt(args.stt_url, progress=progress)
            detector = await load_turn_detector(args.end_of_turn, progress=progress)
            async with (
                llm_endpoint(settings.llm_url, progress=progress) as llm_ep,
                tts_endpoint(settings.tts_url, progress=progress) as tts_ep,
                make_llm(settings, llm_ep) as llm,
                make_tts(settings, tts_ep, RATE) as tts,
            ):
                tools_notice(llm, tools, progress)
                options = options_from(args)
                options.warm_up = llm_ep.local and tts_ep.local  # local engines: warm them
                options.first_clause = not tts_ep.local  # the local server starts on it itself
                agent = Agent(
                    stt=stt,
                    llm=llm,
                    tts=tts,
                    instructions=settings.instructions,
                    tools=tools,
                    options=options,
                    turn_detector=detector,
                )
                print("Speak now (Ctrl-C to stop).", flush=True)
                async with agent.conversation(transport) as conversation:
                    async for event in conversation:
                        if isinstance(event, StateChanged):
                            print(f"\r[{event.state}]".ljust(60), end="", flush=True)
                        elif isinstance(event, TurnFinished):
                            on_turn(event.record)

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        print("\nbye")
        return 130
    return 0


def add_listening_options(p: argparse.ArgumentParser) -> None:
    """End of turn, VAD and barge-in options (run, phone, web)."""
    p.add_argument(
        "--stt-url",
        help="OpenAI-compatible transcription server (default: the "
        "OpenAI service with OPENAI_API_KEY, else the local whisper tiny.en)",
    )
    p.add_argument(
        "--end-of-turn",
        choices=("smart", "silence"),
        default="smart",
        help="how the agent knows you are done: 'smart' asks an end-of-turn model (Smart Turn "
        "v3, local) at your first short pause and answers at once if you sound finished; "
        "'silence' waits for --end-of-turn-ms of silence (default: %(default)s)",
    )
    p.add_argument(
        "--end-of-turn-ms",
        type=int,
        default=500,
        help="with --end-of-turn silence: the silence that ends your turn; lower is snappier, "
        "higher lets you pause mid-sentence (default: %(default)s)",
    )
    p.add_argument(
        "--pause-ms",
        type=int,
        default=EndOfTurn().pause_ms,
        help="the short pause where the agent starts answering (held until your turn ends) "
        "and asks the end-of-turn model (default: %(default)s)",
    )
    p.add_argument(
        "--unsure-ms",
        type=int,
        default=1000,
        help="with --end-of-turn smart: the silence that ends your turn when the model "
        "thought you were not done (default: %(default)s)",
    )
    p.add_argument(
        "--no-think-ahead",
        action="store_true",
        help="start answering only when your turn has ended (saves compute; slower answers)",
    )
    p.add_argument(
        "--vad-aggressiveness",
        type=int,
        default=2,
        choices=range(4),
        help="webrtcvad mode 0-3: higher rejects more noise (default: %(default)s)",
    )
    p.add_argument(
        "--no-echo-guard",
        action="store_true",
        help="with headphones: let even quiet interruptions through",
    )
    p.add_argument("--no-barge-in", action="store_true", help="never interrupt the agent")


def cmd_devices(args: argparse.Namespace) -> int:
    """List audio devices."""
    from plugins.sounddevice import list_devices

    print(list_devices())
    return 0


def register(sub: Any) -> None:
    """Add `run` and `devices` to the CLI's subcommands."""
    p = sub.add_parser(
        "run",
        help="talk with the agent on your microphone and speaker",
        description="A spoken conversation: the agent listens (webrtcvad), transcribes the end "
        "of each turn, answers as the LLM streams, and stops the moment you speak over it. "
        "Headphones work best; the echo guard handles laptop speakers.",
    )
    add_agent_options(p)
    add_listening_options(p)
    p.add_argument("--input", help="microphone: index or part of its name (see voxloop devices)")
    p.add_argument("--output", help="speaker: index or part of its name")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("devices", help="list microphones and speakers")
    p.set_defaults(handler=cmd_devices)
