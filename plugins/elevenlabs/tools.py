"""The guide's scripts as functions: speak text to a file (`voxloop say`) and measure time to
first byte the way the `elevenlabs-latency` tool does (`voxloop latency`)."""

from __future__ import annotations

import re
import statistics
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.formats import Decoder, OutputFormat, parse_output_format

#: The latency tool's sentence: 121 characters.
LATENCY_SENTENCE = (
    "The quick brown fox jumps over the lazy dog, and the streaming voice server "
    "measures how soon the first audio comes back."
)


@dataclass
class SayResult:
    """What `say` produced and how fast."""

    path: Path
    ttfb_s: float
    total_s: float
    audio_bytes: int
    audio_seconds: float


def output_name(text: str, extension: str) -> str:
    """A file name from the first words of the text: ``hello-world.mp3``."""
    slug = "-".join(re.findall(r"[a-z0-9]+", text.lower())[:6]) or "speech"
    return f"{slug[:48]}.{extension}"


async def say_to_file(
    text: str,
    *,
    base_url: str,
    api_key: str | None,
    out_dir: Path,
    voice_id: str,
    model_id: str | None,
    output_format: str = "mp3_44100_128",
    name: str | None = None,
) -> SayResult:
    """Open a socket, send ``text`` word by word as an LLM would, flush, close, write the file.

    mp3 formats are written as received (``.mp3``); every other format is decoded to a WAV file.
    Cancelling closes the socket and writes nothing.
    """
    fmt = parse_output_format(output_format)
    raw = fmt.codec == "mp3"
    config = TTSConfig(
        voice_id=voice_id,
        model_id=model_id,
        output_format=fmt.name,
        multi=False,
        decode_audio=not raw,
    )
    words = [w + " " for w in text.split()]
    if not words:
        raise ValueError("nothing to say: the text is empty")
    started = time.monotonic()
    audio = bytearray()
    async with ElevenLabsTTS(config, api_key=api_key, base_url=base_url) as tts:
        ctx = await tts.open_context()
        for word in words:
            await ctx.send(word)
        await ctx.flush()
        await ctx.close()
        async for chunk in ctx.chunks():
            audio += chunk.pcm
        ttfb = ctx.ttfb
    total = time.monotonic() - started
    path, seconds = await anyio.to_thread.run_sync(
        write_audio_file,
        bytes(audio),
        fmt,
        out_dir,
        name or output_name(text, "mp3" if raw else "wav"),
    )
    return SayResult(path, ttfb or float("nan"), total, len(audio), seconds)


def write_audio_file(
    audio: bytes, fmt: OutputFormat, folder: Path, name: str
) -> tuple[Path, float]:
    """Write mp3 as received, anything else (decoded PCM) as WAV; return (path, seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if fmt.codec == "mp3":
        path.write_bytes(audio)
        decoder = Decoder(fmt)
        return path, len(decoder.decode(audio) + decoder.finish()) / 2 / fmt.sample_rate
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(fmt.sample_rate)
        wav.writeframes(audio)
    return path, len(audio) / 2 / fmt.sample_rate


@dataclass
class LatencyTrial:
    """One trial: seconds to the first audio and to the final message."""

    ttfb_s: float
    total_s: float


@dataclass
class LatencyReport:
    """All trials and their summary."""

    trials: list[LatencyTrial]

    @property
    def mean_ttfb_s(self) -> float:
        return statistics.fmean(t.ttfb_s for t in self.trials)

    @property
    def median_ttfb_s(self) -> float:
        return statistics.median(t.ttfb_s for t in self.trials)

    def percentile_ttfb_s(self, q: float) -> float:
        """The q-th percentile (0..100) of TTFB, nearest-rank."""
        values = sorted(t.ttfb_s for t in self.trials)
        rank = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
        return values[rank]

    def to_dict(self) -> dict[str, object]:
        return {
            "trials": [asdict(t) for t in self.trials],
            "mean_ttfb_s": self.mean_ttfb_s,
            "median_ttfb_s": self.median_ttfb_s,
            "p95_ttfb_s": self.percentile_ttfb_s(95),
        }


async def latency_trial(
    *,
    base_url: str,
    api_key: str | None,
    voice_id: str,
    model_id: str | None,
    output_format: str = "mp3_44100_128",
    sentence: str = LATENCY_SENTENCE,
) -> LatencyTrial:
    """One trial as the latency tool runs it: a new socket, the init, then the clock starts;
    the sentence and ``""``; time to the first audio and to the final message (handshake
    excluded). Cancelling closes the socket."""
    config = TTSConfig(
        voice_id=voice_id,
        model_id=model_id,
        output_format=output_format,
        multi=False,
        decode_audio=False,
    )
    async with ElevenLabsTTS(config, api_key=api_key, base_url=base_url) as tts:
        ctx = await tts.open_context()
        started = time.monotonic()
        await ctx.send(sentence + " ")
        await ctx.close()
        first: float | None = None
        async for _chunk in ctx.chunks():
            if first is None:
                first = time.monotonic() - started
        total = time.monotonic() - started
    if first is None:
        raise RuntimeError("the server sent no audio for the latency sentence")
    return LatencyTrial(first, total)
