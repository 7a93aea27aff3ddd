"""Phone calls over Twilio Media Streams: a phone server, a call object, and our own caller.

Serve calls (the call handler gets a `TwilioCall`: `mic_frames()`, `output`, `dtmf()`,
`hang_up()`, `info`)::

    from plugins.twilio import PhoneConfig, serve_forever

    async def handler(call):  # e.g. run the voice agent on call.mic_frames() / call.output
        ...

    serve_forever(handler, PhoneConfig.from_env(public_url="https://bot.example"), port=8080)

Mount in your own ASGI service instead: ``PhoneApp(handler, config).asgi``.
Place a test call against it: ``await place_call("http://127.0.0.1:8080", CallScript(...))``,
or a live one from a microphone and a speaker: ``await live_call(url, microphone, speaker)``.
Needs the ``phone`` extra (starlette, uvicorn) for the server; the protocol, pacer, security
and caller modules need only the core.
"""

from __future__ import annotations

from .call import CallHandler, CallRecord, CallSettings, TwilioCall, TwilioOutput, run_call
from .caller import CallFailed, CallResult, CallScript, FarEnd, Press, Say, dial, place_call
from .dialect import TWILIO, Dialect
from .handlers import ToneBot, echo_handler
from .live_caller import Microphone, live_call
from .pacing import OutboundPacer
from .protocol import BotProtocol, CallerProtocol, Limits, StartInfo
from .security import (
    AuthToken,
    StreamTokens,
    compute_signature,
    validate_body_signature,
    validate_signature,
)
from .server import PhoneApp, PhoneConfig, running_phone_server, serve, serve_forever

__all__ = [
    "TWILIO",
    "AuthToken",
    "BotProtocol",
    "CallFailed",
    "CallHandler",
    "CallRecord",
    "CallResult",
    "CallScript",
    "CallSettings",
    "CallerProtocol",
    "Dialect",
    "FarEnd",
    "Limits",
    "Microphone",
    "OutboundPacer",
    "PhoneApp",
    "PhoneConfig",
    "Press",
    "Say",
    "StartInfo",
    "StreamTokens",
    "ToneBot",
    "TwilioCall",
    "TwilioOutput",
    "compute_signature",
    "dial",
    "echo_handler",
    "live_call",
    "place_call",
    "run_call",
    "running_phone_server",
    "serve",
    "serve_forever",
    "validate_body_signature",
    "validate_signature",
]
