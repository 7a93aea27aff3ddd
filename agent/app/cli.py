"""The `voxloop` command line.

Every command that talks to a service takes its address (`--tts-url`, `--llm-url`); without one,
a key in the environment selects the real service, and without a key the embedded local server
starts on 127.0.0.1. Run `voxloop COMMAND --help` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from agent.app.compose import stderr_progress, tts_endpoint

EPILOG = """\
environment:
  ELEVENLABS_API_KEY   use the real ElevenLabs service for TTS (sent in the xi-api-key header)
  ELEVENLABS_BASE_URL  TTS server to use instead (e.g. ws://127.0.0.1:8765); nothing local starts
  OPENAI_API_KEY       use the real OpenAI service for the LLM
  OPENAI_BASE_URL      OpenAI-compatible server to use instead; nothing local starts
  TWILIO_AUTH_TOKEN    voxloop phone: verify Twilio's webhook signatures (needed beyond 127.0.0.1)
  VOXLOOP_PUBLIC_URL   voxloop phone: the public https:// address Twilio reaches (a tunnel)
  VOXLOOP_TTS_API_KEY  voxloop tts-server: the key clients must present
Without keys or URLs every stage runs offline on loopback with the embedded engines.
"""

Handler = Callable[[argparse.Namespace], int]


def _voice_default() -> str:
    from plugins.elevenlabs.client import DEFAULT_VOICE_ID

    return DEFAULT_VOICE_ID


def _output_format(name: str) -> str:
    """argparse type: an output_format the protocol knows (the error lists the supported)."""
    from plugins.elevenlabs.formats import parse_output_format

    try:
        return parse_output_format(name).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_tts_options(p: argparse.ArgumentParser, default_format: str) -> None:
    p.add_argument(
        "--tts-url",
        help="ElevenLabs-protocol server (ws:// or wss://); default: $ELEVENLABS_BASE_URL, the "
        "real service when ELEVENLABS_API_KEY is set, else a local server started for you",
    )
    p.add_argument(
        "--voice",
        default=None,
        help="voice id (default: a stock voice; the local "
        "server speaks unknown ids in its own voice)",
    )
    p.add_argument(
        "--model", default="eleven_flash_v2_5", help="TTS model id (default: %(default)s)"
    )
    p.add_argument(
        "--format",
        type=_output_format,
        default=default_format,
        help="output_format, e.g. mp3_44100_128, pcm_16000, ulaw_8000 (default: %(default)s)",
    )


def cmd_say(args: argparse.Namespace) -> int:
    """Speak a text to a file through the TTS socket."""
    from plugins.elevenlabs.tools import say_to_file

    progress = stderr_progress()

    async def main() -> None:
        async with tts_endpoint(args.tts_url, progress=progress) as ep:
            progress(f"TTS: {ep.describe()}")
            result = await say_to_file(
                args.text,
                base_url=ep.url,
                api_key=ep.api_key,
                out_dir=Path(args.out),
                voice_id=args.voice or _voice_default(),
                model_id=args.model,
                output_format=args.format,
                name=args.name,
            )
        print(f"wrote {result.path} ({result.audio_seconds:.2f} s of audio)")
        print(f"time to first byte: {result.ttfb_s * 1000:.0f} ms · total: {result.total_s:.2f} s")

    anyio.run(main)
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    """Measure time to first byte over several trials, like the elevenlabs-latency tool."""
    from plugins.elevenlabs.tools import LATENCY_SENTENCE, LatencyReport, latency_trial

    progress = stderr_progress()

    async def main() -> LatencyReport:
        async with tts_endpoint(args.tts_url, progress=progress) as ep:
            progress(f"TTS: {ep.describe()}")
            trials = []
            for i in range(args.trials):
                trial = await latency_trial(
                    base_url=ep.url,
                    api_key=ep.api_key,
                    voice_id=args.voice or _voice_default(),
                    model_id=args.model,
                    output_format=args.format,
                )
                trials.append(trial)
                print(
                    f"trial {i + 1}: first byte {trial.ttfb_s * 1000:7.1f} ms · "
                    f"total {trial.total_s * 1000:7.1f} ms"
                )
            return LatencyReport(trials)

    report = anyio.run(main)
    print(f"sentence: {len(LATENCY_SENTENCE)} characters · {len(report.trials)} trials")
    print(
        f"average time to first byte: {report.mean_ttfb_s * 1000:.1f} ms "
        f"(median {report.median_ttfb_s * 1000:.1f} ms)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def cmd_tts_server(args: argparse.Namespace) -> int:
    """Serve the ElevenLabs WebSocket protocol from the local voice."""
    from plugins.elevenlabs.server import API_KEY_ENV, running_server

    progress = stderr_progress("tts-server")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.threads is not None:
        if args.threads < 1:
            print("voxloop tts-server: --threads must be at least 1", file=sys.stderr)
            return 2
        from plugins.local import piper_tts

        piper_tts.CPU_THREADS = args.threads  # read when the voice loads, just below

    async def main() -> None:
        async with running_server(
            host=args.host,
            port=args.port,
            strict_voices=args.strict_voices,
            progress=progress,
            api_key=api_key,
            allow_public_without_key=args.allow_public_without_key,
            max_connections=args.max_connections,
            max_connections_per_address=args.max_connections_per_address,
            first_clause=not args.exact_schedule,
        ) as server:
            voices = ", ".join(server.engine.voices())
            key_note = " (clients must send its API key)" if api_key else ""
            print(
                f"ElevenLabs-compatible TTS on {server.url}{key_note} (voices: {voices})",
                flush=True,
            )
            print(f"  try: ELEVENLABS_BASE_URL={server.url} voxloop say 'Hello there'", flush=True)
            await anyio.sleep_forever()

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        return 130  # stopped with Ctrl-C (or SIGTERM/SIGHUP: main() reports 128 + it)
    except ValueError as err:  # e.g. a public address without a key: say what to do
        print(f"voxloop tts-server: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_llm_server(args: argparse.Namespace) -> int:
    """Serve OpenAI-compatible chat completions from the embedded SmolLM2 model."""
    from plugins.local.llm_server import serve_forever

    try:
        serve_forever(args.host, args.port, stderr_progress("llm-server"))
    except KeyboardInterrupt:
        return 130  # stopped with Ctrl-C (or SIGTERM/SIGHUP: main() reports 128 + it)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="voxloop",
        description="Real-time voice agents: LLM tokens stream into an ElevenLabs-protocol TTS "
        "socket as they arrive; barge-in stops playback the moment the user speaks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VOXLOOP_LOG", "WARNING"),
        help="DEBUG, INFO, WARNING (default) or ERROR",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "say",
        help="speak a text to a file through the TTS socket",
        description="Open the TTS socket, send the text word by word as an LLM "
        "would, flush, close and write output/<name>.mp3; prints time to first "
        "byte and total time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("text", help="what to say")
    _add_tts_options(p, "mp3_44100_128")
    p.add_argument("--out", default="output", help="folder for the file (default: %(default)s)")
    p.add_argument("--name", help="file name (default: from the first words)")
    p.set_defaults(handler=cmd_say)

    p = sub.add_parser(
        "latency",
        help="measure TTS time to first byte over several trials",
        description="Each trial opens a new socket, sends the init, starts the "
        "clock, sends one 121-character sentence and the close, and records the "
        "time to the first audio and to the final message.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trials", type=int, default=5, help="how many (default: %(default)s)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    _add_tts_options(p, "mp3_44100_128")
    p.set_defaults(handler=cmd_latency)

    p = sub.add_parser(
        "tts-server",
        help="serve the ElevenLabs TTS WebSocket protocol locally",
        description="A local server for /v1/text-to-speech/{voice}/stream-input "
        "and multi-stream-input, speaking with the embedded piper voice. Point any "
        "ElevenLabs client's base URL at it.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s)")
    p.add_argument(
        "--strict-voices",
        action="store_true",
        help="refuse unknown voice ids instead of speaking them in the default voice",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key from every client (xi-api-key header, query or first "
        "message); default: $VOXLOOP_TTS_API_KEY. Needed to bind beyond loopback",
    )
    p.add_argument(
        "--allow-public-without-key",
        action="store_true",
        help="bind a non-loopback --host without a key (anyone who reaches the port may use it)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="sockets served at once; more get HTTP 503 (default: %(default)s)",
    )
    p.add_argument(
        "--max-connections-per-address",
        type=int,
        default=16,
        help="sockets served at once per client address (default: %(default)s)",
    )
    p.add_argument(
        "--exact-schedule",
        action="store_true",
        help="follow chunk_length_schedule exactly, as the ElevenLabs service does (by "
        "default each context's first complete clause is spoken at once)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="piper's CPU threads (default: 1, best when a local LLM shares the cores; 2 is "
        "faster on a machine this server has to itself)",
    )
    p.set_defaults(handler=cmd_tts_server)

    p = sub.add_parser(
        "llm-server",
        help="serve OpenAI-compatible chat completions locally",
        description="Start llama.cpp's OpenAI-compatible server with the embedded "
        "SmolLM2-135M-Instruct model.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8766, help="port (default: %(default)s)")
    p.set_defaults(handler=cmd_llm_server)

    from agent.app import chat, demo, live, phone, web

    chat.register(sub)
    live.register(sub)
    demo.register(sub)
    phone.register(sub)
    web.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `voxloop` console script.

    SIGTERM and SIGHUP stop a command the way Ctrl-C does (the servers it started are stopped);
    the exit status is then 128 + the signal (`agent.app.lifecycle`).
    """
    from agent.app import lifecycle

    lifecycle.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return lifecycle.exit_status(handler(args))
    except KeyboardInterrupt:
        return lifecycle.exit_status(130)
    except Exception as err:  # a clear line, not a traceback, for the errors we name
        if lifecycle.received() is not None:  # failed while stopping (a closed terminal ...)
            return lifecycle.exit_status(1)
        from agent.errors import describe_error

        message = describe_error(err)
        if message is None:
            raise
        print(f"voxloop: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
