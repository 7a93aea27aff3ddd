"""The page protocol and the tab's output as tables: messages in, events and messages out, no
sockets, no sleeps (plugins/web/protocol.py, plugins/web/tab.py's PageOutput accounting)."""

from __future__ import annotations

import json

import anyio
import pytest

from plugins.web.protocol import (
    Cleared,
    Close,
    Hello,
    Limits,
    MicAudio,
    PageProtocol,
    PlayoutReport,
    Violation,
)
from plugins.web.tab import PageOutput

FRAME48 = bytes(960 * 2)  # 20 ms at 48 kHz


def hello(rate: int = 48000, token: str | None = None, version: int = 1) -> str:
    return json.dumps({"type": "hello", "version": version, "sample_rate": rate, "token": token})


def sent(p: PageProtocol) -> list[object]:
    return [json.loads(m) if isinstance(m, str) else m for m in p.data_to_send()]


def test_hello_is_answered_with_ready_and_then_frames_flow() -> None:
    p = PageProtocol()
    (event,) = p.receive_text(hello(), 0.0)
    assert event == Hello(48000, None)
    assert sent(p) == [{"type": "ready", "version": 1, "sample_rate": 16000, "frame_ms": 20}]
    assert p.receive_binary(FRAME48, 0.02) == [MicAudio(FRAME48)]


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (FRAME48, "no_hello"),
        ('{"type": "played", "played": 0, "pos": 0, "end": null, "level": 0}', "no_hello"),
        ("not json at all", "not_json"),
        (hello(rate=44), "bad_hello"),
        (hello(version=7), "bad_hello"),
    ],
)
def test_a_page_must_start_with_a_valid_hello(first: str | bytes, kind: str) -> None:
    p = PageProtocol()
    events = p.receive_binary(first, 0.0) if isinstance(first, bytes) else p.receive_text(first, 0)
    (v,) = events
    assert isinstance(v, Violation) and v.kind == kind and v.fatal
    out = sent(p)
    assert out[0]["type"] == "error" and "the server got" in out[0]["message"]  # type: ignore[index]
    assert isinstance(out[-1], Close) and out[-1].code == 1008


def test_no_hello_in_time_closes() -> None:
    p = PageProtocol(Limits(hello_timeout=5.0))
    p.connection_made(10.0)
    assert p.next_deadline() == 15.0
    assert p.tick(14.9) == []
    (v,) = p.tick(15.0)
    assert isinstance(v, Violation) and v.kind == "no_hello" and v.fatal


def test_a_wrong_token_is_refused_and_the_right_one_accepted() -> None:
    p = PageProtocol(token="s3cret")
    (v,) = p.receive_text(hello(token="guess"), 0.0)
    assert isinstance(v, Violation) and v.kind == "refused" and v.fatal
    assert "s3cret" not in repr(p) and "s3cret" not in v.detail
    ok = PageProtocol(token="s3cret")
    (event,) = ok.receive_text(hello(token="s3cret"), 0.0)
    assert isinstance(event, Hello) and "s3cret" not in repr(event)


def test_wrong_sizes_text_where_audio_is_expected_and_unknown_types_are_dropped() -> None:
    p = PageProtocol()
    p.receive_text(hello(), 0.0)
    p.data_to_send()
    (v,) = p.receive_binary(bytes(1000), 0.0)
    assert isinstance(v, Violation) and v.kind == "frame_size" and not v.fatal
    assert "expected 1920" in v.detail
    (v,) = p.receive_text("AAAA garbage", 0.0)
    assert isinstance(v, Violation) and v.kind == "not_json" and not v.fatal
    assert "text where audio was expected" in v.detail
    (v,) = p.receive_text('{"type": "dance"}', 0.0)
    assert isinstance(v, Violation) and v.kind == "unknown_type"
    (v,) = p.receive_text('{"type": "played", "played": -1, "pos": 0, "level": 0}', 0.0)
    assert isinstance(v, Violation) and v.kind == "malformed"
    errors = [m for m in sent(p) if isinstance(m, dict)]
    assert [m["kind"] for m in errors] == ["frame_size", "not_json", "unknown_type", "malformed"]
    assert p.closed is None
    assert p.receive_binary(FRAME48, 0.1) == [MicAudio(FRAME48)], "the tab goes on"


def test_the_same_fault_repeated_closes_the_tab_with_a_reason() -> None:
    p = PageProtocol(Limits(max_violations=3))
    p.receive_text(hello(), 0.0)
    kinds = [p.receive_binary(b"xx", 0.0)[0] for _ in range(4)]
    assert [v.fatal for v in kinds if isinstance(v, Violation)] == [False, False, False, True]
    assert p.closed is not None and p.closed.code == 1008 and "frame_size" in p.closed.reason
    assert p.receive_binary(FRAME48, 1.0) == [], "nothing after the close"


def test_a_flood_of_frames_is_dropped_real_time_passes() -> None:
    p = PageProtocol(Limits(flood_burst_frames=10))
    p.receive_text(hello(), 0.0)
    burst = [p.receive_binary(FRAME48, 0.0)[0] for _ in range(15)]
    assert sum(isinstance(e, MicAudio) for e in burst) == 10
    assert sum(isinstance(e, Violation) and e.kind == "flood" for e in burst) == 5
    steady = [p.receive_binary(FRAME48, 1.0 + i * 0.02)[0] for i in range(200)]
    assert all(isinstance(e, MicAudio) for e in steady), "real time is never a flood"


def test_oversized_messages_close_with_1009() -> None:
    p = PageProtocol()
    p.receive_text(hello(), 0.0)
    (v,) = p.receive_binary(bytes(100_000), 0.0)
    assert isinstance(v, Violation) and v.kind == "too_large"
    assert p.closed == Close(1009, p.closed.reason if p.closed else "")


def test_reports_and_clear_acknowledgements_parse() -> None:
    p = PageProtocol()
    p.receive_text(hello(), 0.0)
    report = {"type": "played", "played": 320, "pos": 320, "end": 1.5, "level": 900.5, "wall": 1.0}
    assert p.receive_text(json.dumps(report), 0.0) == [PlayoutReport(320, 320, 1.5, 900.5, 1.0)]
    ack = p.receive_text('{"type": "cleared", "id": 2, "played": 320}', 0.0)
    assert ack == [Cleared(2, 320)]


# ---- PageOutput: what was heard comes from the page's reports ---------------------------------


def output() -> tuple[PageOutput, PageProtocol]:
    p = PageProtocol()
    p.receive_text(hello(), 0.0)
    p.data_to_send()
    return PageOutput(p, lambda: None), p


def report(played: int, pos: int, end: float | None, level: float = 500.0) -> PlayoutReport:
    return PlayoutReport(played, pos, end, level, None)


@pytest.mark.anyio
async def test_heard_counts_only_what_the_page_reported_played() -> None:
    out, p = output()
    clock = [10.0]
    out.clock = lambda: clock[0]
    out.mark()
    await out.play(bytes(16000 * 2))  # one second, sent in 100 ms pieces
    messages = p.data_to_send()
    assert json.loads(messages[0])["type"] == "turn"  # type: ignore[arg-type]
    assert sum(len(m) for m in messages if isinstance(m, bytes)) == 32000
    assert out.samples_played == 0 and out.first_played_at is None, "sent is not heard"
    out._on_report(report(played=4000, pos=4000, end=10.5))
    assert out.samples_played == 4000
    assert out.first_played_at == pytest.approx(10.5 - 0.25)
    assert out.last_played_end == 10.5


@pytest.mark.anyio
async def test_after_a_clear_the_next_turn_counts_from_the_acknowledgement() -> None:
    out, _ = output()
    out.clock = lambda: 20.0
    out.mark()
    await out.play(bytes(16000 * 2))
    out._on_report(report(played=3000, pos=3000, end=19.9))
    assert out.clear() == 16000 - 3000
    out.mark()  # the next turn starts before the page acknowledged the clear
    out._on_report(report(played=3200, pos=3200, end=20.0))  # old audio, still in flight
    assert out.samples_played == 0, "old audio played before the clear is not this turn's"
    out._on_cleared(Cleared(1, 3200))
    await out.play(bytes(3200))
    out._on_report(report(played=3200 + 800, pos=16000 + 800, end=20.3))
    assert out.samples_played == 800
    assert out.first_played_at == pytest.approx(20.3 - 0.05)


@pytest.mark.anyio
async def test_drain_returns_when_played_and_is_bounded_when_reports_stop() -> None:
    out, p = output()
    out.mark()
    await out.play(bytes(1600 * 2))  # 100 ms
    out._on_report(report(played=1600, pos=1600, end=1.0))
    with anyio.fail_after(1):
        await out.drain()
    assert any('"flush"' in m for m in p.data_to_send() if isinstance(m, str))
    await out.play(bytes(1600 * 2))
    out._report_at = anyio.current_time()
    started = anyio.current_time()
    with anyio.fail_after(3):
        await out.drain()  # no report ever comes: gives up after the grace
    assert 0.9 <= anyio.current_time() - started <= 2.0


@pytest.mark.anyio
async def test_play_waits_while_the_page_is_a_second_behind() -> None:
    out, _ = output()
    out.mark()
    await out.play(bytes(16000 * 2))
    with anyio.move_on_after(0.2) as scope:
        await out.play(bytes(3200))
    assert scope.cancelled_caught, "backpressure: nothing more until the page catches up"
    out._on_report(report(played=8000, pos=8000, end=0.5))
    with anyio.fail_after(1):
        await out.play(bytes(3200))


@pytest.mark.anyio
async def test_pause_resume_and_level_follow_the_page() -> None:
    out, p = output()
    out.clock = lambda: 3.0
    assert out.pause() == 3.0
    out.resume()
    types = [json.loads(m)["type"] for m in p.data_to_send() if isinstance(m, str)]
    assert types == ["pause", "resume"]
    assert out.level == 0.0, "no report yet: level unknown"
    out._on_report(report(played=0, pos=0, end=None, level=1200.0))
    assert out.level == 1200.0
    playing = PlayoutReport(1600, 1600, 3.0, 900.0, None, latency=0.04)
    out._on_report(playing)
    out.resume()
    assert out.pause() == pytest.approx(3.04), "what the worklet rendered still sounds"


def test_a_flood_of_text_messages_is_dropped() -> None:
    p = PageProtocol(Limits(text_burst=20, text_per_second=100))
    p.receive_text(hello(), 0.0)
    ping = '{"type": "played", "played": 0, "pos": 0, "end": null, "level": 0}'
    events = [p.receive_text(ping, 0.0)[0] for _ in range(30)]
    assert sum(isinstance(e, PlayoutReport) for e in events) == 19  # the hello took one
    assert all(isinstance(e, Violation) and e.kind == "flood" for e in events[19:])
    steady = [p.receive_text(ping, 1.0 + i * 0.02)[0] for i in range(100)]
    assert all(isinstance(e, PlayoutReport) for e in steady), "a report per frame is fine"
