"""Phone calls end to end over real loopback sockets: our caller against our server.

The server is the real ASGI app on uvicorn; the bot is `ToneBot` (tones, barge-in, DTMF), a
fake call handler that needs no engines. Each call lasts about a second of real time.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent.audio import AudioFrame
from plugins.twilio.call import CallRecord, CallSettings, TwilioCall
from plugins.twilio.caller import (
    CallFailed,
    CallResult,
    CallScript,
    Press,
    Say,
    dial,
    place_call,
    plain_ws_on_loopback,
    stream_call,
)
from plugins.twilio.dialect import TWILIO
from plugins.twilio.handlers import ToneBot, echo_handler, tone
from plugins.twilio.protocol import Limits
from plugins.twilio.security import AuthToken, compute_signature
from plugins.twilio.server import PhoneApp, PhoneConfig, running_phone_server

pytestmark = pytest.mark.anyio

SPEECH = tone(0.3, hz=300.0, level=0.5)  # the "caller's voice": loud enough to barge in


@asynccontextmanager
async def phone(bot: object, **config: object) -> AsyncIterator[tuple[PhoneApp, str]]:
    app = PhoneApp(bot, PhoneConfig(**config))  # type: ignore[arg-type]
    async with running_phone_server(app) as url:
        yield app, url


def finished(app: PhoneApp, n: int = 1) -> list[CallRecord]:
    return list(app.finished)[-n:]


async def wait_finished(app: PhoneApp, n: int) -> None:
    with anyio.fail_after(5):
        while len(app.finished) < n:  # noqa: ASYNC110 - test polling the server's record
            await anyio.sleep(0.02)


async def test_a_call_is_answered_and_heard_comes_from_echoed_marks() -> None:
    bot = ToneBot(greeting_s=0.5)
    async with phone(bot) as (app, url):
        result = await place_call(url, CallScript(hang_up_after_silence=0.3))
        await wait_finished(app, 1)
    assert result.media_in == 25  # 0.5 s in whole 20 ms frames, nothing more
    assert result.hung_up_by == "caller"
    [log] = bot.calls
    assert log.answers == 1
    assert log.heard_per_answer == [4000]  # every sample, confirmed by the last echoed mark
    assert log.custom_parameters == {"From": "+15550100", "To": "+15550199"}
    # frames arrive paced: 25 frames over ~0.4 s after a 100 ms lead, never a burst
    times = result.media_times
    assert times[-1] - times[0] > 0.35
    assert max(b - a for a, b in itertools.pairwise(times[5:])) < 0.1
    [rec] = finished(app)
    assert rec.end_reason == "caller hung up (stop)"


@pytest.mark.parametrize("echo_on_clear", [True, False], ids=["twilio-echoes", "sim-drops"])
async def test_barge_in_clears_at_once_and_post_clear_marks_never_count(
    echo_on_clear: bool,
) -> None:
    bot = ToneBot(greeting_s=3.0, answer_s=0.4, end_of_turn_s=0.2)
    script = CallScript(steps=[Say(SPEECH, after_bot_audio=0.5)], hang_up_after_silence=0.3,
                        echo_marks_on_clear=echo_on_clear)
    # a mark after every frame, so the handset holds several when the clear arrives
    async with phone(bot, call=CallSettings(mark_every=1)) as (app, url):
        result = await place_call(url, script)
        await wait_finished(app, 1)
    [log] = bot.calls
    assert result.clears == 1 and log.barge_ins == 1
    assert result.barge_in_reactions[0] < 0.2  # speech onset -> clear
    # no media of the cleared greeting follows the clear: the next audio is the answer,
    # after the caller stopped talking (0.3 s) and the bot's end of turn (0.2 s)
    clear_at = next(t for t, what in result.timeline if what == "clear")
    after = [t for t in result.media_times if t > clear_at]
    assert after and after[0] - clear_at > 0.3
    # heard at barge-in: what the handset had played, less at most a mark interval + round trip
    played = result.played_at_clear[0]
    heard = log.heard_at_barge_in[0]
    assert played - 1600 <= heard <= played
    # the answer after the clear counts exactly: stale marks did not inflate it
    assert log.heard_per_answer == [3200]
    [rec] = finished(app)
    if echo_on_clear:  # the marks of the dropped audio came back after the clear: ignored
        assert rec.stale_marks >= 1
    assert result.media_in < 0.5 * 50 + 10 + 20 + 5  # greeting cut short: not 3 s of frames


async def test_dtmf_arrives_as_digits_and_bot_can_hang_up() -> None:
    bot = ToneBot(greeting_s=0.3, hang_up_after_answers=1)
    script = CallScript(steps=[Press("5", at=0.05), Press("#")], hang_up_after_silence=5.0)
    async with phone(bot) as (app, url):
        result = await place_call(url, script)
        await wait_finished(app, 1)
    [log] = bot.calls
    assert log.dtmf == "5#"
    assert result.hung_up_by == "bot" and result.close_code == 1000
    [rec] = finished(app)
    assert rec.dtmf == "5#" and rec.end_reason == "done talking"


async def test_echo_handler_plays_the_caller_back() -> None:
    async with phone(echo_handler) as (_app, url):
        # the echo of line silence is audio too, so the caller hangs up on time, not on silence
        result = await place_call(url, CallScript(steps=[Say(SPEECH, at=0.1)], max_seconds=0.8))
    # the caller's frames came back, paced, the speech among them
    assert 30 <= result.media_in <= 41
    bot = np.frombuffer(result.bot_pcm, dtype="<i2").astype(float)
    assert np.sqrt(np.mean(bot[1600:4400] ** 2)) > 2000


async def test_four_concurrent_calls_are_independent() -> None:
    bot = ToneBot(greeting_s=0.4, end_of_turn_s=0.2, answer_s=0.3)
    scripts = [CallScript(steps=[Say(SPEECH, after_bot_silence=0.1)],
                          hang_up_after_silence=0.4, call_sid=f"CA{i:032d}") for i in range(4)]
    results: list[CallResult] = []
    async with phone(bot) as (app, url):
        async def one(i: int) -> None:
            results.append(await place_call(url, scripts[i]))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(one, i)
        await wait_finished(app, 4)
    assert sorted(log.call_sid for log in bot.calls) == [f"CA{i:032d}" for i in range(4)]
    for r in results:
        assert r.media_in == 20 + 15  # greeting + answer
        assert len(r.response_latencies) == 1
        assert r.response_latencies[0] < 0.6
    assert all(log.answers == 2 for log in bot.calls)


# ---- bad input on the media socket ---------------------------------------------------------


async def raw_stream(url: str, frames: list[str | bytes], then_stop: bool = True,
                     params: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Open the media socket, send Twilio's start and `frames`, then stop; the close seen."""
    target = await dial(url, CallScript())
    async with connect(plain_ws_on_loopback(target.url), max_size=1 << 22) as ws:
        sid = "MZ" + "b" * 32
        await ws.send(json.dumps(TWILIO.encode_connected()))
        await ws.send(json.dumps(TWILIO.encode_start(
            1, sid, "CA" + "9" * 32, "AC1", params if params is not None else target.parameters)))
        for frame in frames:
            await ws.send(frame)
        if then_stop:
            await ws.send(json.dumps(TWILIO.encode_stop(9, sid, "CA1", "AC1")))
        with anyio.fail_after(5), contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
        return ws.close_code, ws.close_reason or ""


def media(payload_b64: str) -> str:
    return json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": "MZ" + "b" * 32,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                 "payload": payload_b64}})


async def test_bad_input_is_logged_once_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bot = ToneBot(greeting_s=0.2)
    bad: list[str | bytes] = [
        "not json", "not json", b"\x00\x01binary", "[1]", '{"event":"party"}',
        media("@@@"), media("@@@"), media(""), media("f39/" * 41),  # 123 bytes: odd length
    ]
    with caplog.at_level(logging.WARNING, logger="voxloop.twilio"):
        async with phone(bot) as (app, url):
            code, _ = await raw_stream(url, bad)
            await wait_finished(app, 1)
    [rec] = finished(app)
    assert rec.end_reason == "caller hung up (stop)"
    assert rec.violations == {
        "not_json": 2, "binary_frame": 1, "not_object": 1, "unknown_event": 1,
        "bad_base64": 2, "empty_payload": 1, "frame_length": 1}
    assert rec.frames_in == 1  # the odd-length frame was heard
    messages = [r.getMessage() for r in caplog.records
                if "bad media-stream input" in r.getMessage()]
    assert len(messages) == 7  # one line per cause, not per frame
    assert any("(not_json)" in m and "ignored" in m for m in messages)
    assert code == 1000


@pytest.mark.parametrize(("frames", "code", "kind"), [
    (["x" * 100_000], 1009, "too_large"),
    ([media("f39/" * 40)] * 400, 1008, "flood"),  # 8 s of audio at once
], ids=["huge-frame", "flood"])
async def test_fatal_input_closes_only_that_call_with_a_reason(
    frames: list[str | bytes], code: int, kind: str,
) -> None:
    bot = ToneBot(greeting_s=1.0)
    async with phone(bot) as (app, url):
        good = CallScript(hang_up_after_silence=0.3)
        async with anyio.create_task_group() as tg:
            results: list[CallResult] = []

            async def good_call() -> None:
                results.append(await place_call(url, good))

            tg.start_soon(good_call)
            got = await raw_stream(url, frames, then_stop=False)
        await wait_finished(app, 2)
    assert got[0] == code and kind in got[1]
    assert results[0].media_in == 50 and results[0].hung_up_by == "caller"


async def test_media_before_start_and_no_start_timeout() -> None:
    settings = CallSettings(limits=Limits(start_timeout=0.3))
    async with phone(ToneBot(), call=settings) as (app, url):
        target = await dial(url, CallScript())
        async with connect(plain_ws_on_loopback(target.url)) as ws:
            await ws.send(media("f39/" * 40))
            with anyio.fail_after(3), contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass
            assert ws.close_code == 1008 and "no_start" in (ws.close_reason or "")
        await wait_finished(app, 1)
    [rec] = finished(app)
    assert rec.violations == {"media_before_start": 1, "no_start": 1}


async def test_the_media_socket_declines_compression() -> None:
    # Twilio does not compress; a caller offering permessage-deflate gets plain frames, so no
    # zlib pass per 20 ms frame on either side.
    async with phone(ToneBot()) as (_app, url):
        target = await dial(url, CallScript())
        async with connect(plain_ws_on_loopback(target.url)) as ws:
            offered = ws.request.headers.get("Sec-WebSocket-Extensions") if ws.request else None
            assert offered and "permessage-deflate" in offered
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


# ---- webhook, security, drain ---------------------------------------------------------------


def http(method: str, url: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_twiml_stream_url_from_host_header_or_public_url() -> None:
    async with phone(ToneBot()) as (_app, url):
        status, xml = await anyio.to_thread.run_sync(
            lambda: http("GET", url + "/twilio/voice?From=%2B1555"))
        host = url.removeprefix("http://")
        assert status == 200
        assert f'<Stream url="wss://{host}/twilio/media">' in xml
        assert '<Parameter name="From" value="+1555"/>' in xml
        assert xml.find("<Connect>") < xml.find("<Stream") < xml.find("</Connect>")
    async with phone(ToneBot(), public_url="https://bot.example/") as (_app, url):
        _, xml = await anyio.to_thread.run_sync(
            lambda: http("POST", url + "/twilio/voice", b"From=%2B1"))
        assert '<Stream url="wss://bot.example/twilio/media">' in xml


async def test_with_an_auth_token_unsigned_webhooks_and_stray_streams_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "tok-" + "z" * 28
    token = AuthToken(secret)
    bot = ToneBot(greeting_s=0.2)
    with caplog.at_level(logging.DEBUG, logger="voxloop.twilio"):
        async with phone(bot, auth_token=token) as (app, url):
            # unsigned and wrongly signed webhooks: 403
            with pytest.raises(CallFailed, match="403"):
                await place_call(url, CallScript())
            with pytest.raises(CallFailed, match="403"):
                await place_call(url, CallScript(), auth_token=AuthToken("wrong"))
            # a signed call goes through and carries a one-time stream token
            script = CallScript(hang_up_after_silence=0.2)
            target = await dial(url, script, token)
            assert "voxloop_stream_token" in target.parameters
            ok = await stream_call(plain_ws_on_loopback(target.url), target.parameters, script)
            assert ok.media_in == 10
            # the token was spent: replaying it, or a stream with none, is closed 1008
            again = await stream_call(plain_ws_on_loopback(target.url), target.parameters,
                                      script)
            stray = await stream_call(plain_ws_on_loopback(target.url), {}, script)
            await wait_finished(app, 3)
    assert again.close_code == 1008 and "stream token" in again.close_reason
    assert stray.close_code == 1008 and "webhook" in stray.close_reason
    assert len(bot.calls) == 1 and "voxloop_stream_token" not in bot.calls[0].custom_parameters
    assert secret not in caplog.text and secret not in repr(app.config)


async def test_a_json_webhook_is_validated_by_its_body_hash() -> None:
    token = AuthToken("tok-" + "j" * 28)
    body = json.dumps({"CallSid": "CA7", "From": "+1555", "To": "+1666"}).encode()
    digest = hashlib.sha256(body).hexdigest()
    async with phone(ToneBot(), auth_token=token) as (_app, url):
        hook = f"{url}/twilio/voice?bodySHA256={digest}"
        signed = {"Content-Type": "application/json",
                  "X-Twilio-Signature": compute_signature(token, hook)}

        def post(data: bytes, headers: dict[str, str]) -> tuple[int, str]:
            return http("POST", hook, data, headers)

        status, xml = await anyio.to_thread.run_sync(post, body, signed)
        assert status == 200 and '<Parameter name="From" value="+1555"/>' in xml
        assert "voxloop_stream_token" in xml
        tampered = body.replace(b"+1555", b"+1999")
        status, text = await anyio.to_thread.run_sync(post, tampered, signed)
        assert status == 403 and "X-Twilio-Signature" in text
        status, text = await anyio.to_thread.run_sync(post, b"[1, 2]", signed)
        assert status == 400 and "JSON object" in text


async def test_drain_finishes_live_calls_and_refuses_new_ones() -> None:
    bot = ToneBot(greeting_s=0.8)
    async with phone(bot) as (app, url):
        status, body = await anyio.to_thread.run_sync(lambda: http("GET", url + "/healthz"))
        assert (status, json.loads(body)) == (200, {"status": "ok", "calls": 0})
        results: list[CallResult] = []
        async with anyio.create_task_group() as tg:
            async def live() -> None:
                results.append(await place_call(url, CallScript(hang_up_after_silence=0.2)))
            tg.start_soon(live)
            with anyio.fail_after(3):
                while not app.live:  # noqa: ASYNC110 - waiting for the call to be up
                    await anyio.sleep(0.02)
            app.start_draining()
            status, body = await anyio.to_thread.run_sync(lambda: http("GET", url + "/healthz"))
            assert (status, json.loads(body)) == (503, {"status": "draining", "calls": 1})
            status, body = await anyio.to_thread.run_sync(
                lambda: http("POST", url + "/twilio/voice", b"From=%2B1"))
            assert status == 503 and "draining" in body
            late = await stream_call(plain_ws_on_loopback(url.replace("http", "ws")
                                                          + "/twilio/media"), {}, CallScript())
            assert late.close_code == 1013 and "draining" in late.close_reason
            with anyio.fail_after(5):
                await app.wait_idle()
    assert results[0].media_in == 40 and results[0].hung_up_by == "caller"


REPO = str(Path(__file__).resolve().parents[1])
SERVER_PROCESS = """
import sys
from plugins.twilio import PhoneConfig, ToneBot, serve_forever
app = serve_forever(ToneBot(greeting_s=1.0), PhoneConfig(), port=int(sys.argv[1]))
print("finished", len(app.finished), app.finished[-1].end_reason, flush=True)
"""


async def test_sigterm_drains_a_live_call_then_the_server_exits() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
    env["PYTHONPATH"] = REPO
    async with await anyio.open_process(
        [sys.executable, "-c", SERVER_PROCESS, str(port)], env=env
    ) as proc:
        try:
            with anyio.fail_after(20):
                while True:
                    try:
                        status, _ = await anyio.to_thread.run_sync(
                            lambda: http("GET", url + "/healthz"))
                        if status == 200:
                            break
                    except OSError:
                        pass
                    await anyio.sleep(0.1)
            results: list[CallResult] = []
            async with anyio.create_task_group() as tg:
                async def live() -> None:
                    results.append(await place_call(url, CallScript(hang_up_after_silence=0.2)))
                tg.start_soon(live)
                await anyio.sleep(0.4)
                proc.send_signal(signal.SIGTERM)
                await anyio.sleep(0.1)
                status, body = await anyio.to_thread.run_sync(
                    lambda: http("GET", url + "/healthz"))
                assert status == 503 and json.loads(body)["status"] == "draining"
            with anyio.fail_after(10):
                assert await proc.wait() == 0
            assert proc.stdout is not None
            out = (await proc.stdout.receive()).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
    assert results[0].media_in == 50 and results[0].hung_up_by == "caller"
    assert out.strip() == "finished 1 caller hung up (stop)"


async def test_frames_delivered_to_a_sink_arrive_in_order_and_a_failing_sink_is_raised() -> None:
    """`TwilioCall.deliver_frames` hands each caller frame to the sink as it arrives (what a
    conversation uses: no queue, no task switch), frames queued before it first; an exception
    from the sink stops the delivery and is raised there, and the call goes on."""
    got: list[bytes] = []
    raised: list[str] = []
    after: list[int] = []

    async def bot(call: TwilioCall) -> None:
        await anyio.sleep(0.2)  # ~10 frames queue for mic_frames meanwhile

        def sink(frame: AudioFrame) -> None:
            got.append(frame.pcm)
            if len(got) == 30:
                raise ValueError("sink failed on frame 30")

        try:
            await call.deliver_frames(sink)
        except ValueError as err:
            raised.append(str(err))
        n = 0
        async for _frame in call.mic_frames():  # the queue takes over again
            n += 1
        after.append(n)

    voice = tone(1.2, hz=300.0, level=0.5)
    async with phone(bot) as (app, url):
        result = await place_call(url, CallScript(steps=[Say(voice, at=0.0)], max_seconds=1.4))
        await wait_finished(app, 1)
    assert raised == ["sink failed on frame 30"]
    assert len(got) == 30
    # the first 30 frames the caller sent, in order (the caller keeps them as they decode)
    heard = b"".join(got)
    assert heard == result.caller_pcm[: len(heard)]
    assert after and after[0] > 10  # mic_frames got the frames after the failure


async def test_delivery_ends_when_the_caller_hangs_up() -> None:
    counts: list[int] = []

    async def bot(call: TwilioCall) -> None:
        n = [0]

        def sink(frame: AudioFrame) -> None:
            n[0] += 1

        with anyio.fail_after(5):
            await call.deliver_frames(sink)
        counts.append(n[0])

    async with phone(bot) as (app, url):
        result = await place_call(url, CallScript(max_seconds=0.5))
        await wait_finished(app, 1)
    sent = len(result.caller_pcm) // 320  # 20 ms frames at 8 kHz
    assert sent > 15 and counts and sent - 2 <= counts[0] <= sent
