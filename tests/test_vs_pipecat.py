"""`bench.vs_pipecat` without Pipecat: its voxloop side answers turns from the scripted LLM
through the real local TTS server (piper), each in its own process, as the bench runs it.

The Pipecat side needs the bench's own Pipecat venv (a pip install of minutes), so it is left
to the bench itself.
"""

from __future__ import annotations

import pytest

from bench.vs_pipecat import ANSWER, answer_tokens, first_sentence_at, measure, rounds

pytestmark = [pytest.mark.anyio, pytest.mark.engines, pytest.mark.slow]


def test_the_scripted_answer_streams_word_by_word_and_joins_back() -> None:
    tokens = answer_tokens()
    assert "".join(tokens) == ANSWER
    assert all(t.startswith(" ") for t in tokens[1:])
    first = ANSWER.split(". ")[0].split(" ")
    assert first_sentence_at() == pytest.approx(0.1 + (len(first) - 1) * 0.03)


def test_rounds_interleave_the_sides_and_rotate_who_goes_first() -> None:
    assert rounds(["a", "b", "c"], 4) == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


async def test_the_voxloop_side_speaks_the_whole_answer_and_reports_its_turns() -> None:
    result = await measure(["voxloop"], turns=2, warmup=0, gap=0.0)
    side = result["sides"]["voxloop"]
    assert side["whole_answer_turns"] == 2 and not side["errors"]
    for turn in side["turns"]:
        assert turn["llm_requests"] == 1 and turn["asked_right"]
        # First audio only after the LLM's first token, and before the turn is over.
        assert 100 < turn["ttfa_ms"] < turn["turn_ms"]
        assert turn["first_token_to_audio_ms"] > 0
        assert turn["cpu_ms"] > 0
        assert turn["audio_s"] > 5  # three sentences of speech
    assert side["peak_rss_mb"] > 10
