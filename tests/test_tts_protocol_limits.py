"""The protocol's new rules, sans-I/O: bounded pieces, the closed-context rule, the cap on
unspoken text, a lost client, hostile strings, the client's timers. Messages in, events out,
time passed in; no sockets, no sleeps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import errors
from plugins.elevenlabs.protocol import (
    MAX_PIECE_CHARS,
    AudioTimedOut,
    ClientProtocol,
    ContextEnded,
    ProtocolError,
    ServerEvent,
    ServerProtocol,
    StreamParams,
    Synthesize,
    TextBufferFullError,
)
from plugins.elevenlabs.textbuffer import bounded_pieces, char_cost

MULTI = "/v1/text-to-speech/v/multi-stream-input"
SINGLE = "/v1/text-to-speech/v/stream-input"


def server(multi: bool = True, **kwargs: Any) -> ServerProtocol:
    return ServerProtocol(
        StreamParams.from_path_and_query(MULTI if multi else SINGLE, {}), 0.0, **kwargs
    )


def send(proto: ServerProtocol, obj: dict[str, Any] | str, now: float = 1.0) -> list[ServerEvent]:
    return proto.receive(obj if isinstance(obj, str) else json.dumps(obj), now)


def pieces(events: list[ServerEvent]) -> list[Synthesize]:
    return [e for e in events if isinstance(e, Synthesize)]


def frames(proto: ServerProtocol) -> list[dict[str, Any]]:
    return [json.loads(f) for f in proto.data_to_send() if isinstance(f, str)]


# ------------------------------------------------------------------------------ errors


def test_protocol_errors_have_the_framework_root() -> None:
    assert issubclass(ProtocolError, errors.ProtocolError)
    assert issubclass(TextBufferFullError, errors.VoxloopError)


# ------------------------------------------------------------------------------ bounded pieces


def test_a_long_sentence_without_punctuation_reaches_the_engine_in_bounded_pieces() -> None:
    proto = server()
    text = " ".join(f"word{i}" for i in range(400))  # ~3,000 characters, no punctuation
    events = send(proto, {"context_id": "c", "text": text, "flush": True})
    got = pieces(events)
    assert len(got) > 20 and all(len(p.text) <= MAX_PIECE_CHARS for p in got)
    assert "".join(p.text for p in got) == text
    assert all(p.text.endswith(" ") for p in got[:-1])  # cut at word boundaries
    assert [p.flush for p in got] == [False] * (len(got) - 1) + [True]
    assert [p.seq for p in got] == list(range(1, len(got) + 1))


def test_pieces_prefer_sentence_then_clause_then_word_boundaries() -> None:
    text = "First part, with a clause; " * 12 + "An end. " + "tail " * 10
    out = bounded_pieces(text, 120)
    assert "".join(out) == text
    assert all(len(p) <= 120 for p in out)
    assert all(p.rstrip()[-1] in ",;." for p in out[:-1])


def test_a_run_without_spaces_is_cut_at_the_limit_and_keeps_emoji_modifiers_whole() -> None:
    emoji = "\U0001f44d\U0001f3fd"  # thumbs up + skin tone: one visible character, two code points
    text = emoji * 500
    out = bounded_pieces(text, 101)
    assert "".join(out) == text and all(sum(map(char_cost, p)) <= 101 for p in out)
    assert all(not p.startswith("\U0001f3fd") for p in out)


@given(st.text(alphabet=st.sampled_from("ab ,.;!?\u00e9\u0301"), max_size=600))
def test_bounded_pieces_join_back_and_respect_the_limit(text: str) -> None:
    out = bounded_pieces(text, 50)
    assert all(len(p.rstrip()) <= 50 and len(p) <= 58 for p in out)
    assert "".join(out).strip() == text.strip() or not text.strip()


# ------------------------------------------------------------------------------ closed contexts


def test_a_closed_context_speaks_only_its_flushed_text() -> None:
    proto = server()
    flushed = pieces(send(proto, {"context_id": "c", "text": "Spoken. ", "flush": True}))
    later = pieces(send(proto, {"context_id": "c", "text": "x " * 70}))  # released by schedule
    assert flushed and later
    ended = [
        e
        for e in send(proto, {"context_id": "c", "close_context": True})
        if isinstance(e, ContextEnded)
    ]
    assert ended == [ContextEnded("c", "close")] and ended[0].speak_upto == flushed[-1].seq
    assert all(proto.wanted("c", p.seq) for p in flushed)
    assert not any(proto.wanted("c", p.seq) for p in later)
    proto.send_final("c")
    assert not proto.wanted("c", flushed[0].seq)  # final sent: nothing more of it


def test_a_lost_client_wants_nothing_and_queues_nothing() -> None:
    proto = server()
    got = pieces(send(proto, {"context_id": "c", "text": "Hello there. " * 40, "flush": True}))
    assert proto.wanted("c", got[0].seq)
    events = proto.connection_lost(2.0)
    assert events == [ContextEnded("c", "lost")]
    assert not any(proto.wanted("c", p.seq) for p in got)
    proto.send_audio("c", b"\x00\x00", None, None)
    assert proto.data_to_send() == [] and proto.closed and proto.next_deadline() is None


def test_single_context_close_still_speaks_everything_sent() -> None:
    proto = server(multi=False)
    send(proto, {"text": " "})
    got = pieces(send(proto, {"text": "word " * 100}))
    ended = [e for e in send(proto, {"text": ""}) if isinstance(e, ContextEnded)]
    assert ended[0].speak_upto >= max(p.seq for p in got)
    assert all(proto.wanted(None, p.seq) for p in got)


# ------------------------------------------------------------------------------ text cap


def test_text_beyond_the_per_connection_cap_gets_an_error_frame_and_nothing_is_lost() -> None:
    proto = server(max_pending_chars=1000)
    first = pieces(send(proto, {"context_id": "a", "text": "word " * 150, "flush": True}))
    assert proto.pending_chars == 750
    events = send(proto, {"context_id": "b", "text": "more " * 60, "flush": True})
    assert not pieces(events)
    [frame] = frames(proto)
    assert frame["error"] == "text_buffer_full" and "1000" in frame["message"]
    assert not proto.closed  # the connection keeps serving
    for p in first:  # as pieces are spoken, room comes back
        proto.piece_done("a", p.seq)
    assert proto.pending_chars == 0
    assert pieces(send(proto, {"context_id": "b", "text": "more " * 60, "flush": True}))


def test_abandoned_pieces_no_longer_count_toward_the_cap() -> None:
    proto = server(max_pending_chars=1000)
    send(proto, {"context_id": "a", "text": "word " * 150})  # schedule-released, unflushed
    assert proto.pending_chars > 0
    send(proto, {"context_id": "a", "close_context": True})
    assert proto.pending_chars == 0


# ------------------------------------------------------------------------------ hostile strings


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ('{"text": "Hi \\ud800 there ", "context_id": "c"}', "text"),
        ('{"text": "Hi ", "context_id": "c\\udfff"}', "context_id"),
        ('{"text": "Hi ", "context_id": "c\\u0000"}', "context_id"),
        ('{"text": " ", "context_id": "c", "xi_api_key": "k\\u0007ey"}', "xi_api_key"),
        (
            '{"text": " ", "context_id": "c", "pronunciation_dictionary_locators": '
            '[{"pronunciation_dictionary_id": "d\\ud83d"}]}',
            "pronunciation_dictionary_id",
        ),
    ],
)
def test_lone_surrogates_and_control_characters_get_an_error_frame_naming_the_field(
    message: str, field: str
) -> None:
    proto = server()
    events = send(proto, message)
    assert not pieces(events)
    [frame] = frames(proto)
    assert frame["error"] == "invalid_text" and frame["message"].startswith(field)
    json.dumps(frame, ensure_ascii=False).encode("utf-8")  # the frame itself is valid UTF-8
    assert not proto.closed
    assert pieces(send(proto, {"context_id": "ok", "text": "Still serving. ", "flush": True}))


def test_control_characters_are_stripped_from_spoken_text() -> None:
    proto = server()
    got = pieces(
        send(proto, {"context_id": "c", "text": "Hel\x00lo\x1b there\x7f.\n", "flush": True})
    )
    assert "".join(p.text for p in got) == "Hello there.\n"
    assert frames(proto) == []


def test_text_of_only_control_characters_does_not_close_a_single_context_stream() -> None:
    proto = server(multi=False)
    send(proto, {"text": " "})
    events = send(proto, {"text": "\x00\x00"})
    assert not [e for e in events if isinstance(e, ContextEnded)]
    assert not proto.closed


# ------------------------------------------------------------------------------ client timers


def test_client_keepalives_are_protocol_timers() -> None:
    client = ClientProtocol(keepalive_interval=10.0, now=0.0)
    assert client.next_deadline() == 10.0  # idle socket: counts from the handshake
    assert client.tick(9.9) == [] and client.data_to_send() == []
    client.tick(10.0)
    assert [json.loads(f) for f in client.data_to_send()] == [{"text": ""}]
    client.open_context("c", 12.0)
    client.data_to_send()
    assert client.next_deadline() == 22.0
    client.send_text("c", "Hi ", 15.0)
    client.data_to_send()
    assert client.next_deadline() == 25.0
    client.tick(25.0)
    assert [json.loads(f) for f in client.data_to_send()] == [{"text": "", "context_id": "c"}]


def test_client_audio_timeout_is_a_protocol_timer() -> None:
    client = ClientProtocol(audio_timeout=10.0, now=0.0)
    client.open_context("c", 0.0)
    assert client.next_deadline() is None  # not asked to finish yet: no audio owed
    client.flush("c", 5.0)
    assert client.next_deadline() == 15.0
    audio = json.dumps({"audio": "AAA=", "contextId": "c"})
    client.receive(audio, 12.0)  # audio restarts the wait
    assert client.next_deadline() == 22.0
    assert client.tick(21.0) == []
    assert client.tick(22.0) == [AudioTimedOut("c", 10.0)]
    assert client.next_deadline() is None  # reported once
    client.delivered("c", 30.0)  # the I/O says its consumer was the slow one: wait again
    assert client.next_deadline() == 40.0
    client.receive(json.dumps({"isFinal": True, "contextId": "c"}), 31.0)
    assert client.next_deadline() is None


def test_text_after_a_mid_turn_flush_waits_for_the_next_flush() -> None:
    """The first clause is flushed early; the LLM may then take long for the rest: no audio is
    owed until the next flush, which starts the wait again."""
    client = ClientProtocol(audio_timeout=10.0, now=0.0)
    client.open_context("c", 0.0)
    client.flush("c", 1.0, "Sure, ")
    client.receive(json.dumps({"audio": "AAA=", "contextId": "c"}), 1.5)
    client.send_text("c", "the sky is ", 2.0)
    assert client.next_deadline() is None and client.tick(30.0) == []
    client.flush("c", 40.0)
    assert client.next_deadline() == 50.0
    assert client.tick(50.0) == [AudioTimedOut("c", 10.0)]
