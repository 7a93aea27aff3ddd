"""What an early first chunk costs in quality and buys in time: each answer sentence spoken
whole, and spoken as its first clause or first N words (the local TTS server's first-clause
rule, `FIRST_CLAUSE_MAX_WORDS`) followed by the rest, synthesized apart and played back to back
as the server plays them. Whisper (tiny.en, the product's STT, beam 5) reads every rendering
back; the table gives the mean word error rate per rendering and the median time piper needs
for the first piece (what the first chunk saves is the words the LLM no longer has to write
before speech starts: N words fewer at its token rate, plus a shorter first synthesis).

WER is a floor on what a listener hears: a break between the pieces costs prosody that whisper
does not score. Listen too: ``--wav-dir DIR`` writes every rendering.

    python -m bench.first_chunk                     # whole, 4, 5 and 6 words
    python -m bench.first_chunk --words 3 4 6 --wav-dir /tmp/first_chunk

Bounded: the sentences below, once per setting; no network.
"""

from __future__ import annotations

import argparse
import statistics
import time
import wave
from pathlib import Path
from typing import Any

from bench._report import print_grid, write_json
from plugins.elevenlabs.textbuffer import FIRST_CLAUSE_MAX_WORDS, _first_clause_end

SENTENCES = (
    "The museum opens at nine tomorrow morning and closes at five, with the last entry at four.",
    "Adult tickets are twelve dollars, and children under six get in free.",
    "You can buy them at the front desk or online before you come.",
    "The sky on a clear day is usually a deep shade of blue.",
    "A week has seven days, from Monday through Sunday.",
    "Grass is green because its leaves are full of chlorophyll.",
    "The season that comes after winter is spring, when the days grow longer.",
    "A dog has four legs and a tail that it wags when it is happy.",
    "Bees make honey from the nectar they collect from flowers.",
    "Your appointment is on Friday at half past three in the afternoon.",
    "The nearest pharmacy is two streets away, next to the post office.",
    "I have booked a table for four people at eight o'clock tonight.",
    "The train to the airport leaves every fifteen minutes from platform two.",
    "Your package was delivered this morning and left at the front door.",
    "The weather in Paris today is sunny with a high of twenty degrees.",
    "You are welcome, and I hope you have a wonderful rest of your day.",
)


def split(sentence: str, max_words: int) -> tuple[str, str]:
    """The server's first piece (clause or `max_words` words) and the rest."""
    cut = _first_clause_end(sentence + " ", max_words)
    if cut == 0 or cut >= len(sentence):
        return sentence, ""
    return sentence[:cut], sentence[cut:]


def speak(engine: Any, text: str) -> tuple[bytes, float]:
    started = time.perf_counter()
    pcm = b"".join(chunk.pcm for chunk in engine.synthesize(text))
    return pcm, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--words", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--wav-dir", type=Path, help="write every rendering here")
    args = parser.parse_args()

    from agent.audio import resample
    from plugins.local.piper_tts import PiperEngine
    from plugins.local.whisper_stt import WhisperSTT
    from tests.textmetrics import wer

    engine = PiperEngine.load()
    stt = WhisperSTT()
    stt.load()
    settings: list[int | None] = [None, *sorted(set(args.words))]
    data: dict[str, Any] = {"default_words": FIRST_CLAUSE_MAX_WORDS, "settings": []}
    rows = []
    for words in settings:
        wers, firsts, heads = [], [], []
        for i, sentence in enumerate(SENTENCES):
            head, rest = (sentence, "") if words is None else split(sentence, words)
            pcm, first = speak(engine, head)
            if rest:
                pcm += speak(engine, rest.strip())[0]
            heard = stt.transcribe_sync(resample(pcm, engine.sample_rate, 16000), 16000).text
            wers.append(wer(sentence, heard))
            firsts.append(first * 1000)
            heads.append(head)
            if args.wav_dir is not None:
                args.wav_dir.mkdir(parents=True, exist_ok=True)
                name = "whole" if words is None else f"{words}words"
                with wave.open(str(args.wav_dir / f"{i:02d}-{name}.wav"), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(engine.sample_rate)
                    w.writeframes(pcm)
        label = "whole sentence" if words is None else f"first clause or {words} words"
        rows.append([
            label, f"{statistics.mean(wers):.3f}", f"{sum(w > 0 for w in wers)} of {len(wers)}",
            f"{statistics.median(len(h) for h in heads):.0f}", f"{statistics.median(firsts):.0f}",
        ])
        data["settings"].append(
            {"max_words": words, "wer": wers, "first_piece_ms": firsts, "first_pieces": heads}
        )
    print_grid(
        f"first chunk: {len(SENTENCES)} answer sentences, piper then whisper tiny.en",
        ["rendering", "mean WER", "lines with errors", "first piece chars", "piper first ms"],
        rows,
    )
    write_json("first_chunk", data)


if __name__ == "__main__":
    main()
