"""Local end-of-turn detection: Smart Turn v3 (BSD-2-Clause, by Daily / pipecat) on onnxruntime.

Smart Turn is a Whisper-tiny encoder with an attention-pooling classifier (~8M parameters, int8).
It listens to the end of an utterance and says how likely it is that the speaker has finished
their turn, from intonation and pace as well as from the words. `SmartTurn` implements
`agent.interfaces.TurnDetector`: the voice loop asks it at the first short silence.

The weights ship inside the `pipecat-ai` wheel (``pipecat/audio/turn/smart_turn/data/
smart-turn-v3.2-cpu.onnx``). We take only that file: install the wheel without its dependencies,
``pip install --no-deps "pipecat-ai==1.14.0"`` (`dev.sh` does), and pipecat itself is never
imported. The features are computed here, with numpy:

- 16 kHz mono (other rates are resampled with soxr);
- the last 8 s of the utterance; a shorter one is padded with zeros *at the start*, so the end
  of speech always sits at the end of the window;
- the waveform normalized to zero mean and unit variance (over the whole padded window);
- a Whisper log-mel spectrogram: 400-sample periodic Hann window, hop 160, centred frames with
  reflect padding, power spectrum, 80 Slaney mel bands over 0-8 kHz with Slaney area
  normalization, log10 (floor 1e-10), clipped to 8 below the maximum, then (x + 4) / 4; the last
  of the 801 frames is dropped: a (80, 800) float32 matrix;
- the model's input ``input_features`` is (batch, 80, 800); its one output (named ``logits``)
  is already a sigmoid probability that the turn is complete, compared with 0.5.

Cost, measured on this project's shared 2-core machine (AMD EPYC, one intra-op thread): about
55 ms of CPU per call, whatever the utterance's length (the window is always 8 s): ~45-50 ms in
the model, ~5-10 ms for the features. In wall time: 60-140 ms per call alone (median ~110 ms,
load average 6: other work competing for both cores), median 140 ms (max ~320) inside a running
conversation (`bench.turn_taking`, load average 3.5).

The recipe comes from pipecat's ``local_smart_turn_v3.py`` and ``_whisper_features.py`` and
smart-turn's ``inference.py``; `tests/data/smart_turn_reference.json` checks these features
against transformers' ``WhisperFeatureExtractor``, which smart-turn itself uses. On the scripted
user's piper voice the model is far from perfect (`bench.turn_taking`'s "model alone" table:
83-92 % right at the real end, 36-67 % right 200 ms into a mid-sentence pause): its verdict
leans on intonation, and synthesized speech often sounds finished where the words are not.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
import numpy as np
import numpy.typing as npt
import soxr

from agent.errors import VoxloopError
from agent.interfaces import TurnGuess

__all__ = [
    "DEFAULT_THRESHOLD",
    "MODEL_FILE",
    "PIPECAT_WHEEL",
    "SMART_TURN_SAMPLE_RATE",
    "SmartTurn",
    "SmartTurnUnavailable",
    "bundled_model_path",
    "log_mel_features",
    "model_window",
]

SMART_TURN_SAMPLE_RATE = 16000
WINDOW_SECONDS = 8
WINDOW_SAMPLES = WINDOW_SECONDS * SMART_TURN_SAMPLE_RATE
DEFAULT_THRESHOLD = 0.5
"""Above this probability the turn is complete (the threshold pipecat and smart-turn use)."""

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
PIPECAT_WHEEL = "pipecat-ai==1.14.0"
INSTALL_HINT = f'pip install --no-deps "{PIPECAT_WHEEL}"'
_MODEL_DIR_IN_PACKAGE = ("audio", "turn", "smart_turn", "data")

_N_FFT = 400
_HOP = 160
_N_MELS = 80
_N_FRAMES = WINDOW_SAMPLES // _HOP  # 800: the 801st (centred) frame is dropped
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # log10 units kept below the loudest value (80 dB)
_VARIANCE_EPSILON = 1e-7

FloatArray = npt.NDArray[np.float32]


class SmartTurnUnavailable(VoxloopError, RuntimeError):
    """The Smart Turn model or its runtime is missing; the message says what to install."""


# -- features -------------------------------------------------------------------------------------


def _slaney_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Hz to mels on the Slaney (Auditory Toolbox) scale: linear to 1 kHz, logarithmic above."""
    linear = hz / (200.0 / 3.0)
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz < 1000.0, linear, logarithmic)


def _slaney_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The inverse of `_slaney_mel`."""
    linear = mel * (200.0 / 3.0)
    logarithmic = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel < 15.0, linear, logarithmic)


def _mel_filters() -> npt.NDArray[np.float64]:
    """(80, 201) triangles on the FFT bins, each scaled to unit area (Slaney normalization)."""
    bin_hz = np.linspace(0.0, SMART_TURN_SAMPLE_RATE / 2, _N_FFT // 2 + 1)
    top = _slaney_mel(np.array([SMART_TURN_SAMPLE_RATE / 2.0]))[0]
    edges = _slaney_hz(np.linspace(0.0, top, _N_MELS + 2))  # lower, centre, upper per band
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    return triangles * (2.0 / (upper - lower))


_FILTERS = _mel_filters()
# The filterbank as its non-zero weights, band after band (each band a contiguous, non-empty run
# of bins): applied with a gather and `np.add.reduceat` instead of a matrix product, because a
# product this small is slower through a multi-threaded BLAS on a busy machine (tens of ms
# instead of one, measured on 2 shared cores) and threads are the caller's to spend.
_BANDS, _BINS = np.nonzero(_FILTERS)
_WEIGHTS = _FILTERS[_BANDS, _BINS]
_BAND_STARTS = np.searchsorted(_BANDS, np.arange(_N_MELS))
assert np.array_equal(np.unique(_BANDS), np.arange(_N_MELS)), "every mel band covers a bin"
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(_N_FFT) / _N_FFT)  # periodic
_FRAME_STARTS = np.arange(_N_FRAMES)[:, None] * _HOP + np.arange(_N_FFT)[None, :]


def model_window(samples: npt.ArrayLike) -> FloatArray:
    """The last 8 s of 16 kHz audio, zero-padded at the start to exactly 128000 samples."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    if audio.size >= WINDOW_SAMPLES:
        return np.ascontiguousarray(audio[audio.size - WINDOW_SAMPLES :])
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    window[WINDOW_SAMPLES - audio.size :] = audio
    return window


def log_mel_features(samples: npt.ArrayLike) -> FloatArray:
    """Smart Turn's (80, 800) input from 16 kHz float audio (see the module doc for the recipe).

    Audio of any length is first cut or padded to the model's window (`model_window`)."""
    window = model_window(samples)
    normalized = (window - window.mean()) / np.sqrt(window.var() + _VARIANCE_EPSILON)
    half = _N_FFT // 2
    padded = np.pad(normalized.astype(np.float64), half, mode="reflect")
    frames = padded[_FRAME_STARTS] * _HANN  # (800, 400): the centred frames but the last
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (800, 201)
    mel = np.add.reduceat(power[:, _BINS] * _WEIGHTS, _BAND_STARTS, axis=1)  # (800, 80)
    log_mel = np.log10(np.maximum(mel.T, _LOG_FLOOR))  # (80, 800)
    log_mel = np.maximum(log_mel, log_mel.max() - _DYNAMIC_RANGE)
    return np.asarray((log_mel + 4.0) / 4.0, dtype=np.float32)


# -- the model ------------------------------------------------------------------------------------


def bundled_model_path() -> Path:
    """Where the `pipecat-ai` wheel put the Smart Turn v3 weights (pipecat is not imported).

    Raises `SmartTurnUnavailable` naming the install command if the wheel or the file is
    missing."""
    spec = importlib.util.find_spec("pipecat")  # a top-level name: found, not executed
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        raise SmartTurnUnavailable(
            "Smart Turn's weights ship in the pipecat-ai wheel, which is not installed. "
            f"Install only the weights with: {INSTALL_HINT}"
        )
    for root in roots:
        path = Path(root).joinpath(*_MODEL_DIR_IN_PACKAGE, MODEL_FILE)
        if path.is_file():
            return path
    raise SmartTurnUnavailable(
        f"The installed pipecat package has no {MODEL_FILE} (looked in {roots[0]}). "
        f"Install the version that ships it, without its dependencies: {INSTALL_HINT}"
    )


class SmartTurn:
    """An `agent.interfaces.TurnDetector` over Smart Turn v3, fully offline.

    ``predict(pcm, sample_rate)`` takes the utterance so far (16-bit mono PCM, any rate, from its
    onset) and answers a `TurnGuess`: ``probability`` that the turn is complete, ``complete``
    when it is above ``threshold`` (default 0.5, the model's), and ``compute_seconds`` (~55 ms
    of CPU, more in wall time on a busy machine: see the module doc). Empty audio is "not
    complete" at probability 0 without running the model; a trailing odd byte is ignored.

    ``model_path`` defaults to the weights in the `pipecat-ai` wheel (`bundled_model_path`).
    The session is loaded on first use and shared by every `SmartTurn` of the process; call
    `load()` (blocking) or enter ``async with`` to pay that cost (~0.2 s here) up front.
    """

    _sessions: ClassVar[dict[tuple[str, int], Any]] = {}
    _sessions_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        cpu_threads: int = 1,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold!r}")
        if cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {cpu_threads!r}")
        self.model_path = Path(model_path) if model_path is not None else bundled_model_path()
        self.threshold = threshold
        self.cpu_threads = cpu_threads

    def __repr__(self) -> str:
        return f"SmartTurn(model_path={str(self.model_path)!r}, threshold={self.threshold})"

    def load(self) -> None:
        """Load the model if no SmartTurn has loaded it yet (blocking, a fraction of a second)."""
        self._session()

    async def __aenter__(self) -> SmartTurn:
        """Load the model in a worker thread, so the first pause does not wait for it.
        Cancelling abandons the wait (the load finishes in its thread)."""
        await anyio.to_thread.run_sync(self.load, abandon_on_cancel=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Nothing to close: loaded sessions stay cached for the process."""

    def _session(self) -> Any:
        key = (str(self.model_path.resolve()), self.cpu_threads)
        with self._sessions_lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._load_session()
                self._sessions[key] = session
        return session

    def _load_session(self) -> Any:
        if not self.model_path.is_file():
            raise SmartTurnUnavailable(
                f"No Smart Turn model at {self.model_path}. Pass the path of a Smart Turn v3 "
                f".onnx file, or install the bundled one with: {INSTALL_HINT}"
            )
        try:
            import onnxruntime
        except ImportError as error:
            raise SmartTurnUnavailable(
                f"Smart Turn runs on onnxruntime ({error}). "
                "Install it with: pip install 'voxloop[local]'"
            ) from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.cpu_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise SmartTurnUnavailable(
                f"Could not load the Smart Turn model {self.model_path}: {error}. "
                f"Reinstall it with: {INSTALL_HINT}"
            ) from error

    def predict_sync(self, pcm: bytes, sample_rate: int) -> TurnGuess:
        """The verdict on 16-bit mono PCM at ``sample_rate`` (blocking; loads on first use)."""
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        usable = len(pcm) - len(pcm) % 2
        if usable == 0:
            return TurnGuess(complete=False, probability=0.0)
        session = self._session()
        started = time.perf_counter()
        samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
        if sample_rate != SMART_TURN_SAMPLE_RATE:
            # only the window's worth (plus filter margin) needs resampling
            keep = min(samples.size, int(WINDOW_SECONDS * sample_rate) + sample_rate // 10)
            samples = soxr.resample(
                samples[samples.size - keep :], sample_rate, SMART_TURN_SAMPLE_RATE, quality="HQ"
            )
        features = log_mel_features(samples)[np.newaxis]
        (output,) = session.run(None, {"input_features": features})
        probability = float(np.asarray(output).reshape(-1)[0])
        return TurnGuess(
            complete=probability > self.threshold,
            probability=probability,
            compute_seconds=time.perf_counter() - started,
        )

    async def predict(self, pcm: bytes, sample_rate: int) -> TurnGuess:
        """The verdict on the utterance so far, computed in a worker thread.

        Cancelling abandons the verdict: the caller returns at once, while the worker thread
        finishes its one inference in the background and the result is dropped.
        """
        return await anyio.to_thread.run_sync(
            self.predict_sync, pcm, sample_rate, abandon_on_cancel=True
        )
