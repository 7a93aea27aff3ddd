"""`voxloop phone`: the voice agent on phone calls (Twilio Media Streams), and `voxloop call`:
our own caller, to test a phone bot without a Twilio account.

Each call is one conversation: the caller's μ-law 8 kHz audio is decoded for VAD at 8 kHz and
for STT; the TTS is asked for `ulaw_8000` on a socket of the call's own; what the caller heard
comes from Twilio's echoed marks; barge-in sends `clear` at once. The engines (STT, the LLM
endpoint, the local TTS server) are shared by all calls of the process. When a call ends (the
caller's `stop`, or the agent's `end_call`) its recording, transcript and metrics are written
to ``--out/<CallSid>/``.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio

from agent.app.chat import add_agent_options, settings_from
from agent.app.compose import (
    AgentSettings,
    LLMEndpoint,
    TTSEndpoint,
    llm_endpoint,
    load_stt,
    load_tools,
    load_turn_detector,
    make_llm,
    make_tts,
    stderr_progress,
    tools_notice,
    tts_endpoint,
)
from agent.app.live import add_listening_options, options_from
from agent.audio import AudioFrame, read_wav, resample, ulaw_decode, write_stereo_wav
from agent.echo import EchoConfig
from agent.errors import VoxloopError
from agent.events import AgentSaid, Dtmf, ErrorEvent, Interrupted, UserSaid
from agent.interfaces import LLM, STT, TurnDetector
from agent.tools import Tool
from agent.voice_agent import Agent, AgentOptions, Conversation

if TYPE_CHECKING:
    from plugins.twilio import AuthToken, CallResult, CallScript, TwilioCall

log = logging.getLogger("voxloop.phone")

RATE = 8000
KEEP_CALLS = 32
DEFAULT_GREETING = "Hello! How can I help you today?"
SCRIPTED_MAX_SECONDS = 60.0  # voxloop call --say: a scripted call hangs up by then
MIC_MAX_SECONDS = 1800.0  # voxloop call --mic: a live one by then
MIC_SPEAKER_SECONDS = 65.0  # the speaker holds what a far-ahead bot sends (as Twilio would)


class PhoneBot:
    """The per-call work of `voxloop phone`: one conversation per `TwilioCall`."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        options: AgentOptions,
        stt: STT,
        llm: LLM,
        tts_endpoint: TTSEndpoint,
        tools: Sequence[Tool[..., Any]] = (),
        turn_detector: TurnDetector | None = None,
        greeting: str | None = DEFAULT_GREETING,
        out_dir: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.options = options
        self.stt = stt
        self.llm = llm
        self.tts_endpoint = tts_endpoint
        self.tools = tuple(tools)
        self.turn_detector = turn_detector
        self.greeting = greeting
        self.out_dir = out_dir
        self.say = say
        # the last calls and their conversations (tests and a status page read them); bounded,
        # so a server that runs for weeks does not keep every call
        self.finished: deque[Conversation] = deque(maxlen=KEEP_CALLS)
        self.calls: deque[TwilioCall] = deque(maxlen=KEEP_CALLS)

    async def __call__(self, call: TwilioCall) -> None:
        """Converse on ``call`` until it ends (the caller hangs up, or `end_call`); then write
        its files. Cancelling ends the conversation (cleanup shielded) and writes nothing."""
        sid = call.call_sid or "call"
        self.calls.append(call)
        # The call's audio is kept only to be written (with out_dir): a copy of every frame,
        # both ways, and the memory of the whole call (~700 against ~390 KiB per call).
        keep = self.out_dir is not None
        call.output.recording = bytearray() if keep else None
        caller: bytearray | None = bytearray() if keep else None
        self.say(f"[{sid}] call from {call.info.custom_parameters.get('From', 'unknown')}")
        # ulaw_8000, passed to Twilio as it comes: no decoding and re-encoding on the way
        ulaw = make_tts(
            self.settings, self.tts_endpoint, RATE, output_format="ulaw_8000", decode_audio=False
        )
        async with ulaw as tts:
            agent = Agent(
                stt=self.stt,
                llm=self.llm,
                tts=tts,
                instructions=self.settings.instructions,
                tools=self.tools,
                options=self.options,
                turn_detector=self.turn_detector,
            )
            line = _RecordedLine(call, caller)
            async with agent.conversation(line) as conversation, anyio.create_task_group() as tg:
                tg.start_soon(_forward_keys, call, conversation)
                if self.greeting:
                    conversation.say(self.greeting)
                async for event in conversation:
                    self._show(sid, event)
                tg.cancel_scope.cancel()
        self.finished.append(conversation)
        self.say(f"[{sid}] call ended: {call.end_reason or 'hung up'}")
        if self.out_dir is not None and caller is not None:
            folder = self.out_dir / re.sub(r"[^A-Za-z0-9_-]", "_", sid)
            bot = ulaw_decode(bytes(call.output.recording or b""))
            files = await anyio.to_thread.run_sync(
                _write_call, folder, conversation, bytes(caller), bot
            )
            self.say(f"[{sid}] wrote {', '.join(str(p) for p in files)}")
        call.output.recording = None  # written: do not keep the audio

    def _show(self, sid: str, event: object) -> None:
        if isinstance(event, UserSaid):
            self.say(f"[{sid}] caller: {event.text}")
        elif isinstance(event, AgentSaid):
            cut = " [interrupted]" if event.interrupted else ""
            self.say(f"[{sid}] bot:    {event.heard}{cut}")
        elif isinstance(event, Interrupted):
            self.say(f"[{sid}] (caller cut in at {event.onset:.2f} s)")
        elif isinstance(event, Dtmf):
            self.say(f"[{sid}] key {event.digit}")
        elif isinstance(event, ErrorEvent):
            self.say(f"[{sid}] error: {event.message}")


class _RecordedLine:
    """The call as the conversation's transport, keeping what the caller said."""

    def __init__(self, call: TwilioCall, caller: bytearray | None) -> None:
        self.call = call
        self.caller = caller
        self.sample_rate = call.sample_rate
        self.output = call.output

    def now(self) -> float:
        return self.call.now()

    async def mic_frames(self) -> Any:
        async for frame in self.call.mic_frames():
            if self.caller is not None:
                self.caller.extend(frame.pcm)
            yield frame

    async def deliver_frames(self, sink: Callable[[AudioFrame], None]) -> None:
        """The call's frames handed to ``sink`` as they arrive (`TwilioCall.deliver_frames`),
        recorded first (when kept). Cancelling stops the delivery."""
        caller = self.caller
        if caller is None:
            await self.call.deliver_frames(sink)
            return

        def take(frame: AudioFrame) -> None:
            caller.extend(frame.pcm)
            sink(frame)

        await self.call.deliver_frames(take)


async def _forward_keys(call: TwilioCall, conversation: Conversation) -> None:
    async for digit in call.dtmf():
        conversation.press(digit)


def _write_call(folder: Path, conversation: Conversation, caller: bytes, bot: bytes) -> list[Path]:
    from agent.app.report import write_metrics, write_transcript

    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_stereo_wav(folder / "call.wav", caller, bot, RATE),
        write_transcript(folder / "transcript.md", conversation.log),
        write_metrics(folder / "metrics.json", conversation.log),
    ]


def phone_options(args: argparse.Namespace) -> AgentOptions:
    """`run`'s listening options, with the echo guard off unless asked for: phone networks
    cancel line echo, and the guard would only cost quiet interruptions."""
    options = options_from(args)
    options.echo = EchoConfig(enabled=args.echo_guard)
    return options


def cmd_phone(args: argparse.Namespace) -> int:
    """Serve phone calls (in ``--workers`` processes sharing the port, when more than one)."""
    if args.workers > 1:
        return supervise_workers(args.workers, args.port)
    try:
        from plugins.twilio import PhoneConfig, serve
    except ImportError as err:
        raise VoxloopError(
            f"the phone server needs the 'phone' extra ({err.name} is missing): "
            "run ./dev.sh setup, or pip install 'voxloop[phone]'"
        ) from None
    settings = settings_from(args)
    tools = load_tools(settings.tools_file)
    progress = stderr_progress("phone")
    config = PhoneConfig.from_env(public_url=args.public_url)

    async def main() -> None:
        stt = await load_stt(args.stt_url, progress=progress)
        detector = await load_turn_detector(args.end_of_turn, progress=progress)
        async with (
            llm_endpoint(settings.llm_url, progress=progress) as llm_ep,
            tts_endpoint(settings.tts_url, progress=progress, clients=config.max_calls) as tts_ep,
            make_llm(settings, llm_ep) as llm,
        ):
            tools_notice(llm, tools, progress)
            options = phone_options(args)
            options.first_clause = not tts_ep.local  # the local server starts on it itself
            bot = PhoneBot(
                settings=settings,
                options=options,
                stt=stt,
                llm=llm,
                tts_endpoint=tts_ep,
                tools=tools,
                turn_detector=detector,
                greeting=args.greeting or None,
                out_dir=Path(args.out),
                say=lambda line: print(line, flush=True),
            )
            _describe(args, llm_ep, tts_ep, config.auth_token is not None, progress)
            await serve(bot, config, host=args.host, port=args.port, reuse_port=args.reuse_port)

    anyio.run(main)
    return 0


def _describe(
    args: argparse.Namespace,
    llm_ep: LLMEndpoint,
    tts_ep: TTSEndpoint,
    signed: bool,
    progress: Callable[[str], None],
) -> None:
    progress(f"LLM: {llm_ep.describe()}")
    progress(f"TTS: {tts_ep.describe()}")
    here = f"http://{args.host}:{args.port}"
    progress(f"phone server on {here}: webhook {here}/twilio/voice, media /twilio/media")
    progress(
        "webhook signatures checked (TWILIO_AUTH_TOKEN set)"
        if signed
        else "no TWILIO_AUTH_TOKEN: webhooks are not verified (fine on 127.0.0.1)"
    )
    progress(f"test it without Twilio: voxloop call {here} --say question.wav")


def supervise_workers(workers: int, port: int) -> int:
    """Run ``workers`` copies of this `voxloop phone` on one port (SO_REUSEPORT: the kernel
    spreads new calls over them) and wait for them. SIGTERM, SIGINT or SIGHUP is passed on, so
    every worker drains its live calls; a worker dies with this process if it is killed."""
    from agent.app import lifecycle

    if port == 0:
        raise VoxloopError("--workers needs a fixed --port (each worker would pick its own)")
    argv = [a for a in sys.argv[1:] if not a.startswith("--workers")]
    if "--workers" in sys.argv:  # the form "--workers N": drop its value too
        i = sys.argv.index("--workers")
        argv = sys.argv[1:i] + sys.argv[i + 2 :]
    command = [sys.executable, "-m", "agent.app.cli", *argv, "--reuse-port"]
    children = [
        subprocess.Popen(command, preexec_fn=lifecycle.die_with_parent) for _ in range(workers)
    ]
    print(f"[phone] {workers} workers on port {port}: pids {[c.pid for c in children]}", flush=True)
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:  # our SIGTERM/SIGHUP/SIGINT (agent.app.lifecycle): drain them all
        sig = lifecycle.received() or signal.SIGINT
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)
        codes = [child.wait() for child in children]
        return lifecycle.exit_status(130)
    return max(codes, default=0)


# -- voxloop call ------------------------------------------------------------------------------


def webhook_base(url: str) -> str:
    """The HTTP base a caller dials, from a phone server's base, webhook or media-stream URL."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    if scheme not in ("http", "https") or not parts.netloc:
        raise VoxloopError(
            f"{url!r} is not a phone server's address: give http://HOST:PORT, its webhook "
            "(/twilio/voice) or its media stream (ws://HOST:PORT/twilio/media)"
        )
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def caller_voice(path: str) -> bytes:
    """A WAV file as the caller's voice: PCM16 mono at 8 kHz."""
    try:
        audio = read_wav(path)
    except (OSError, ValueError, EOFError) as err:
        raise VoxloopError(f"--say {path}: not a readable WAV file ({err})") from None
    return resample(audio.pcm, audio.sample_rate, RATE)


def call_summary(result: CallResult) -> list[str]:
    """The lines `voxloop call` prints: time to first audio, barge-in reaction, how it ended."""
    lines = []
    if result.response_latencies:
        firsts = ", ".join(f"{s * 1000:.0f}" for s in result.response_latencies)
        lines.append(f"time to first audio after you stopped (ms): {firsts}")
    if result.barge_in_reactions:
        cuts = ", ".join(f"{s * 1000:.0f}" for s in result.barge_in_reactions)
        lines.append(f"barge-in: you spoke -> bot's clear (ms): {cuts}")
    lines.append(
        f"bot audio: {result.media_in} frames, {result.clears} clear(s), "
        f"{len(result.marks_echoed)} marks echoed; ended by {result.hung_up_by or 'the call'}"
        + (f" ({result.close_reason})" if result.close_reason else "")
    )
    return lines


def cmd_call(args: argparse.Namespace) -> int:
    """Place a simulated phone call (the caller's voice from WAV files, or, with --mic, from
    this machine's microphone, the bot on its speaker)."""
    from plugins.twilio import AuthToken, CallScript, Press, Say, place_call

    if args.mic:
        for option, given in (("--say", args.say), ("--dtmf", args.dtmf)):
            if given:
                args.call_parser.error(
                    f"--mic and {option} do not go together: with --mic you talk live from "
                    f"this machine's microphone; {option} belongs to a scripted call (WAV files)"
                )
        if args.interrupt_after is not None:
            args.call_parser.error(
                "--interrupt-after schedules --say files; with --mic, just "
                "speak over the bot to interrupt it"
            )
    base = webhook_base(args.url)
    token = AuthToken(args.auth_token) if args.auth_token else None
    if args.mic:
        return call_with_mic(args, base, token)
    steps: list[Say | Press] = []
    for i, path in enumerate(args.say or []):
        pcm = caller_voice(path)
        cut_in = args.interrupt_after if i > 0 and args.interrupt_after is not None else None
        steps.append(Say(pcm, after_bot_audio=cut_in, after_bot_silence=args.pause))
    steps += [Press(digit) for digit in args.dtmf or ""]
    script = CallScript(steps=steps, max_seconds=args.max_seconds or SCRIPTED_MAX_SECONDS)
    result = anyio.run(lambda: place_call(base, script, auth_token=token, record_path=args.out))
    for line in call_summary(result):
        print(line)
    print(f"recording (you left, bot right): {args.out}")
    return 0


def _block_rate(rate: int) -> int:
    """A device rate at which 20 ms is whole samples (PortAudio converts otherwise)."""
    return rate if rate * 20 % 1000 == 0 else 48000


async def mic_call(
    base: str,
    script: CallScript,
    result: CallResult,
    *,
    input_device: str | None = None,
    output_device: str | None = None,
    auth_token: AuthToken | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Call the phone bot at `base` from this machine's microphone, hearing it on the speaker
    (each opened at its device's own rate), until the bot hangs up or ``script.max_seconds``;
    `result` holds the call. A missing or refused device raises `AudioDeviceError` before
    dialing. Cancelling (Ctrl-C) hangs up: `stop` is sent and `result` is complete."""
    from agent.errors import AudioDeviceError
    from plugins.sounddevice import SoundDeviceTransport, device_rate
    from plugins.twilio.live_caller import live_call

    def device(spec: str | None) -> int | str | None:
        return int(spec) if spec is not None and spec.isdigit() else spec

    try:
        mic = SoundDeviceTransport(
            _block_rate(device_rate(device(input_device), "input")),
            block_ms=20,
            input_device=device(input_device),
            use_output=False,
        )
        speaker = SoundDeviceTransport(
            _block_rate(device_rate(device(output_device), "output")),
            block_ms=20,
            output_device=device(output_device),
            use_input=False,
            max_output_seconds=MIC_SPEAKER_SECONDS,
        )
        async with mic.running(), speaker.running():  # devices first: fail in a second
            say(
                f"calling {base} from your microphone ({mic.sample_rate} Hz) and speaker "
                f"({speaker.sample_rate} Hz); speak after the greeting, Ctrl-C hangs up "
                "(use headphones: a phone bot's echo guard is off)"
            )
            await live_call(
                base,
                mic,
                speaker.output,
                script,
                auth_token=auth_token,
                result=result,
                max_buffer_seconds=MIC_SPEAKER_SECONDS - 5,
            )
    except AudioDeviceError as err:
        raise AudioDeviceError(
            f"voxloop call --mic: {err}. Without a microphone and speaker, place the call "
            "with --say question.wav instead"
        ) from err


def call_with_mic(args: argparse.Namespace, base: str, token: AuthToken | None) -> int:
    """`voxloop call --mic`: a live call (see `mic_call`); Ctrl-C hangs up and the recording
    is written."""
    from plugins.twilio import CallResult, CallScript

    script = CallScript(max_seconds=args.max_seconds or MIC_MAX_SECONDS)
    result = CallResult()

    async def main() -> None:
        await mic_call(
            base,
            script,
            result,
            input_device=args.input,
            output_device=args.output,
            auth_token=token,
            say=lambda line: print(line, flush=True),
        )

    status = 0
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        print("\nhung up", flush=True)
        status = 130
    if result.caller_pcm or result.media_in:
        result.write_wav(args.out)
        for line in call_summary(result):
            print(line)
        print(f"recording (you left, bot right): {args.out}", flush=True)
    return status


def register(sub: Any) -> None:
    """Add `phone` and `call` to the CLI's subcommands."""
    p = sub.add_parser(
        "phone",
        help="answer phone calls (Twilio Media Streams) with the voice agent",
        description="Serves, on one port: POST/GET /twilio/voice (TwiML that connects the call "
        "to the media stream), the WebSocket /twilio/media (one conversation per call, with "
        "barge-in) and GET /healthz. Offline on the embedded engines, or on the real services "
        "with keys. Set TWILIO_AUTH_TOKEN to verify Twilio's webhook signatures (required "
        "before binding beyond 127.0.0.1). SIGTERM drains: live calls finish, new ones are "
        "refused. See README, 'Put it on a phone number'.",
    )
    add_agent_options(p)
    add_listening_options(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (each loads its own engines: point --llm-url at one "
        "shared server when there are several; default: %(default)s)",
    )
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--public-url",
        help="the public https:// or wss:// address Twilio reaches (a tunnel); default: "
        "$VOXLOOP_PUBLIC_URL, else wss:// plus the webhook request's Host header",
    )
    p.add_argument(
        "--greeting",
        default=DEFAULT_GREETING,
        help='what the bot says when it picks up ("" for nothing; default: %(default)r)',
    )
    p.add_argument(
        "--echo-guard",
        action="store_true",
        help="turn the echo guard on (off on phone lines: the network cancels line echo)",
    )
    p.add_argument(
        "--out", default="output/phone", help="folder for each call's files (default: %(default)s)"
    )
    p.set_defaults(handler=cmd_phone)

    p = sub.add_parser(
        "call",
        help="place a simulated phone call to a phone bot (no Twilio account needed)",
        description="Speaks Twilio's side of Media Streams: posts the voice webhook, streams "
        "your WAV files as the caller in real time (20 ms μ-law frames), echoes the bot's "
        "marks, honours clear, presses keys, and records call.wav (you left, bot right). "
        "Prints the bot's time to first audio and its barge-in reaction. With --mic you talk "
        "live instead: your microphone is the caller and the bot plays on your speaker "
        "(marks echoed as it plays, a clear silences it at once); Ctrl-C hangs up.",
    )
    p.add_argument("url", help="the phone server: http://127.0.0.1:8080 (or its /twilio/media)")
    p.add_argument(
        "--say",
        action="append",
        metavar="WAV",
        help="a WAV file the caller says (repeat for several turns, in order)",
    )
    p.add_argument(
        "--mic",
        action="store_true",
        help="talk live instead: this machine's microphone is the caller, its speaker plays "
        "the bot (not with --say)",
    )
    p.add_argument("--input", help="with --mic: microphone, index or part of its name")
    p.add_argument("--output", help="with --mic: speaker, index or part of its name")
    p.add_argument(
        "--interrupt-after",
        type=float,
        metavar="S",
        help="say every --say after the first this many seconds into the bot's answer (barge-in)",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=0.8,
        help="otherwise speak once the bot has been silent this long (default: %(default)s s)",
    )
    p.add_argument("--dtmf", metavar="DIGITS", help="keys to press after the last --say")
    p.add_argument(
        "--max-seconds",
        type=float,
        help=f"hang up after this long (default: {SCRIPTED_MAX_SECONDS:g} s; with --mic "
        f"{MIC_MAX_SECONDS / 60:g} min)",
    )
    p.add_argument(
        "--auth-token",
        help="sign the webhook with this Twilio auth token (when the bot checks signatures)",
    )
    p.add_argument("--out", default="output/call.wav", help="recording (default: %(default)s)")
    p.set_defaults(handler=cmd_call, call_parser=p)
