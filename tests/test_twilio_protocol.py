"""The Media Streams protocol, the outbound pacer and webhook security, as tables: no sockets."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from plugins.twilio.dialect import TWILIO, Dialect
from plugins.twilio.pacing import FRAME_SECONDS, OutboundPacer, SendFrame, SendMark
from plugins.twilio.protocol import (
    BotClear,
    BotMark,
    BotMedia,
    BotProtocol,
    CallerProtocol,
    Close,
    Connected,
    DtmfReceived,
    Limits,
    MarkEchoed,
    MediaReceived,
    ProtocolStateError,
    Started,
    Stopped,
    Violation,
)
from plugins.twilio.security import (
    AuthToken,
    StreamTokens,
    compute_signature,
    validate_body_signature,
    validate_signature,
)

SID = "MZ" + "a" * 32
FRAME = b"\x7f" * 160


def start_msg(**params: str) -> str:
    return json.dumps(TWILIO.encode_start(1, SID, "CA1", "AC1", dict(params)))


def media_msg(payload: bytes | str, sid: str = SID) -> str:
    b64 = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": "2",
            "streamSid": sid,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": b64},
        }
    )


def started() -> BotProtocol:
    p = BotProtocol()
    p.receive_text(json.dumps(TWILIO.encode_connected()), 0.0)
    p.receive_text(start_msg(caller="+1555"), 0.0)
    return p


# ---- bot role: messages in, events out --------------------------------------------------------


def test_a_call_in_order_gives_typed_events() -> None:
    p = BotProtocol()
    assert p.receive_text('{"event":"connected","protocol":"Call","version":"1.0.0"}', 0) == [
        Connected("Call", "1.0.0")
    ]
    [ev] = p.receive_text(start_msg(caller="+1555"), 0.0)
    assert isinstance(ev, Started)
    assert ev.info.stream_sid == SID and ev.info.call_sid == "CA1"
    assert ev.info.custom_parameters == {"caller": "+1555"}
    assert ev.info.media_format.sample_rate == 8000
    assert p.receive_text(media_msg(FRAME), 0.02) == [MediaReceived(FRAME, 1, 5)]
    mark = json.dumps(
        {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "vx:0:160"}}
    )
    assert p.receive_text(mark, 0.04) == [MarkEchoed("vx:0:160")]
    dtmf = json.dumps(TWILIO.encode_dtmf(5, SID, "7"))
    assert p.receive_text(dtmf, 0.05) == [DtmfReceived("7")]
    stop = json.dumps(TWILIO.encode_stop(6, SID, "CA1", "AC1"))
    assert p.receive_text(stop, 0.06) == [Stopped("caller hung up (stop)")]
    assert p.stopped
    assert p.data_to_send() == []


def test_outbound_messages_carry_the_stream_sid() -> None:
    p = started()
    p.send_media(FRAME)
    p.send_mark("m1")
    p.send_clear()
    out = [json.loads(m) for m in p.data_to_send() if isinstance(m, str)]
    assert out == [
        {
            "event": "media",
            "streamSid": SID,
            "media": {"payload": base64.b64encode(FRAME).decode()},
        },
        {"event": "mark", "streamSid": SID, "mark": {"name": "m1"}},
        {"event": "clear", "streamSid": SID},
    ]


@pytest.mark.parametrize("sid", [SID, 'MZ"quoted\\', "MZ\u00e9\u2028", "MZ\x00payload\x00"])
def test_a_media_message_is_written_as_json_dumps_writes_it(sid: str) -> None:
    """Media messages are written from a template made once per stream (the stream sid
    serialized once); the text must be exactly the dialect's message, whatever the sid holds."""
    p = BotProtocol()
    p.receive_text(json.dumps(TWILIO.encode_start(1, sid, "CA1", "AC1", {})), 0.0)
    for frame in (FRAME, bytes(range(160)), b"\xff" * 7):
        p.send_media(frame)
        [text] = p.data_to_send()
        payload = base64.b64encode(frame).decode()
        assert text == json.dumps(TWILIO.encode_media(sid, payload), separators=(",", ":"))


def test_sending_before_start_is_a_clear_error() -> None:
    with pytest.raises(ProtocolStateError, match="before its start"):
        BotProtocol().send_media(FRAME)


BAD_INPUT: list[tuple[str, Any, str, bool]] = [
    # (what, frame, violation kind, fatal)
    ("non-JSON text", "hello", "not_json", False),
    ("JSON that is not an object", "[1,2]", "not_object", False),
    ("no event field", '{"x": 1}', "malformed", False),
    ("binary frame", b"\x00\x01", "binary_frame", False),
    ("unknown event", '{"event":"party","streamSid":"' + SID + '"}', "unknown_event", False),
    ("bad base64", media_msg("@@not-base64@@"), "bad_base64", False),
    ("empty payload", media_msg(""), "empty_payload", False),
    ("media for another stream", media_msg(FRAME, sid="MZother"), "wrong_stream", False),
    ("second start", start_msg(), "duplicate_start", False),
    ("dtmf that is not a key", json.dumps(TWILIO.encode_dtmf(3, SID, "xy")), "malformed", False),
    ("huge frame", "x" * 70_000, "too_large", True),
    ("huge binary frame", b"x" * 70_000, "too_large", True),
]


@pytest.mark.parametrize(
    ("what", "frame", "kind", "fatal"), BAD_INPUT, ids=[row[0] for row in BAD_INPUT]
)
def test_bad_input_becomes_a_typed_violation(what: str, frame: Any, kind: str, fatal: bool) -> None:
    p = started()
    events = (
        p.receive_binary(frame, 1.0) if isinstance(frame, bytes) else p.receive_text(frame, 1.0)
    )
    [v] = [e for e in events if isinstance(e, Violation)]
    assert (v.kind, v.fatal, v.count) == (kind, fatal, 1)
    out = p.data_to_send()
    if fatal:
        [close] = out
        assert isinstance(close, Close) and close.code == 1009 and kind in close.reason
        assert p.receive_text(media_msg(FRAME), 1.1) == []  # nothing after a fatal close
    else:
        assert out == []
        assert p.receive_text(media_msg(FRAME), 1.1) == [MediaReceived(FRAME, 1, 5)]


def test_media_before_start_is_dropped_and_counted() -> None:
    p = BotProtocol()
    [v1] = p.receive_text(media_msg(FRAME), 0.0)
    [v2] = p.receive_text(media_msg(FRAME), 0.02)
    assert isinstance(v1, Violation) and isinstance(v2, Violation)
    assert (v1.kind, v1.count, v2.count, v1.fatal) == ("media_before_start", 1, 2, False)
    assert isinstance(p.receive_text(start_msg(), 0.04)[0], Started)


def test_odd_frame_length_is_reported_and_still_heard() -> None:
    p = started()
    events = p.receive_text(media_msg(b"\x7f" * 161), 0.0)
    assert isinstance(events[0], Violation) and events[0].kind == "frame_length"
    assert events[1] == MediaReceived(b"\x7f" * 161, 1, 5)


def test_a_message_flood_closes_the_call() -> None:
    p = started()
    kinds = []
    for i in range(1000):
        for e in p.receive_text('{"event":"connected"}', 1.0 + i * 1e-4):
            if isinstance(e, Violation):
                kinds.append(e.kind)
    assert kinds[0] == "flood"
    [close] = p.data_to_send()
    assert isinstance(close, Close) and close.code == 1008 and "flood" in close.reason


def test_audio_faster_than_real_time_is_a_flood() -> None:
    p = BotProtocol(limits=Limits(messages_per_second=1e6, message_burst=1e6))
    p.receive_text(start_msg(), 0.0)
    fatal = None
    for i in range(400):  # 8 s of audio within 0.4 s
        for e in p.receive_text(media_msg(FRAME), i * 0.001):
            if isinstance(e, Violation):
                fatal = e
        if fatal:
            break
    assert fatal is not None and fatal.kind == "flood" and fatal.fatal


def test_no_start_within_the_timeout_closes() -> None:
    p = BotProtocol(limits=Limits(start_timeout=5.0))
    p.connection_made(10.0)
    assert p.next_deadline() == 15.0
    assert p.tick(14.9) == []
    [v] = p.tick(15.0)
    assert isinstance(v, Violation) and v.kind == "no_start" and v.fatal
    [close] = p.data_to_send()
    assert isinstance(close, Close) and close.code == 1008


def test_wrong_media_format_closes_clearly() -> None:
    p = BotProtocol()
    msg = TWILIO.encode_start(1, SID, "CA1", "AC1", {})
    msg["start"]["mediaFormat"]["encoding"] = "audio/l16"
    events = p.receive_text(json.dumps(msg), 0)
    assert isinstance(events[0], Started)
    assert isinstance(events[1], Violation) and events[1].kind == "unsupported_format"


def test_caller_role_round_trip_with_the_bot_role() -> None:
    caller, bot = CallerProtocol(stream_sid=SID), BotProtocol()
    caller.send_connected()
    caller.send_start({"k": "v"})
    caller.send_media(FRAME, timestamp_ms=0)
    caller.send_dtmf("#")
    events = [
        e for m in caller.data_to_send() if isinstance(m, str) for e in bot.receive_text(m, 0.0)
    ]
    assert [type(e) for e in events] == [Connected, Started, MediaReceived, DtmfReceived]
    bot.send_media(FRAME)
    bot.send_mark("a")
    bot.send_clear()
    back = [
        e for m in bot.data_to_send() if isinstance(m, str) for e in caller.receive_text(m, 0.0)
    ]
    assert back == [BotMedia(FRAME), BotMark("a"), BotClear()]


def test_a_second_dialect_is_a_small_addition() -> None:
    snake = Dialect(
        name="snake",
        stream_id="stream_id",
        call_id="call_sid",
        account_id="account_sid",
        sequence="sequence_number",
        custom_parameters="custom_parameters",
        media_format="media_format",
        sample_rate="sample_rate",
    )
    caller, bot = CallerProtocol(dialect=snake, stream_sid="S1"), BotProtocol(dialect=snake)
    caller.send_start({"a": "b"})
    caller.send_media(FRAME, 0)
    [raw_start, raw_media] = caller.data_to_send()
    assert isinstance(raw_start, str) and '"stream_id":"S1"' in raw_start
    [ev] = bot.receive_text(raw_start, 0)
    assert isinstance(ev, Started) and ev.info.custom_parameters == {"a": "b"}
    assert isinstance(raw_media, str)
    assert bot.receive_text(raw_media, 0) == [MediaReceived(FRAME, 1, 0)]


# ---- the pacer ---------------------------------------------------------------------------------


def frames(actions: list[Any]) -> list[bytes]:
    return [a.ulaw for a in actions if isinstance(a, SendFrame)]


def marks(actions: list[Any]) -> list[str]:
    return [a.name for a in actions if isinstance(a, SendMark)]


def test_pacer_sends_whole_frames_at_real_time_with_a_bounded_lead() -> None:
    pacer = OutboundPacer(lead=0.1, mark_every=5)
    pacer.push(b"\x10" * 160 * 50, now=0.0)  # 1 s of audio
    first = pacer.tick(0.0)
    assert len(frames(first)) == 5  # the lead only: no burst
    sent_at = [0.0] * 5
    t = 0.0
    while pacer.queued_bytes:
        deadline = pacer.next_deadline()
        assert deadline is not None and deadline > t - 1e-9
        t = deadline
        got = frames(pacer.tick(t))
        assert all(len(f) == 160 for f in got)
        sent_at += [t] * len(got)
    assert len(sent_at) == 50
    # frame k goes out no earlier than k*20 ms - lead
    assert all(at >= k * FRAME_SECONDS - 0.1 - 1e-9 for k, at in enumerate(sent_at))
    assert sent_at[-1] == pytest.approx(49 * FRAME_SECONDS - 0.08)


def test_pacer_pads_the_last_frame_with_ulaw_silence_only_when_due() -> None:
    pacer = OutboundPacer(partial_hold=0.04)
    pacer.push(b"\x10" * 200, now=0.0)
    assert len(frames(pacer.tick(0.0))) == 1  # the whole frame; the 40-byte tail waits
    assert pacer.queued_bytes == 40
    pacer.finish()
    [tail] = frames(pacer.tick(0.001))
    assert tail == b"\x10" * 40 + b"\xff" * 120
    assert pacer.position == 200  # padding never counts as heard


def test_pacer_tail_goes_out_before_the_far_end_runs_dry() -> None:
    pacer = OutboundPacer(lead=0.1, partial_hold=0.04)
    pacer.push(b"\x10" * 170, now=0.0)
    pacer.tick(0.0)
    deadline = pacer.next_deadline()
    assert deadline is not None and deadline == pytest.approx(0.04)
    assert frames(pacer.tick(0.039)) == []
    assert len(frames(pacer.tick(deadline))) == 1


def test_heard_comes_from_echoed_marks_and_stale_marks_never_count() -> None:
    pacer = OutboundPacer(lead=0.1, mark_every=5)
    pacer.mark()
    pacer.push(b"\x10" * 160 * 10, now=0.0)
    names = marks(pacer.tick(0.0))
    assert names == ["vx:0:800"]
    assert pacer.samples_played == 0  # sent is not heard
    assert pacer.mark_echoed("vx:0:800")
    assert pacer.samples_played == 800
    names = marks(pacer.tick(0.1))
    assert names == ["vx:0:1600"]
    dropped = pacer.clear()
    assert dropped == 800  # sent but unconfirmed
    # Twilio echoes the mark of the audio it dropped: not heard
    assert not pacer.mark_echoed("vx:0:1600")
    assert pacer.samples_played == 800 and pacer.stale_marks == 1
    pacer.push(b"\x10" * 160, now=1.0)
    assert marks(pacer.tick(1.0)) == ["vx:1:960"]
    assert pacer.mark_echoed("vx:1:960")
    assert pacer.samples_played == 960
    assert not pacer.mark_echoed("garbage") and not pacer.mark_echoed("vx:1:99999")


@pytest.mark.anyio
async def test_a_producer_cancelled_as_it_wakes_queues_nothing_after_the_clear() -> None:
    """A barge-in cancels the answer's player and clears the line in one step; if a mark echo
    woke the player (waiting for room) just before, it runs on once more: it must not queue
    audio the clear dropped (the far end would hear the cut answer go on)."""
    import anyio

    from plugins.twilio.call import TwilioOutput

    pacer = OutboundPacer()
    out = TwilioOutput(pacer, BotProtocol(), wake=lambda: None, max_queue_seconds=0.04)
    await out.play_ulaw(bytes(320))  # the queue is full: the next chunk waits for room
    player = anyio.CancelScope()

    async def play_the_answer() -> None:
        with player:
            await out.play_ulaw(b"\x01" * 160)

    async with anyio.create_task_group() as tg:
        tg.start_soon(play_the_answer)
        await anyio.sleep(0.01)
        out._notify()  # a mark echo wakes the player...
        player.cancel()  # ...as the barge-in cancels it
        out.clear()  # and clears the line
    assert pacer.queued_bytes == 0, "nothing of the cut answer queued after the clear"


def test_mark_counts_only_audio_queued_after_it() -> None:
    pacer = OutboundPacer()
    pacer.push(b"\x10" * 320, now=0.0)
    pacer.tick(0.0)
    pacer.mark()  # a new turn starts while the old audio still plays
    pacer.push(b"\x10" * 160, now=0.0)
    pacer.tick(0.0)
    assert pacer.mark_echoed("vx:0:320")
    assert pacer.samples_played == 0
    assert pacer.mark_echoed("vx:0:480")
    assert pacer.samples_played == 160


def test_pause_holds_audio_and_resume_sends_it() -> None:
    pacer = OutboundPacer()
    pacer.push(b"\x10" * 1600, now=0.0)
    pacer.pause()
    assert pacer.tick(0.0) == [] and pacer.next_deadline() is None
    pacer.resume()
    assert len(frames(pacer.tick(0.0))) == 5


# ---- security ----------------------------------------------------------------------------------


# Twilio's published request-validation example
EXAMPLE_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
EXAMPLE_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
EXAMPLE_SIGNATURE = "GvWf1cFY/Q7PnoempGyD5oXAezc="


def test_twilio_published_signature_vector() -> None:
    token = AuthToken("12345")
    params = list(EXAMPLE_PARAMS.items())
    url = EXAMPLE_URL
    assert compute_signature(token, url, params) == EXAMPLE_SIGNATURE
    assert validate_signature(token, url, params, EXAMPLE_SIGNATURE)
    # the same URL with the default port spelled out validates too (proxies add it)
    assert validate_signature(
        token, "https://mycompany.com:443/myapp.php?foo=1&bar=2", params, EXAMPLE_SIGNATURE
    )


# the JSON-body example of Twilio's libraries: the URL carries the body's SHA-256
EXAMPLE_JSON = b'{"property": "value", "boolean": true}'
EXAMPLE_JSON_URL = (EXAMPLE_URL + "&bodySHA256="
                    "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620")
EXAMPLE_JSON_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="


def test_twilio_json_body_signature_vector_and_tampering() -> None:
    token = AuthToken("12345")
    assert compute_signature(token, EXAMPLE_JSON_URL) == EXAMPLE_JSON_SIGNATURE
    assert validate_body_signature(token, EXAMPLE_JSON_URL, EXAMPLE_JSON, EXAMPLE_JSON_SIGNATURE)
    # another body under the signed URL; a URL without the hash; the hash given twice
    assert not validate_body_signature(token, EXAMPLE_JSON_URL, EXAMPLE_JSON + b" ",
                                       EXAMPLE_JSON_SIGNATURE)
    assert not validate_body_signature(token, EXAMPLE_URL, EXAMPLE_JSON,
                                       compute_signature(token, EXAMPLE_URL))
    twice = EXAMPLE_JSON_URL + "&bodySHA256=00"
    assert not validate_body_signature(token, twice, EXAMPLE_JSON,
                                       compute_signature(token, twice))
    assert not validate_body_signature(token, EXAMPLE_JSON_URL, EXAMPLE_JSON, None)


def test_own_signature_vector_and_tampering() -> None:
    token = AuthToken("s3cret")
    url = "https://bot.example/twilio/voice"
    params = [("From", "+15550100"), ("CallSid", "CA9"), ("To", "+15550199")]
    sig = compute_signature(token, url, params)
    # by hand: URL + params sorted by name, name immediately followed by value
    import hashlib
    import hmac

    data = url + "CallSidCA9From+15550100To+15550199"
    assert (
        sig == base64.b64encode(hmac.new(b"s3cret", data.encode(), hashlib.sha1).digest()).decode()
    )
    assert validate_signature(token, url, params, sig)
    assert not validate_signature(token, url, [*params[:2], ("To", "+1999")], sig)
    assert not validate_signature(token, url + "?x=1", params, sig)
    assert not validate_signature(AuthToken("other"), url, params, sig)
    assert not validate_signature(token, url, params, None)


def test_auth_token_never_shows() -> None:
    token = AuthToken("super-secret-token")
    assert "super-secret" not in repr(token) and "super-secret" not in str(token)
    assert "super-secret" not in repr([token])


def test_stream_tokens_are_one_time_per_call_and_expire() -> None:
    tokens = StreamTokens(ttl=10.0, max_pending=3)
    t = tokens.issue("CA1", now=0.0)
    assert tokens.redeem(t, "CA2", now=1.0) == "stream token was issued for another call"
    t = tokens.issue("CA1", now=0.0)
    assert tokens.redeem(t, "CA1", now=1.0) is None
    assert tokens.redeem(t, "CA1", now=1.0) is not None  # spent
    old = tokens.issue("CA3", now=0.0)
    assert tokens.redeem(old, "CA3", now=10.5) is not None  # expired
    assert tokens.redeem(None, "CA3", now=0.0) is not None
    for i in range(10):
        tokens.issue(f"CA{i}", now=20.0)
    assert len(tokens) == 3  # bounded


def test_our_callers_next_question_waits_for_the_answer_to_the_last() -> None:
    """`voxloop call --say a.wav --say b.wav`: b goes once the bot has answered a and fallen
    silent, not straight after a (which would cut the answer off as a barge-in)."""
    from plugins.twilio.caller import CallResult, CallScript, Say, _ScriptState

    one_frame = bytes(320)
    state = _ScriptState(
        CallScript(
            steps=[Say(one_frame, after_bot_silence=0.2), Say(one_frame, after_bot_silence=0.2)]
        ),
        CallResult(),
    )
    t, first = 0.0, b""
    while not first and t < 1.0:  # the first goes after 0.2 s of a silent line
        t += FRAME_SECONDS
        first = state.next_frame(t, state.result)[0]
    assert first == one_frame
    for _ in range(20):  # 0.4 s of a silent bot: no answer yet, the second question waits
        t += FRAME_SECONDS
        state.bot_played(t, had_audio=False)
        assert state.next_frame(t, state.result)[0] == b""
    for _ in range(10):  # the bot answers for 0.2 s
        t += FRAME_SECONDS
        state.bot_played(t, had_audio=True)
        assert state.next_frame(t, state.result)[0] == b""
    said = b""
    for _ in range(15):  # then 0.3 s of silence: the second question goes
        t += FRAME_SECONDS
        state.bot_played(t, had_audio=False)
        said += state.next_frame(t, state.result)[0]
    assert said == one_frame
