"""The sans-I/O ElevenLabs protocol: messages in, events and frames out. No sockets, no sleeps."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.elevenlabs.formats import parse_output_format
from plugins.elevenlabs.protocol import (
    DEFAULT_SCHEDULE,
    INACTIVITY_REASON,
    MAX_CONTEXTS,
    MAX_MESSAGE_CHARS,
    SETTINGS_CHANGED_REASON,
    Alignment,
    AudioReceived,
    ClientProtocol,
    Close,
    ContextEnded,
    ContextFinal,
    ContextStarted,
    Flushed,
    GenerationConfig,
    IgnoredFrame,
    IgnoredMessage,
    InactivityTimeoutError,
    KeepAlive,
    PronunciationDictionaryLocator,
    ProtocolError,
    ProtocolViolation,
    QuotaExceededError,
    Secret,
    ServerError,
    ServerEvent,
    ServerProtocol,
    SettingsChangedError,
    SocketEnding,
    StaleAudio,
    StreamParams,
    Synthesize,
    TooManyContextsError,
    VoiceSettings,
    api_key_from_query,
    classify_close,
    fit_close_reason,
)
from plugins.elevenlabs.textbuffer import FIRST_CLAUSE_MAX_WORDS

KEY = "sk_live_THIS_IS_A_SECRET_KEY_123"
SINGLE_PATH = "/v1/text-to-speech/voice1/stream-input"
MULTI_PATH = "/v1/text-to-speech/voice1/multi-stream-input"


# ------------------------------------------------------------------------------------ helpers


def make_server(
    multi: bool = False, query: dict[str, str] | None = None, now: float = 0.0, **kwargs: Any
) -> ServerProtocol:
    params = StreamParams.from_path_and_query(MULTI_PATH if multi else SINGLE_PATH, query or {})
    return ServerProtocol(params, now, **kwargs)


def send(proto: ServerProtocol, obj: dict[str, Any], now: float = 1.0) -> list[ServerEvent]:
    return proto.receive(json.dumps(obj), now)


def out(proto: ServerProtocol) -> list[Any]:
    """data_to_send with JSON frames decoded (Close objects kept as they are)."""
    return [f if isinstance(f, Close) else json.loads(f) for f in proto.data_to_send()]


def synthesized(events: list[ServerEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, Synthesize)]


def of_type(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def audio_frame(audio: bytes = b"\x01\x02", **extra: Any) -> str:
    obj: dict[str, Any] = {"audio": base64.b64encode(audio).decode(), "isFinal": None}
    obj.update(extra)
    return json.dumps(obj)


ALIGN = {"chars": ["H", "i"], "charStartTimesMs": [0, 50], "charDurationsMs": [50, 60]}


# ------------------------------------------------------------------------------------ params


def test_params_from_single_and_multi_paths() -> None:
    single = StreamParams.from_path_and_query(SINGLE_PATH, {})
    multi = StreamParams.from_path_and_query(MULTI_PATH, {})
    assert (single.voice_id, single.multi) == ("voice1", False)
    assert (multi.voice_id, multi.multi) == ("voice1", True)
    assert single.output_format.name == "mp3_44100_128"
    assert single.inactivity_timeout == 20
    assert single.enable_logging is True and single.sync_alignment is False


def test_params_read_every_query_value() -> None:
    query = {
        "model_id": "eleven_flash_v2_5",
        "output_format": "pcm_16000",
        "inactivity_timeout": "180",
        "sync_alignment": "true",
        "auto_mode": "True",
        "language_code": "en",
        "enable_logging": "false",
        "enable_ssml_parsing": "true",
        "apply_text_normalization": "off",
        "seed": "4294967295",
        "authorization": f"Bearer {KEY}",
    }
    params = StreamParams.from_path_and_query(MULTI_PATH, query)
    assert params == StreamParams(
        voice_id="voice1",
        multi=True,
        model_id="eleven_flash_v2_5",
        output_format=parse_output_format("pcm_16000"),
        inactivity_timeout=180.0,
        sync_alignment=True,
        auto_mode=True,
        language_code="en",
        enable_logging=False,
        enable_ssml_parsing=True,
        apply_text_normalization="off",
        seed=4294967295,
    )
    assert KEY not in repr(params)
    assert api_key_from_query(query) == Secret(KEY)
    assert api_key_from_query({}) is None


def test_params_query_string_left_on_the_path_is_read() -> None:
    params = StreamParams.from_path_and_query(SINGLE_PATH + "?output_format=pcm_24000", {})
    assert params.output_format.name == "pcm_24000"


@pytest.mark.parametrize(
    ("path", "query", "needle"),
    [
        ("/v2/text-to-speech/v/stream-input", {}, "path"),
        ("/v1/text-to-speech/v/other", {}, "stream-input"),
        ("/v1/text-to-speech//stream-input", {}, "voice_id"),
        (SINGLE_PATH, {"inactivity_timeout": "0"}, "inactivity_timeout"),
        (SINGLE_PATH, {"inactivity_timeout": "181"}, "inactivity_timeout"),
        (SINGLE_PATH, {"inactivity_timeout": "soon"}, "inactivity_timeout"),
        (SINGLE_PATH, {"seed": "-1"}, "seed"),
        (SINGLE_PATH, {"seed": "4294967296"}, "seed"),
        (SINGLE_PATH, {"sync_alignment": "yes"}, "sync_alignment"),
        (SINGLE_PATH, {"apply_text_normalization": "maybe"}, "apply_text_normalization"),
        (SINGLE_PATH, {"output_format": ""}, "output_format"),
    ],
)
def test_params_rejects_bad_requests_with_a_clear_message(
    path: str, query: dict[str, str], needle: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        StreamParams.from_path_and_query(path, query)
    assert info.value.code == 1008
    assert info.value.error == "invalid_request"
    assert needle in str(info.value)


def test_params_round_trip_without_a_key() -> None:
    params = StreamParams(
        voice_id="a b/c",
        multi=True,
        model_id="m",
        output_format=parse_output_format("pcm_44100"),
        inactivity_timeout=60,
        sync_alignment=True,
        seed=7,
        apply_text_normalization="on",
        enable_logging=False,
    )
    path, query = params.to_path_and_query()
    assert path == "/v1/text-to-speech/a%20b%2Fc/multi-stream-input"
    assert query["inactivity_timeout"] == "60"
    assert not {"xi_api_key", "authorization"} & set(query)
    # a voice id with a slash cannot round-trip through a path; one without can
    plain = StreamParams(voice_id="voice1", multi=False, model_id="m", seed=3)
    assert StreamParams.from_path_and_query(*plain.to_path_and_query()) == plain


# ------------------------------------------------------------------------------------ values


def test_secret_never_shows_its_value() -> None:
    secret = Secret(KEY)
    assert repr(secret) == str(secret) == "Secret('***')"
    assert f"{secret}" == "Secret('***')"
    assert secret.reveal() == KEY
    assert secret == Secret(KEY) and secret != Secret("other")
    assert hash(secret) == hash(Secret(KEY))
    assert secret and not Secret("")


def test_voice_settings_validation() -> None:
    obj = {
        "stability": 0.5,
        "similarity_boost": 1,
        "style": 0,
        "use_speaker_boost": True,
        "speed": 1.2,
    }
    settings_ = VoiceSettings.from_json(obj)
    assert settings_ == VoiceSettings(0.5, 1.0, 0.0, True, 1.2)
    assert VoiceSettings(stability=0.3).to_json() == {"stability": 0.3}
    assert VoiceSettings.from_json({"stability": None, "unknown": 1}) == VoiceSettings()
    for bad, needle in [
        ({"stability": 1.5}, "stability"),
        ({"speed": 0.5}, "speed"),
        ({"speed": 1.3}, "speed"),
        ({"style": "high"}, "style"),
        ({"similarity_boost": True}, "similarity_boost"),
        ({"use_speaker_boost": 1}, "use_speaker_boost"),
        ({"stability": float("nan")}, "stability"),
    ]:
        with pytest.raises(ProtocolError, match=needle):
            VoiceSettings.from_json(bad)
    with pytest.raises(ProtocolError, match="object"):
        VoiceSettings.from_json([1])


def test_generation_config_validation() -> None:
    assert GenerationConfig().chunk_length_schedule == DEFAULT_SCHEDULE == (120, 160, 250, 290)
    assert GenerationConfig.from_json({"chunk_length_schedule": [50]}).chunk_length_schedule == (
        50,
    )
    assert GenerationConfig.from_json({}) == GenerationConfig()
    for bad in ([], [49], [501], ["120"], [120.5], [True], "120"):
        with pytest.raises(ProtocolError, match="chunk_length_schedule"):
            GenerationConfig.from_json({"chunk_length_schedule": bad})
    assert GenerationConfig((120, 160)).threshold(5) == 160


def test_pronunciation_locator_parsing() -> None:
    loc = PronunciationDictionaryLocator.from_json(
        {"pronunciation_dictionary_id": "d1", "version_id": "v1"}
    )
    assert loc == PronunciationDictionaryLocator("d1", "v1")
    assert loc.to_json() == {"pronunciation_dictionary_id": "d1", "version_id": "v1"}
    with pytest.raises(ProtocolError, match="pronunciation_dictionary_id"):
        PronunciationDictionaryLocator.from_json({"version_id": "v1"})


def test_alignment_reads_both_duration_spellings_and_checks_lengths() -> None:
    a = Alignment.from_json(ALIGN)
    b = Alignment.from_json(
        {"chars": ["H", "i"], "charStartTimesMs": [0, 50], "charsDurationsMs": [50, 60]}
    )
    assert a == b and a.text == "Hi"
    assert a.to_json() == ALIGN
    with pytest.raises(ProtocolError, match="equal lengths"):
        Alignment.from_json({"chars": ["H"], "charStartTimesMs": [0, 1], "charDurationsMs": [1]})
    with pytest.raises(ProtocolError):
        Alignment(("a",), (0,), ())


def test_inactivity_reason_formats_the_number_like_the_service() -> None:
    assert INACTIVITY_REASON(20) == (
        "Have not received a new text input within the timeout of 20 seconds. "
        "Streaming input terminated. Please send a new text input to continue."
    )
    assert "of 2.5 seconds" in INACTIVITY_REASON(2.5)
    assert "of 180 seconds" in INACTIVITY_REASON(180.0)


def test_close_reasons_fit_a_close_frame() -> None:
    fitted = fit_close_reason(INACTIVITY_REASON(20))
    assert (
        fitted == "Have not received a new text input within the timeout of 20 seconds. "
        "Streaming input terminated."
    )
    assert fit_close_reason(SETTINGS_CHANGED_REASON) == SETTINGS_CHANGED_REASON
    assert len(fit_close_reason("é" * 200).encode()) <= 123


# ------------------------------------------------------------------------------ server: single


def full_init(key_field: str = "xi_api_key") -> dict[str, Any]:
    return {
        "text": " ",
        "voice_settings": {
            "stability": 0.5,
            "similarity_boost": 0.75,
            "style": 0.0,
            "use_speaker_boost": True,
            "speed": 1.0,
        },
        "generation_config": {"chunk_length_schedule": [120, 160, 250, 290]},
        "pronunciation_dictionary_locators": [
            {"pronunciation_dictionary_id": "dict1", "version_id": "ver1"}
        ],
        key_field: KEY,
    }


@pytest.mark.parametrize("key_field", ["xi_api_key", "xi-api-key"])
def test_single_init_with_every_field(key_field: str) -> None:
    server = make_server()
    events = send(server, full_init(key_field))
    assert events == [
        ContextStarted(
            context_id=None,
            voice_settings=VoiceSettings(0.5, 0.75, 0.0, True, 1.0),
            generation_config=GenerationConfig((120, 160, 250, 290)),
            pronunciation_dictionary_locators=(PronunciationDictionaryLocator("dict1", "ver1"),),
            api_key=Secret(KEY),
        )
    ]
    assert KEY not in repr(events)
    assert server.active_contexts == 1
    assert server.data_to_send() == []


def test_header_key_is_used_when_the_message_has_none() -> None:
    server = make_server(header_api_key=Secret("header-key"))
    (started,) = send(server, {"text": " "})
    assert isinstance(started, ContextStarted) and started.api_key == Secret("header-key")
    server = make_server(header_api_key=Secret("header-key"))
    (started,) = send(server, {"text": " ", "xi_api_key": KEY})
    assert isinstance(started, ContextStarted) and started.api_key == Secret(KEY)


def test_single_end_of_input_flushes_sends_final_and_closes_1000() -> None:
    server = make_server()
    send(server, {"text": " "})
    assert send(server, {"text": "Hello world "}) == []
    events = send(server, {"text": ""})
    assert events == [
        Synthesize(None, "Hello world ", None, True),
        Flushed(None),
        ContextEnded(None, "close"),
    ]
    assert server.next_deadline() is None  # no inactivity timer while the audio is produced
    server.send_audio(None, b"mp3", None, None)
    assert not server.closed
    server.send_final(None)
    frames = out(server)
    assert frames[0] == {
        "audio": base64.b64encode(b"mp3").decode(),
        "isFinal": None,
        "normalizedAlignment": None,
        "alignment": None,
    }
    assert frames[1] == {"isFinal": True}
    assert frames[2] == Close(1000, "")
    assert "message" not in frames[1]
    assert server.closed and server.active_contexts == 0
    assert of_type(send(server, {"text": "late "}), IgnoredMessage)
    assert server.data_to_send() == []


def test_single_flush_keeps_the_stream_open_and_sends_no_final() -> None:
    server = make_server()
    send(server, {"text": " "})
    events = send(server, {"text": "Hi there ", "flush": True})
    assert events == [Synthesize(None, "Hi there ", None, True), Flushed(None)]
    assert server.data_to_send() == []
    assert send(server, {"text": "More. "}) == []
    assert synthesized(send(server, {"text": "", "flush": True})) == ["More. "]


def test_single_lone_space_mid_stream_is_a_keep_alive_not_a_second_init() -> None:
    server = make_server()
    send(server, {"text": " "})
    send(server, {"text": "Hello"}, now=2.0)
    events = send(server, {"text": " "}, now=15.0)
    assert events == [KeepAlive(None)]
    assert server.next_deadline() == 35.0
    assert synthesized(send(server, {"text": "there", "flush": True})) == ["Hello there"]


def test_schedule_releases_at_120_then_160_250_290_and_repeats_the_last() -> None:
    server = make_server(max_piece_chars=500)  # one piece per release: the schedule alone
    send(server, {"text": " "})
    released: list[tuple[int, int]] = []  # (message number, chunk length)
    for n in range(1, 200):
        for text in synthesized(send(server, {"text": "wordwordw "})):  # 10 chars a message
            released.append((n, len(text)))
    assert released[:5] == [(12, 120), (28, 160), (53, 250), (82, 290), (111, 290)]


def test_nothing_is_synthesized_below_the_first_threshold() -> None:
    server = make_server()
    send(server, {"text": " "})
    assert synthesized(send(server, {"text": "x" * 60 + " " + "y" * 58})) == []  # 119 chars
    (chunk,) = synthesized(send(server, {"text": " more"}))
    assert chunk == "x" * 60 + " " + "y" * 58 + " "  # cut after the last space
    assert synthesized(send(server, {"text": "", "flush": True})) == ["more"]


def test_first_clause_is_released_at_once_then_the_schedule_runs_from_its_start() -> None:
    server = make_server(first_clause=True, max_piece_chars=500)
    send(server, {"text": " "})
    assert synthesized(send(server, {"text": "Sure, "})) == []  # one word is not a clause
    assert synthesized(send(server, {"text": "the sky "})) == []
    assert synthesized(send(server, {"text": "is blue. It "})) == ["Sure, the sky is blue. "]
    released = []
    for _ in range(14):  # 10 characters a message: 120 more characters before the next chunk
        released += synthesized(send(server, {"text": "wordwordw "}))
    assert [len(text) for text in released] == [123]  # "It " + 120: the schedule from its start


def test_first_clause_skips_abbreviations_and_is_dropped_by_close_context() -> None:
    server = make_server(multi=True, first_clause=True)
    send(server, {"text": " ", "context_id": "a"})
    assert synthesized(send(server, {"text": "Dr. ", "context_id": "a"})) == []
    assert synthesized(send(server, {"text": "Smith at 3. ", "context_id": "a"})) == []
    assert synthesized(send(server, {"text": "Then, it ", "context_id": "a"})) == [
        "Dr. Smith at 3. Then, "
    ]  # "Dr." and "3." end nothing; the comma does
    send(server, {"text": " ", "context_id": "b"})
    assert synthesized(send(server, {"text": "I would like ", "context_id": "b"})) == []
    events = send(server, {"context_id": "b", "close_context": True})
    assert synthesized(events) == []  # not flushed, never released: dropped with the context


def test_first_clause_without_punctuation_goes_after_five_words() -> None:
    assert FIRST_CLAUSE_MAX_WORDS == 5
    server = make_server(first_clause=True)
    send(server, {"text": " "})
    assert synthesized(send(server, {"text": "The museum opens at "})) == []
    assert synthesized(send(server, {"text": "nine tomorrow morning "})) == [
        "The museum opens at nine "
    ]


def test_without_first_clause_a_short_clause_waits_for_the_schedule() -> None:
    server = make_server()
    send(server, {"text": " "})
    assert synthesized(send(server, {"text": "Sure, the sky is blue. It "})) == []


def test_sdk_style_schedule_50_and_try_trigger_every_word() -> None:
    server = make_server()
    send(
        server,
        {"text": " ", "voice_settings": None, "generation_config": {"chunk_length_schedule": [50]}},
    )
    released: list[str] = []
    for word in (
        "Hello ",
        "this ",
        "is ",
        "a ",
        "fairly ",
        "long ",
        "sentence ",
        "to ",
        "speak ",
        "aloud. ",
        "Bye. ",
    ):
        released += synthesized(send(server, {"text": word, "try_trigger_generation": True}))
    released += synthesized(send(server, {"text": ""}))
    assert len(released) >= 2
    assert "".join(released) == "Hello this is a fairly long sentence to speak aloud. Bye. "


def test_try_trigger_generation_needs_50_buffered_chars() -> None:
    server = make_server()
    send(server, {"text": " "})
    assert synthesized(send(server, {"text": "a" * 48 + " ", "try_trigger_generation": True})) == []
    (chunk,) = synthesized(send(server, {"text": "bb ", "try_trigger_generation": True}))
    assert chunk == "a" * 48 + " bb "


def test_auto_mode_releases_complete_sentences() -> None:
    server = make_server(query={"auto_mode": "true"})
    send(server, {"text": " "})
    assert synthesized(send(server, {"text": "Hello there. How"})) == ["Hello there. "]
    assert synthesized(send(server, {"text": " are"})) == []
    assert synthesized(send(server, {"text": " you"})) == []
    assert synthesized(send(server, {"text": "?"})) == []  # a lone "?" token may still continue
    assert synthesized(send(server, {"text": " Fine"})) == ["How are you? "]
    assert synthesized(send(server, {"text": " thanks."})) == ["Fine thanks."]  # a whole sentence
    assert synthesized(send(server, {"text": "I am here."})) == [" I am here."]
    assert synthesized(send(server, {"text": "Pi is 3"})) == []
    assert synthesized(send(server, {"text": "."})) == []
    assert synthesized(send(server, {"text": "14", "flush": True})) == [" Pi is 3.14"]


@pytest.mark.parametrize(
    ("pieces", "joined"),
    [
        (["Hello", " there", "!"], "Hello there!"),
        (["Hello there!", "I am here."], "Hello there! I am here."),
        (["Un", "believ", "able", "."], "Unbelievable."),
        (["Pi is 3", ".", "14"], "Pi is 3.14"),
        (['He said "hi."', "Then left."], 'He said "hi." Then left.'),
        (["Hello, ", "world"], "Hello, world"),
        (["First,", "second"], "First, second"),
        (["Hello", " ", "there"], "Hello there"),
    ],
)
def test_join_rules_never_run_words_together(pieces: list[str], joined: str) -> None:
    server = make_server()
    send(server, {"text": " "})
    texts: list[str] = []
    for piece in pieces:
        texts += synthesized(send(server, {"text": piece}))
    texts += synthesized(send(server, {"text": ""}))
    assert "".join(texts) == joined


def test_repeating_identical_voice_settings_is_fine() -> None:
    server = make_server()
    vs = {"stability": 0.5}
    send(server, {"text": " ", "voice_settings": vs})
    events = send(server, {"text": "Hi ", "voice_settings": vs, "flush": True})
    assert events == [Synthesize(None, "Hi ", VoiceSettings(stability=0.5), True), Flushed(None)]


@pytest.mark.parametrize(
    ("first", "later"),
    [({"stability": 0.5}, {"stability": 0.6}), (None, {"stability": 0.5})],
)
def test_changed_voice_settings_close_1008(first: Any, later: Any) -> None:
    server = make_server()
    send(server, {"text": " ", "voice_settings": first})
    send(server, {"text": "buffered "})
    events = send(server, {"text": "Hi ", "voice_settings": later})
    assert events == [
        ContextEnded(None, "error"),
        SocketEnding(1008, SETTINGS_CHANGED_REASON),
    ]
    assert out(server) == [Close(1008, SETTINGS_CHANGED_REASON)]
    assert server.closed
    server.send_final(None)  # late calls from the I/O layer are dropped
    assert server.data_to_send() == []


def test_generation_config_on_a_later_message_replaces_the_schedule() -> None:
    server = make_server()
    send(server, {"text": " "})
    events = send(
        server, {"text": "a" * 60 + " ", "generation_config": {"chunk_length_schedule": [50]}}
    )
    assert synthesized(events) == ["a" * 60 + " "]


def test_single_inactivity_closes_1008_with_the_service_reason() -> None:
    server = make_server(now=100.0)
    assert server.next_deadline() == 120.0
    assert server.tick(119.9) == []
    send(server, {"text": " "}, now=110.0)
    send(server, {"text": "Hello "}, now=115.0)
    assert server.tick(134.9) == []
    events = server.tick(135.0)
    assert events == [ContextEnded(None, "timeout"), SocketEnding(1008, INACTIVITY_REASON(20.0))]
    (close,) = server.data_to_send()
    assert isinstance(close, Close) and close.code == 1008
    assert close.reason.startswith(
        "Have not received a new text input within the timeout of 20 seconds."
    )
    assert classify_close(close.code, close.reason).__class__ is InactivityTimeoutError
    assert server.next_deadline() is None and server.tick(1000.0) == []


def test_inactivity_timeout_query_sets_the_timer_and_the_reason() -> None:
    server = make_server(query={"inactivity_timeout": "60"})
    assert server.next_deadline() == 60.0
    assert server.tick(60.0)[-1] == SocketEnding(1008, INACTIVITY_REASON(60))
    assert "of 60 seconds" in INACTIVITY_REASON(60)


BAD_FRAMES: list[tuple[str | bytes, int, str, str]] = [
    ("{not json", 1007, "invalid_message", "invalid JSON"),
    ("[1, 2]", 1007, "invalid_message", "JSON object"),
    ('"text"', 1007, "invalid_message", "JSON object"),
    ('{"text": 5}', 1007, "invalid_message", "text must be a string"),
    ('{"text": "a", "flush": "yes"}', 1008, "invalid_message", "flush"),
    ('{"text": "a", "try_trigger_generation": 1}', 1008, "invalid_message", "try_trigger"),
    ('{"text": "a", "context_id": 5}', 1007, "invalid_message", "context_id"),
    ('{"text": "a", "close_context": "true"}', 1008, "invalid_message", "close_context"),
    ('{"text": " ", "voice_settings": {"stability": 3}}', 1008, "invalid_message", "stability"),
    ('{"text": " ", "voice_settings": "calm"}', 1008, "invalid_message", "voice_settings"),
    (
        '{"text": " ", "generation_config": {"chunk_length_schedule": [10]}}',
        1008,
        "invalid_message",
        "chunk_length_schedule",
    ),
    (
        '{"text": " ", "pronunciation_dictionary_locators": {}}',
        1008,
        "invalid_message",
        "pronunciation",
    ),
    ('{"text": " ", "xi_api_key": 12}', 1007, "invalid_message", "xi_api_key"),
    (b'{"text": " "}', 1003, "invalid_message", "binary"),
    ('{"text": "' + "a" * MAX_MESSAGE_CHARS + '"}', 1009, "message_too_large", "too large"),
]


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize(("frame", "code", "error", "needle"), BAD_FRAMES)
def test_bad_input_gets_an_error_frame_and_the_connection_keeps_serving(
    multi: bool, frame: str | bytes, code: int, error: str, needle: str
) -> None:
    server = make_server(multi=multi)
    events = server.receive(frame, 1.0)
    assert of_type(events, IgnoredMessage) and not of_type(events, ContextStarted)
    (frame_out,) = out(server)
    assert frame_out["error"] == error and frame_out["code"] == code
    assert needle in frame_out["message"]
    assert not server.closed
    # the next good message still starts the context and is served
    events = send(
        server, {"text": "Hello ", "flush": True, **({"context_id": "c1"} if multi else {})}
    )
    assert of_type(events, ContextStarted) and synthesized(events) == ["Hello "]


def test_a_bad_message_with_a_key_never_echoes_the_key() -> None:
    server = make_server()
    events = server.receive(json.dumps({"text": 5, "xi_api_key": KEY}), 1.0)
    assert KEY not in repr(events) and KEY not in json.dumps(out(server))
    events = server.receive(json.dumps({"text": " ", "xi-api-key": KEY, "flush": "x"}), 1.0)
    assert KEY not in repr(events) and KEY not in json.dumps(out(server))


def test_unknown_keys_are_reported_and_the_rest_is_served() -> None:
    server = make_server()
    events = send(server, {"text": "Hi ", "flush": True, "model": "x"})
    assert of_type(events, IgnoredMessage)[0].reason == "unknown keys ignored: 'model'"
    assert synthesized(events) == ["Hi "]


def test_send_audio_for_unknown_context_is_dropped_and_huge_chunks_refused() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"})
    server.send_audio("nope", b"x", None, None)
    server.send_final("nope")
    assert server.data_to_send() == []
    with pytest.raises(ValueError, match="smaller chunks"):
        server.send_audio("c1", b"\0" * (600 * 1024), None, None)


# ------------------------------------------------------------------------------- server: multi


def test_multi_init_text_flush_and_audio_frames_carry_context_id() -> None:
    server = make_server(multi=True)
    events = send(
        server,
        {"text": " ", "context_id": "c1", "voice_settings": {"speed": 1.1}, "xi_api_key": KEY},
    )
    (started,) = events
    assert isinstance(started, ContextStarted)
    assert started.context_id == "c1" and started.api_key == Secret(KEY)
    assert started.voice_settings == VoiceSettings(speed=1.1)
    assert send(server, {"text": "Hi. ", "context_id": "c1"}) == []
    events = send(server, {"context_id": "c1", "flush": True, "text": "Bye. "})
    assert events == [
        Synthesize("c1", "Hi. Bye. ", VoiceSettings(speed=1.1), True),
        Flushed("c1"),
    ]
    alignment = Alignment(("H", "i"), (0, 50), (50, 60))
    server.send_audio("c1", b"pcm", alignment, alignment)
    (frame,) = out(server)  # a bare flush gives no isFinal
    assert frame["contextId"] == "c1" and frame["isFinal"] is None
    assert frame["alignment"] == ALIGN and frame["normalizedAlignment"] == ALIGN
    assert base64.b64decode(frame["audio"]) == b"pcm"


def test_flush_then_close_context_still_delivers_audio_then_final() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"})
    send(server, {"text": "Hello there.", "context_id": "c1"})
    flush = send(server, {"context_id": "c1", "flush": True})
    close = send(server, {"context_id": "c1", "close_context": True})
    assert flush == [Synthesize("c1", "Hello there.", None, True), Flushed("c1")]
    assert close == [ContextEnded("c1", "close")]
    assert server.active_contexts == 1 and server.open_contexts == []
    server.send_audio("c1", b"a", None, None)
    server.send_final("c1")
    assert [f["isFinal"] for f in out(server)] == [None, True]
    assert server.active_contexts == 0


def test_close_context_drops_unflushed_text() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"})
    send(server, {"text": "never spoken ", "context_id": "c1"})
    assert send(server, {"context_id": "c1", "close_context": True}) == [
        ContextEnded("c1", "close")
    ]
    assert of_type(send(server, {"text": "late ", "context_id": "c1"}), IgnoredMessage)


def test_close_context_of_an_unknown_context_is_ignored() -> None:
    server = make_server(multi=True)
    events = send(server, {"context_id": "ghost", "close_context": True})
    assert of_type(events, IgnoredMessage) and server.active_contexts == 0


def test_multi_keep_alive_forms() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"})
    assert send(server, {"text": "", "context_id": "c1"}, now=10.0) == [KeepAlive("c1")]
    assert server.open_contexts == ["c1"]
    assert send(server, {"text": ""}, now=12.0) == [KeepAlive(None)]  # socket-level: closes nothing
    assert server.open_contexts == ["c1"] and server.data_to_send() == []
    assert server.next_deadline() == 30.0


def test_bare_keep_alive_with_no_context_creates_nothing() -> None:
    server = make_server(multi=True)
    assert send(server, {"text": ""}) == [KeepAlive(None)]
    assert server.active_contexts == 0


def test_default_context_without_context_id() -> None:
    server = make_server(multi=True)
    (started,) = send(server, {"text": " "})
    assert isinstance(started, ContextStarted) and started.context_id is None
    assert synthesized(send(server, {"text": "Hi ", "flush": True})) == ["Hi "]
    server.send_audio(None, b"a", None, None)
    assert "contextId" not in out(server)[0]


def test_flushing_an_unknown_context_creates_it() -> None:
    server = make_server(multi=True)
    events = send(server, {"context_id": "c9", "flush": True, "text": "Hi "})
    assert isinstance(events[0], ContextStarted) and events[0].context_id == "c9"
    assert events[1:] == [Synthesize("c9", "Hi ", None, True), Flushed("c9")]


def test_keep_alive_before_init_becomes_the_first_message() -> None:
    server = make_server(multi=True)
    (started,) = send(server, {"text": "", "context_id": "c2"})
    assert isinstance(started, ContextStarted) and started.context_id == "c2"
    # the settings of a later "init" are then a change
    events = send(server, {"text": " ", "context_id": "c2", "voice_settings": {"speed": 1.0}})
    assert events[-1] == SocketEnding(1008, SETTINGS_CHANGED_REASON)


def test_stray_keep_alive_to_a_finished_context_does_not_revive_it() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"})
    send(server, {"context_id": "c1", "close_context": True})
    server.send_final("c1")
    assert of_type(send(server, {"text": "", "context_id": "c1"}), IgnoredMessage)
    assert server.active_contexts == 0
    # but new text under the same id is a new context
    assert of_type(send(server, {"text": "Again ", "context_id": "c1"}), ContextStarted)


def test_close_socket_flushes_ends_every_context_and_closes_after_the_last_final() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "a"})
    send(server, {"text": "Alpha ", "context_id": "a"})
    send(server, {"text": " ", "context_id": "b"})
    send(server, {"text": "Beta ", "context_id": "b"})
    events = send(server, {"close_socket": True})
    assert events == [
        Synthesize("a", "Alpha ", None, True),
        Flushed("a"),
        ContextEnded("a", "close"),
        Synthesize("b", "Beta ", None, True),
        Flushed("b"),
        ContextEnded("b", "close"),
        SocketEnding(1000, ""),
    ]
    assert server.next_deadline() is None
    server.send_final("a")
    assert out(server) == [{"isFinal": True, "contextId": "a"}]
    server.send_audio("b", b"x", None, None)
    server.send_final("b")
    frames = out(server)
    assert frames[-2] == {"isFinal": True, "contextId": "b"}
    assert frames[-1] == Close(1000, "")
    assert server.closed


def test_close_socket_with_no_context_closes_at_once() -> None:
    server = make_server(multi=True)
    assert send(server, {"close_socket": True}) == [SocketEnding(1000, "")]
    assert server.data_to_send() == [Close(1000, "")]


def _open_contexts(server: ServerProtocol, n: int) -> None:
    for i in range(n):
        assert of_type(send(server, {"text": " ", "context_id": f"c{i}"}), ContextStarted)


def test_sixth_context_gets_max_active_conversations_and_1008() -> None:
    server = make_server(multi=True)
    _open_contexts(server, MAX_CONTEXTS)
    events = send(server, {"text": " ", "context_id": "c5"})
    assert not of_type(events, ContextStarted)
    assert len(of_type(events, ContextEnded)) == MAX_CONTEXTS
    assert of_type(events, SocketEnding)[0].code == 1008
    error, close = out(server)
    assert error["error"] == "max_active_conversations" and error["code"] == 1008
    assert "5" in error["message"]
    assert isinstance(close, Close) and close.code == 1008
    assert isinstance(classify_close(close.code, close.reason), TooManyContextsError)


def test_a_closed_context_counts_until_its_final_is_sent() -> None:
    server = make_server(multi=True)
    _open_contexts(server, MAX_CONTEXTS)
    send(server, {"context_id": "c0", "close_context": True})
    assert server.active_contexts == MAX_CONTEXTS
    probe = make_server(multi=True)
    _open_contexts(probe, MAX_CONTEXTS)
    send(probe, {"context_id": "c0", "close_context": True})
    assert of_type(send(probe, {"text": " ", "context_id": "new"}), SocketEnding)
    server.send_final("c0")
    assert of_type(send(server, {"text": " ", "context_id": "new"}), ContextStarted)


def test_multi_settings_change_closes_1008() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1", "voice_settings": {"stability": 0.1}})
    events = send(server, {"text": "x ", "context_id": "c1", "voice_settings": {"stability": 0.9}})
    assert events[-1] == SocketEnding(1008, SETTINGS_CHANGED_REASON)
    assert server.data_to_send() == [Close(1008, SETTINGS_CHANGED_REASON)]


def test_multi_inactivity_is_per_context() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"}, now=0.0)
    send(server, {"text": " ", "context_id": "c2"}, now=5.0)
    send(server, {"text": "", "context_id": "c2"}, now=10.0)
    assert server.next_deadline() == 20.0
    assert server.tick(19.0) == []
    assert server.tick(20.0) == [ContextEnded("c1", "timeout")]
    assert server.open_contexts == ["c2"] and server.active_contexts == 2
    assert server.next_deadline() == 30.0
    server.send_final("c1", now=21.0)
    assert out(server) == [{"isFinal": True, "contextId": "c1"}]
    assert server.tick(30.0) == [ContextEnded("c2", "timeout")]
    assert not server.closed and server.data_to_send() == []


def test_multi_socket_inactivity_without_contexts_closes_1008() -> None:
    server = make_server(multi=True)
    assert server.next_deadline() == 20.0
    send(server, {"text": ""}, now=15.0)  # bare keep-alive resets the socket timer
    assert server.tick(34.0) == []
    assert server.tick(35.0) == [SocketEnding(1008, INACTIVITY_REASON(20))]
    (close,) = server.data_to_send()
    assert isinstance(close, Close) and close.code == 1008 and "20 seconds" in close.reason


def test_socket_timer_restarts_when_the_last_context_finishes() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"}, now=0.0)
    send(server, {"context_id": "c1", "close_context": True}, now=1.0)
    assert server.next_deadline() is None  # waiting for the synthesis, not for the client
    server.send_final("c1", now=50.0)
    assert server.next_deadline() == 70.0


def test_single_context_keys_are_ignored_with_a_warning_on_the_single_endpoint() -> None:
    server = make_server()
    events = send(server, {"text": "Hi ", "context_id": "c1", "flush": True})
    assert of_type(events, IgnoredMessage)
    assert of_type(events, ContextStarted)[0].context_id is None
    assert synthesized(events) == ["Hi "]


def test_server_send_close_is_immediate() -> None:
    server = make_server(multi=True)
    send(server, {"text": " ", "context_id": "c1"})
    events = server.send_close(1011, "engine failed")
    assert events == [ContextEnded("c1", "error"), SocketEnding(1011, "engine failed")]
    assert server.data_to_send() == [Close(1011, "engine failed")]


# -------------------------------------------------------------------------------- client role


def sent(client: ClientProtocol) -> list[dict[str, Any]]:
    return [json.loads(f) for f in client.data_to_send()]


def test_client_open_context_multi_sends_the_init_message() -> None:
    client = ClientProtocol(multi=True)
    client.open_context(
        "c1",
        0.0,
        voice_settings=VoiceSettings(stability=0.5, speed=1.0),
        generation_config=GenerationConfig((50,)),
        pronunciation_dictionary_locators=[PronunciationDictionaryLocator("d", "v")],
        api_key=Secret(KEY),
    )
    assert sent(client) == [
        {
            "text": " ",
            "context_id": "c1",
            "voice_settings": {"stability": 0.5, "speed": 1.0},
            "generation_config": {"chunk_length_schedule": [50]},
            "pronunciation_dictionary_locators": [
                {"pronunciation_dictionary_id": "d", "version_id": "v"}
            ],
            "xi_api_key": KEY,
        }
    ]
    assert client.open_contexts == ["c1"] and client.counted_contexts == 1


def test_client_single_context_messages() -> None:
    client = ClientProtocol(multi=False)
    client.open_context(None, 0.0)
    client.send_text(None, "Hello ", 1.0, try_trigger_generation=True)
    client.flush(None, 2.0)
    client.keep_alive(None, 3.0)
    client.end_of_input(4.0)
    assert sent(client) == [
        {"text": " "},
        {"text": "Hello ", "try_trigger_generation": True},
        {"text": " ", "flush": True},  # never "" on single: that would close
        {"text": " "},
        {"text": ""},
    ]
    with pytest.raises(ValueError, match="closed"):
        client.send_text(None, "more", 5.0)
    with pytest.raises(ValueError, match="one context"):
        client.open_context(None, 5.0)
    with pytest.raises(ValueError, match="multi-context only"):
        client.close_context("c1", 5.0)
    with pytest.raises(ValueError, match="multi-context only"):
        client.close_socket(5.0)
    with pytest.raises(ValueError, match="no context ids"):
        ClientProtocol(multi=False).open_context("c1", 0.0)


def test_client_multi_messages() -> None:
    client = ClientProtocol()
    client.open_context("c1", 0.0)
    client.send_text("c1", "Hi. ", 1.0, flush=True)
    client.flush("c1", 2.0, text="tail ")
    client.keep_alive("c1", 3.0)
    client.keep_alive(None, 4.0)
    client.close_context("c1", 5.0)
    client.close_context("c1", 5.5)  # a second close is a no-op
    client.keep_alive("c1", 5.6)  # skipped: closed
    client.close_socket(6.0)
    assert sent(client) == [
        {"text": " ", "context_id": "c1"},
        {"text": "Hi. ", "context_id": "c1", "flush": True},
        {"text": "tail ", "context_id": "c1", "flush": True},
        {"text": "", "context_id": "c1"},
        {"text": ""},
        {"context_id": "c1", "close_context": True},
        {"close_socket": True},
    ]
    with pytest.raises(ValueError, match="close_socket"):
        client.open_context("c2", 7.0)


def test_client_refuses_misuse_with_clear_errors() -> None:
    client = ClientProtocol()
    with pytest.raises(ValueError, match="open_context first"):
        client.send_text("c1", "x", 0.0)
    client.open_context("c1", 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        client.send_text("c1", "", 0.0)
    with pytest.raises(ValueError, match="already open"):
        client.open_context("c1", 0.0)
    with pytest.raises(ValueError, match="never opened"):
        client.keep_alive("zz", 0.0)
    with pytest.raises(ValueError, match="single-context only"):
        client.end_of_input(0.0)
    assert client.data_to_send() == [
        json.dumps({"text": " ", "context_id": "c1"}, separators=(",", ":"))
    ]


def test_client_enforces_max_contexts_counting_closed_ones_until_final() -> None:
    client = ClientProtocol()
    for i in range(MAX_CONTEXTS):
        client.open_context(f"c{i}", 0.0)
    client.close_context("c0", 1.0)
    with pytest.raises(TooManyContextsError) as info:
        client.open_context("c5", 1.0)
    assert info.value.error == "max_active_conversations"
    assert client.counted_contexts == MAX_CONTEXTS
    assert client.receive(json.dumps({"isFinal": True, "contextId": "c0"}), 2.0) == [
        ContextFinal("c0")
    ]
    client.open_context("c5", 2.0)
    assert client.counted_contexts == MAX_CONTEXTS


def test_client_keepalive_due() -> None:
    client = ClientProtocol()
    assert client.keepalive_due(100.0, 10.0) == []  # nothing sent yet: not connected
    client.open_context("a", 0.0)
    client.open_context("b", 5.0)
    assert client.keepalive_due(9.0, 10.0) == []
    assert client.keepalive_due(12.0, 10.0) == ["a"]
    client.keep_alive("a", 12.0)
    assert client.keepalive_due(16.0, 10.0) == ["b"]
    client.close_context("a", 16.0)
    client.close_context("b", 16.0)
    assert client.keepalive_due(25.0, 10.0) == []
    assert client.keepalive_due(26.0, 10.0) == [None]  # between turns: the bare socket keep-alive
    single = ClientProtocol(multi=False)
    single.open_context(None, 0.0)
    assert single.keepalive_due(10.0, 10.0) == [None]


def test_client_parses_audio_alignment_and_final_in_both_spellings() -> None:
    client = ClientProtocol()
    client.open_context("c1", 0.0)
    events = client.receive(
        audio_frame(b"pcm", contextId="c1", alignment=ALIGN, normalizedAlignment=ALIGN), 1.0
    )
    expected_alignment = Alignment(("H", "i"), (0, 50), (50, 60))
    assert events == [AudioReceived("c1", b"pcm", expected_alignment, expected_alignment)]
    other = {"chars": ["H", "i"], "charStartTimesMs": [0, 50], "charsDurationsMs": [50, 60]}
    events = client.receive(audio_frame(b"x", context_id="c1", alignment=other), 1.0)
    assert events == [AudioReceived("c1", b"x", expected_alignment, None)]
    client.close_context("c1", 2.0)
    # audio after close_context is still valid until the final
    assert of_type(client.receive(audio_frame(contextId="c1"), 3.0), AudioReceived)
    assert client.receive(json.dumps({"isFinal": True, "audio": None, "contextId": "c1"}), 4.0) == [
        ContextFinal("c1")
    ]
    assert client.receive(audio_frame(contextId="c1"), 5.0) == [StaleAudio("c1")]
    assert client.receive(audio_frame(contextId="never"), 5.0) == [StaleAudio("never")]


def test_client_single_context_final_ends_the_stream() -> None:
    client = ClientProtocol(multi=False)
    client.open_context(None, 0.0)
    assert of_type(client.receive(audio_frame(alignment=None), 1.0), AudioReceived)
    client.end_of_input(1.0)
    assert not client.done
    assert client.receive(json.dumps({"isFinal": True}), 2.0) == [ContextFinal(None)]
    assert client.done


def test_client_error_frames_and_unknown_frames() -> None:
    client = ClientProtocol()
    client.open_context("c1", 0.0)
    error = {"message": "Too many", "error": "max_active_conversations", "code": 1008}
    assert client.receive(json.dumps(error), 1.0) == [
        ServerError("max_active_conversations", "Too many", 1008)
    ]
    flush_done = {"type": "flush_done", "context_id": "c1", "request_id": "r"}
    (ignored,) = client.receive(json.dumps(flush_done), 1.0)
    assert isinstance(ignored, IgnoredFrame)
    (ignored,) = client.receive(json.dumps({"isFinal": True, "contextId": "zz"}), 1.0)
    assert isinstance(ignored, IgnoredFrame)


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        (b"\x00binary", "binary"),
        ("not json", "JSON"),
        ("[1]", "JSON object"),
        (audio_frame(contextId=5), "contextId"),
        (json.dumps({"audio": "@@not base64@@", "contextId": "c1"}), "base64"),
        (json.dumps({"audio": 12, "contextId": "c1"}), "audio"),
        (json.dumps({"isFinal": "yes", "contextId": "c1"}), "isFinal"),
    ],
)
def test_client_turns_bad_server_frames_into_violations(frame: str | bytes, needle: str) -> None:
    client = ClientProtocol()
    client.open_context("c1", 0.0)
    events = client.receive(frame, 1.0)
    violations = of_type(events, ProtocolViolation)
    assert violations and needle in violations[0].reason
    assert client.open_contexts == ["c1"]


def test_client_keeps_audio_when_only_its_alignment_is_broken() -> None:
    client = ClientProtocol()
    client.open_context("c1", 0.0)
    bad = {"chars": ["a", "b"], "charStartTimesMs": [0], "charDurationsMs": [1, 2]}
    events = client.receive(audio_frame(b"ok", contextId="c1", alignment=bad), 1.0)
    assert isinstance(events[0], ProtocolViolation) and "equal lengths" in events[0].reason
    assert events[1] == AudioReceived("c1", b"ok", None, None)


# ----------------------------------------------------------------------------- classify_close


def test_classify_close() -> None:
    assert isinstance(classify_close(1008, INACTIVITY_REASON(20)), InactivityTimeoutError)
    assert isinstance(classify_close(1008, SETTINGS_CHANGED_REASON), SettingsChangedError)
    assert isinstance(classify_close(1008, "max_active_conversations"), TooManyContextsError)
    assert isinstance(classify_close(1008, "Quota exceeded for this key"), QuotaExceededError)
    generic = classify_close(1011, "internal error")
    assert type(generic) is ProtocolError and generic.code == 1011
    assert "1011" in str(generic) and "internal error" in str(generic)
    timeout = classify_close(1008, INACTIVITY_REASON(20))
    assert timeout.code == 1008 and "keep-alive" in str(timeout)


# -------------------------------------------------------------------------------- secrets


def test_no_event_or_error_shows_a_key() -> None:
    server = make_server(multi=True, header_api_key=Secret(KEY))
    events = send(server, {"text": " ", "context_id": "c1", "xi_api_key": KEY})
    events += send(server, {"text": " ", "context_id": "c2", "xi-api-key": KEY, "bogus": 1})
    events += send(server, {"text": 1, "context_id": "c1", "xi_api_key": KEY})
    assert events and all(KEY not in repr(e) and KEY not in str(e) for e in events)
    assert all(KEY not in str(f) for f in server.data_to_send())
    err = TooManyContextsError(message="x")
    assert KEY not in repr(err)
    client = ClientProtocol()
    client.open_context("c1", 0.0, api_key=Secret(KEY))
    assert KEY not in repr(client.__dict__.get("_contexts"))


# ------------------------------------------------------------------------- client <-> server


def test_client_and_server_roles_speak_to_each_other() -> None:
    client = ClientProtocol()
    server = make_server(multi=True)
    now = 0.0

    def pump() -> list[ServerEvent]:
        events: list[ServerEvent] = []
        for frame in client.data_to_send():
            events += server.receive(frame, now)
        return events

    client.open_context(
        "turn1", now, voice_settings=VoiceSettings(stability=0.4), api_key=Secret(KEY)
    )
    for token in ["Hello", " there", "!", " How", " are", " you", "?"]:
        client.send_text("turn1", token, now)
    client.flush("turn1", now)
    client.close_context("turn1", now)
    events = pump()
    assert of_type(events, ContextStarted)[0].api_key == Secret(KEY)
    assert synthesized(events) == ["Hello there! How are you?"]
    assert events[-1] == ContextEnded("turn1", "close")
    server.send_audio("turn1", b"\x00\x01" * 100, Alignment(("H",), (0,), (10,)), None)
    server.send_final("turn1")
    received: list[Any] = []
    for frame in server.data_to_send():
        assert isinstance(frame, str)
        received += client.receive(frame, now)
    assert [type(e) for e in received] == [AudioReceived, ContextFinal]
    assert client.counted_contexts == 0
    client.close_socket(now)
    assert pump() == [SocketEnding(1000, "")]
    assert server.data_to_send() == [Close(1000, "")]
    assert client.done


# ------------------------------------------------------------------------------------ fuzzing

_json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_server_keys = st.sampled_from(
    [
        "text",
        "context_id",
        "flush",
        "try_trigger_generation",
        "close_context",
        "close_socket",
        "voice_settings",
        "generation_config",
        "pronunciation_dictionary_locators",
        "xi_api_key",
        "other",
    ]
)
_client_keys = st.sampled_from(
    [
        "audio",
        "isFinal",
        "alignment",
        "normalizedAlignment",
        "contextId",
        "context_id",
        "error",
        "message",
        "code",
        "type",
    ]
)
_plausible_values = (
    _json_values
    | st.sampled_from(["", " ", "Hello ", "c1", "c2", "AAAA", "!!", "Hi. There"])
    | st.just(ALIGN)
    | st.just({"stability": 0.5})
    | st.just({"chunk_length_schedule": [50]})
)


def _frames(keys: st.SearchStrategy[str]) -> st.SearchStrategy[str | bytes]:
    objects = st.dictionaries(keys, _plausible_values, max_size=5).map(json.dumps)
    return objects | st.text(max_size=40) | st.binary(max_size=20) | _json_values.map(json.dumps)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    multi=st.booleans(),
    frames=st.lists(_frames(_server_keys), max_size=25),
    times=st.lists(st.floats(0, 30), max_size=25),
)
def test_fuzz_server_never_raises(
    multi: bool, frames: list[str | bytes], times: list[float]
) -> None:
    server = make_server(multi=multi)
    now = 0.0
    for i, frame in enumerate(frames):
        now += times[i] if i < len(times) else 1.0
        server.receive(frame, now)
        server.tick(now)
        for ctx in list(server.open_contexts):
            server.send_audio(ctx, b"a", None, None)
        output = server.data_to_send()
        assert all(isinstance(f, (str, Close)) for f in output)
        closes = [f for f in output if isinstance(f, Close)]
        assert len(closes) <= 1 and (not closes or output[-1] is closes[0])
        assert server.active_contexts <= MAX_CONTEXTS
        deadline = server.next_deadline()
        assert deadline is None or deadline >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multi=st.booleans(), frames=st.lists(_frames(_client_keys), max_size=25))
def test_fuzz_client_never_raises(multi: bool, frames: list[str | bytes]) -> None:
    client = ClientProtocol(multi=multi)
    client.open_context("c1" if multi else None, 0.0)
    for frame in frames:
        events = client.receive(frame, 1.0)
        assert events  # every frame is accounted for


def test_protocol_error_accepts_both_construction_styles() -> None:
    a = ProtocolError(1008, "invalid_api_key", "Invalid API key.")
    b = ProtocolError("Invalid API key.", code=1008, error="invalid_api_key")
    c = ProtocolError(code=1008, error="invalid_api_key", message="Invalid API key.")
    for err in (a, b, c):
        assert (err.code, err.error, err.message) == (1008, "invalid_api_key", "Invalid API key.")
        assert str(err) == "Invalid API key."
        assert err.to_frame() == {
            "error": "invalid_api_key",
            "message": "Invalid API key.",
            "code": 1008,
        }
    too_many = TooManyContextsError("slow down")
    assert (too_many.code, too_many.error) == (1008, "max_active_conversations")
