"""The demo's reports from a hand-built conversation: WAV, transcript, metrics, table, picture."""

from __future__ import annotations

import json
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.app.report import not_heard_text, turn_table, write_all
from agent.conversation import ConversationLog, Segment, TurnRecord

RATE = 16000


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _track(total: float, spans: list[tuple[float, float]], freq: float) -> bytes:
    """Silence with a tone in each span (stream seconds)."""
    out = np.zeros(round(total * RATE), dtype=np.int16)
    for start, end in spans:
        i = round(start * RATE)
        tone = _tone(end - start, freq)
        out[i : i + tone.size] = tone
    return out.astype("<i2").tobytes()


def turn(index: int, marks: dict[str, float], **fields: object) -> TurnRecord:
    """A turn whose timeline has ``marks``; the LLM request and the first text sent coincide
    with the transcript and the first token, and the end of turn with the speech end."""
    record = TurnRecord(index, **fields)  # type: ignore[arg-type]
    timeline = dict(marks)
    timeline.setdefault("end_of_turn", marks["user_speech_end"])
    timeline.setdefault("llm_request", marks["transcript"])
    timeline.setdefault("first_text_sent", marks["first_token"])
    for name, t in timeline.items():
        record.timeline.mark(name, t)
    return record


def sample_log() -> ConversationLog:
    """Three turns; the second is interrupted by the third's question (a barge-in)."""
    turns = [
        turn(
            1,
            {
                "user_speech_start": 0.5,
                "user_speech_end": 2.0,
                "transcript": 2.35,
                "first_token": 2.61,
                "first_audio_byte": 2.76,
                "first_audio_played": 2.85,
                "audio_end": 5.2,
            },
            transcript="What is the capital of France?",
            agent_text="The capital of France is Paris.",
            heard_text="The capital of France is Paris.",
        ),
        turn(
            2,
            {
                "user_speech_start": 6.0,
                "user_speech_end": 8.2,
                "transcript": 8.5,
                "first_token": 8.8,
                "first_audio_byte": 9.0,
                "first_audio_played": 9.12,
                "barge_in_onset": 13.4,
                "barge_in_decided": 13.65,
                "output_silent": 13.72,
            },
            transcript="Tell me a long story about a dragon.",
            agent_text="Once upon a time, a dragon lived in a cave. He guarded gold for a "
            "hundred years until a brave knight came.",
            heard_text="Once upon a time, a dragon lived in a cave.",
            interrupted=True,
        ),
        turn(
            3,
            {
                "user_speech_start": 13.4,
                "user_speech_end": 15.0,
                "transcript": 15.31,
                "first_token": 15.52,
                "first_audio_byte": 15.66,
                "first_audio_played": 15.75,
                "audio_end": 17.0,
            },
            transcript="Thanks, that is all.",
            agent_text="You're welcome, goodbye!",
            heard_text="You're welcome, goodbye!",
        ),
    ]
    segments = [
        Segment("user", 0.5, 2.0, "What is the capital of France?"),
        Segment("agent", 2.85, 5.2, "The capital of France is Paris."),
        Segment("user", 6.0, 8.2, "Tell me a long story about a dragon."),
        Segment(
            "agent", 9.12, 13.72, "Once upon a time, a dragon lived in a cave.", interrupted=True
        ),
        Segment("user", 13.4, 15.0, "Thanks, that is all."),
        Segment("agent", 15.75, 17.0, "You're welcome, goodbye!"),
    ]
    return ConversationLog(sample_rate=RATE, segments=segments, turns=turns)


def sample_audio() -> tuple[bytes, bytes]:
    user = _track(17.5, [(0.5, 2.0), (6.0, 8.2), (13.4, 15.0)], 220.0)
    agent = _track(17.0, [(2.85, 5.2), (9.12, 13.72), (15.75, 17.0)], 330.0)
    return user, agent


@pytest.fixture
def written(tmp_path: Path) -> dict[str, Path]:
    user, agent = sample_audio()
    return write_all(tmp_path / "demo", sample_log(), user, agent)


def test_stereo_wav_has_user_left_and_agent_right(written: dict[str, Path]) -> None:
    user, agent = sample_audio()
    with wave.open(str(written["audio"]), "rb") as wav:
        assert wav.getnchannels() == 2
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == RATE
        frames = wav.readframes(wav.getnframes())
    stereo = np.frombuffer(frames, dtype="<i2").reshape(-1, 2)
    assert stereo.shape[0] == max(len(user), len(agent)) // 2  # padded to the longer side
    assert stereo[:, 0].tobytes() == user
    right = stereo[:, 1]
    assert right[: len(agent) // 2].tobytes() == agent
    assert not right[len(agent) // 2 :].any()  # the shorter agent track padded with silence


def test_transcript_marks_the_interruption(written: dict[str, Path]) -> None:
    text = written["transcript"].read_text(encoding="utf-8")
    assert "[00:00.50–00:02.00] **user:** What is the capital of France?" in text
    assert "agent (interrupted at 00:13.72; heard):** Once upon a time, a dragon lived" in text
    assert "(not heard: He guarded gold for a hundred years until a brave knight came.)" in text
    assert "**agent:** You're welcome, goodbye!" in text
    assert text.count("interrupted at") == 1


def test_not_heard_falls_back_to_word_count() -> None:
    turn = sample_log().turns[1]
    turn.heard_text = "Once upon a time a dragon"  # punctuation lost: not a string prefix
    assert (
        not_heard_text(turn) == "lived in a cave. He guarded gold for a hundred years "
        "until a brave knight came."
    )


def test_metrics_json_has_turns_and_medians(written: dict[str, Path]) -> None:
    data = json.loads(written["metrics"].read_text(encoding="utf-8"))
    assert len(data["turns"]) == 3
    assert data["turns"][1]["interrupted"] is True
    s = data["summary"]
    # voice-to-voice: 850, 920, 750 -> median 850
    assert s["median_voice_to_voice_ms"] == pytest.approx(850)
    assert s["median_stt_ms"] == pytest.approx(310)  # 350, 300, 310
    assert s["median_ttft_ms"] == pytest.approx(260)  # 260, 300, 210
    assert s["median_ttfb_ms"] == pytest.approx(150)  # 150, 200, 140
    assert s["median_barge_in_reaction_ms"] == pytest.approx(320)  # only turn 2
    assert s["interrupted_turns"] == 1


def test_timeline_is_a_png_of_the_expected_size(written: dict[str, Path]) -> None:
    data = written["timeline"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1600, 700)
    assert len(data) > 20_000  # drawn, not blank


def test_turn_table_shows_the_numbers() -> None:
    table = turn_table(sample_log())
    lines = table.splitlines()
    row2 = next(line for line in lines if line.startswith("2 "))
    assert "920" in row2  # voice-to-voice
    assert "320" in row2  # barge-in reaction
    assert "✂ Once upon a time" in row2
    row1 = next(line for line in lines if line.startswith("1 "))
    assert "350" in row1 and "610 (+260)" in row1 and "760 (+150)" in row1 and "850" in row1
    assert "—" in row1  # no barge-in in turn 1
    assert "medians: voice-to-voice 850 ms" in lines[-1]


def test_missing_times_show_a_dash() -> None:
    log = ConversationLog(sample_rate=RATE, turns=[TurnRecord(index=1, error="LLM down")])
    table = turn_table(log)
    assert "[error]" in table
    assert table.count("—") >= 5


def test_tool_calls_show_in_the_transcript_metrics_and_picture(tmp_path: Path) -> None:
    from agent.conversation import ToolRecord

    log = sample_log()
    first = log.turns[0]
    first.timeline.mark("first_tool_call", 2.4)
    first.timeline.mark("tool_results", 2.6)
    first.tools = [
        ToolRecord("c1", "get_weather", '{"city": "Paris"}', "ok", "sunny", 0.2),
        ToolRecord("c2", "book_table", "{}", "ok", "booked", 1.5, spoken=False),
    ]
    user, agent = sample_audio()
    files = write_all(tmp_path / "tools", log, user, agent)
    text = files["transcript"].read_text(encoding="utf-8")
    assert '- tool: `get_weather({"city": "Paris"})` → ok in 200 ms' in text
    assert "book_table({}...)" not in text and "recorded, not spoken" in text
    turn = json.loads(files["metrics"].read_text(encoding="utf-8"))["turns"][0]
    assert [(t["name"], t["outcome"], t["seconds"]) for t in turn["tools"]] == [
        ("get_weather", "ok", 0.2),
        ("book_table", "ok", 1.5),
    ]
    assert turn["latencies_ms"]["tools"] == pytest.approx(200)
    assert files["timeline"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
