"""OpenAISTT against a scripted OpenAI-compatible transcription server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import threading
import wave
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from plugins.openai.stt import OpenAISTT, STTAuthError, STTConfigError, STTError

SECRET = "sk-test-SECRET-never-shown-1234567890"


class FakeTranscriptionServer:
    """Answers POST /v1/audio/transcriptions: records the upload, replies as scripted."""

    def __init__(self) -> None:
        self.status = 200
        self.reply: dict[str, Any] = {"text": " hello from the fake server "}
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = BytesParser(policy=HTTP).parsebytes(head + body)
                fields = {
                    part.get_param("name", header="content-disposition"): part.get_payload(
                        decode=True
                    )
                    for part in message.iter_parts()
                }
                server.requests.append(
                    {"path": self.path, "auth": self.headers["Authorization"], "fields": fields}
                )
                payload = json.dumps(server.reply).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeTranscriptionServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeTranscriptionServer]:
    with FakeTranscriptionServer() as fake:
        yield fake


def transcribe(stt: OpenAISTT, pcm: bytes, rate: int) -> Any:
    async def main() -> Any:
        async with stt:
            return await stt.transcribe(pcm, rate)

    return anyio.run(main)


def test_uploads_a_wav_of_the_utterance_and_returns_the_text(
    server: FakeTranscriptionServer,
) -> None:
    pcm = bytes(range(256)) * 64  # 8192 samples
    stt = OpenAISTT("whisper-1", api_key=SECRET, base_url=server.base_url)
    transcript = transcribe(stt, pcm, 16000)
    assert transcript.text == "hello from the fake server"
    assert transcript.audio_seconds == pytest.approx(8192 / 16000)
    (request,) = server.requests
    assert request["path"] == "/v1/audio/transcriptions"
    assert request["auth"] == f"Bearer {SECRET}"  # the key goes in the header
    assert request["fields"]["model"] == b"whisper-1"
    assert request["fields"]["language"] == b"en"
    with wave.open(io.BytesIO(request["fields"]["file"])) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        assert wav.readframes(wav.getnframes()) == pcm


def test_rejected_key_gives_a_clear_error_without_the_key(
    server: FakeTranscriptionServer,
) -> None:
    server.status = 401
    server.reply = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    stt = OpenAISTT(api_key=SECRET, base_url=server.base_url, max_retries=0)
    with pytest.raises(STTAuthError) as info:
        transcribe(stt, b"\x00\x01" * 100, 8000)
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and "401" in message
    assert SECRET not in message and "SECRET" not in message
    assert SECRET not in repr(stt)


def test_other_server_errors_are_reported_without_the_key(
    server: FakeTranscriptionServer,
) -> None:
    server.status = 400
    server.reply = {"error": {"message": f"bad audio, key was {SECRET}"}}
    stt = OpenAISTT(api_key=SECRET, base_url=server.base_url, max_retries=0)
    with pytest.raises(STTError) as info:
        transcribe(stt, b"\x00\x01" * 100, 8000)
    assert "bad audio" in str(info.value)
    assert "SECRET" not in str(info.value)
    assert info.value.status_code == 400


def test_unreachable_server_says_so() -> None:
    stt = OpenAISTT(api_key=SECRET, base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=5)
    with pytest.raises(STTError, match="Cannot reach"):
        transcribe(stt, b"\x00\x01" * 100, 8000)


def test_missing_key_for_a_remote_service_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(STTConfigError, match="OPENAI_API_KEY"):
        OpenAISTT()


def test_loopback_server_needs_no_key(
    server: FakeTranscriptionServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    assert transcribe(OpenAISTT(), b"\x00\x01" * 100, 8000).text == "hello from the fake server"


def test_empty_audio_is_not_sent(server: FakeTranscriptionServer) -> None:
    stt = OpenAISTT(api_key=SECRET, base_url=server.base_url)
    assert transcribe(stt, b"", 16000).text == ""
    assert server.requests == []
