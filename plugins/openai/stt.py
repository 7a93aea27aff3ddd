"""Speech to text over the OpenAI transcription API (or any server that speaks it).

`OpenAISTT.transcribe()` wraps one utterance of PCM16 mono into an in-memory WAV file and posts
it to `audio.transcriptions.create` through `openai.AsyncOpenAI`. The key travels in the SDK's
Authorization header only; no error message, log line or repr ever contains it.
"""

from __future__ import annotations

import io
import time
import wave

import openai
from openai import AsyncOpenAI

from agent import errors
from agent.interfaces import Transcript
from plugins.openai.endpoint import describe_failure, resolve_endpoint

__all__ = ["OpenAISTT", "STTAuthError", "STTConfigError", "STTError", "pcm_to_wav"]


class STTError(errors.STTError):
    """The transcription service could not transcribe the utterance."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class STTConfigError(STTError):
    """Misconfigured locally (no API key for a remote service)."""


class STTAuthError(STTError):
    """The service rejected the credentials (HTTP 401/403). Retrying will not help."""


class OpenAISTT:
    """An `agent.interfaces.STT` over `POST {base_url}/audio/transcriptions`.

    api_key defaults to $OPENAI_API_KEY and base_url to $OPENAI_BASE_URL (then the OpenAI
    service); a loopback base_url without a key gets the placeholder "local". Use as
    `async with OpenAISTT(...) as stt:` (or call `aclose()`) to release the HTTP pool.
    """

    def __init__(
        self,
        model: str = "whisper-1",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        language: str | None = "en",
        prompt: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        self.model = model
        self.language = language
        self.prompt = prompt
        endpoint = resolve_endpoint(base_url, api_key)
        self._display_url = endpoint.display_url
        key = endpoint.key
        resolved_url = endpoint.url
        if key is None:
            raise STTConfigError(
                f"No API key for speech to text at {self._display_url}: set OPENAI_API_KEY "
                "(or pass api_key=), or point OPENAI_BASE_URL at a local OpenAI-compatible "
                "server (any placeholder key works there)."
            )
        self._key = key
        self._client = AsyncOpenAI(
            api_key=key, base_url=resolved_url, timeout=timeout, max_retries=max_retries
        )

    def __repr__(self) -> str:
        return f"OpenAISTT(model={self.model!r}, base_url={self._display_url!r})"

    @property
    def base_url(self) -> str:
        """The endpoint in use, without credentials or query string."""
        return self._display_url

    async def __aenter__(self) -> OpenAISTT:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool. Cancelling may leave connections to the GC."""
        await self._client.close()

    async def transcribe(self, pcm: bytes, sample_rate: int) -> Transcript:
        """Transcribe 16-bit mono PCM (sent as a WAV file at its own sample rate).

        Cancelling abandons the HTTP request (the connection is closed); nothing is returned.
        Raises STTAuthError for a rejected key and STTError for any other failure.
        """
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        usable = pcm[: len(pcm) - len(pcm) % 2]
        audio_seconds = len(usable) / 2 / sample_rate
        if not usable:
            return Transcript(text="", language=self.language or "en", audio_seconds=0.0)
        started = time.perf_counter()
        try:
            result = await self._client.audio.transcriptions.create(
                model=self.model,
                file=("utterance.wav", pcm_to_wav(usable, sample_rate), "audio/wav"),
                response_format="json",
                language=self.language if self.language is not None else openai.omit,
                prompt=self.prompt if self.prompt is not None else openai.omit,
            )
        except openai.OpenAIError as exc:
            raise self._translate(exc) from None
        return Transcript(
            text=result.text.strip(),
            language=self.language or "en",
            audio_seconds=audio_seconds,
            compute_seconds=time.perf_counter() - started,
        )

    def _translate(self, exc: openai.OpenAIError) -> STTError:
        """A clear, key-free error for an SDK failure."""
        where = f"{self._display_url} (model {self.model!r})"
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return STTAuthError(
                f"The speech-to-text service at {where} rejected the API key "
                f"(HTTP {exc.status_code}). Check OPENAI_API_KEY (and OPENAI_BASE_URL).",
                status_code=exc.status_code,
            )
        if isinstance(exc, openai.APIStatusError):
            hint = ""
            if exc.status_code == 404:
                hint = " Check the model name and that base_url ends in /v1."
            return STTError(
                f"The speech-to-text service at {where} refused the request: "
                f"{self._describe(exc)}.{hint}",
                status_code=exc.status_code,
            )
        if isinstance(exc, openai.APIConnectionError):
            return STTError(
                f"Cannot reach the speech-to-text service at {where}: {self._describe(exc)}. "
                "Is the server running? Check OPENAI_BASE_URL."
            )
        return STTError(f"Speech to text at {where} failed: {self._describe(exc)}")

    def _describe(self, exc: BaseException) -> str:
        return describe_failure(exc, self._key)


def pcm_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit mono PCM as the bytes of a WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()
