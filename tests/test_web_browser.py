"""The page in a real browser: headless Chromium (Debian's, installed by dev.sh) with a fake
microphone playing a WAV file, driven over the DevTools protocol (tests/browser/cdp.py).

The conversation runs on the real whisper STT and the real local TTS server with the piper
voice; the LLM is the scripted OpenAI-compatible server (a named fake, so answers and timing are
known). The fake microphone asks a question, then cuts the agent's long answer off.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent import AgentOptions, VadConfig
from agent.app.compose import AgentSettings, TTSEndpoint
from agent.app.web import WebBot
from agent.audio import resample, write_wav
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from plugins.web import PageLine, WebApp, WebConfig, running_web_server
from tests.browser.cdp import CHROMIUM, Chromium
from tests.fakes.scripted_llm import ScriptedChatServer, StreamReply, tokens
from tests.faults.support import eventually

if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError(
            f"{CHROMIUM} is missing under CI: dev.sh installs Debian's chromium "
            "(apt-get install chromium); the browser tests must run there"
        )
    pytest.skip(
        f"{CHROMIUM} is missing: run ./dev.sh setup (it installs Debian's chromium)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.anyio]

STORY = (
    "Once upon a time there was a little boat that sailed across the wide blue sea, "
    "looking for an island where the birds sang all day and the sand was warm and soft."
)
RATE = 48000


def paced(text: str, delay: float = 0.04) -> StreamReply:
    words = text.split(" ")
    return tokens(*[w if i == 0 else " " + w for i, w in enumerate(words)], delay=delay)


@pytest.fixture(scope="module")
def fake_mic(piper_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A question, then, ~3 s after it (well inside the long answer), an interruption."""

    def speak(text: str) -> bytes:
        pcm = b"".join(chunk.pcm for chunk in piper_engine.synthesize(text))
        return resample(pcm, piper_engine.sample_rate, RATE)

    def silence(seconds: float) -> bytes:
        return bytes(round(RATE * seconds) * 2)

    audio = (
        silence(0.6) + speak("What color is the sky?") + silence(3.2)
        + speak("Stop, thank you.") + silence(3.0)
    )
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    write_wav(path, audio, RATE)
    return path


@pytest.mark.engines
async def test_a_spoken_question_is_answered_and_a_barge_in_clears_the_page(
    piper_engine: Any, whisper_stt: Any, fake_mic: Path
) -> None:
    async with (
        ScriptedChatServer([paced(STORY), tokens("Okay.")]) as fake_llm,
        LocalTTSServer(piper_engine) as tts_server,
        OpenAILLM("scripted", base_url=fake_llm.base_url) as llm,
    ):
        bot = WebBot(
            settings=AgentSettings(instructions="You are a helpful voice assistant."),
            options=AgentOptions(vad=VadConfig(min_silence_ms=400)),  # echo guard on, as `web`
            stt=whisper_stt,
            llm=llm,
            tts_endpoint=TTSEndpoint(tts_server.url, None, local=True),
            say=lambda _line: None,
        )
        app = WebApp(bot, WebConfig())
        async with running_web_server(app) as url, Chromium(fake_mic) as browser:
            page = await browser.open_page(url + "/")
            await page.evaluate("document.getElementById('start').click()")
            user = await page.wait_for(
                "document.querySelector('#transcript .line.user')?.textContent", limit=20
            )
            # the question came through the page to the STT; piper's synthesis is random, and
            # tiny.en hears some renderings' "the sky" as "this guy": "color" it always hears
            assert "color" in user.lower()
            await page.wait_for("!!document.querySelector('#transcript .line.agent')", limit=10)
            await page.wait_for("window.voxloop.stats.clears > 0", limit=15)
            await anyio.sleep(0.1)
            stats = await page.evaluate("window.voxloop.stats")
            assert stats["queued"] == 0, "the clear dropped the page's queued audio at once"
            played_at_clear = stats["played"] / 16000
            cut = await page.wait_for(
                "(() => { const l = document.querySelector('.line.agent.interrupted');"
                " return l && {heard: l.querySelector('.heard').textContent,"
                " unheard: l.querySelector('.unheard').textContent,"
                " latency: l.querySelector('.latency').textContent}; })()",
                limit=10,
            )
            await page.wait_for("document.querySelectorAll('.line.user').length >= 2", limit=15)
            await page.wait_for(
                "document.querySelector('.line.agent:not(.interrupted) .latency')?.textContent",
                limit=15,
            )
            stats = await page.evaluate("window.voxloop.stats")
            transcript = await page.evaluate("document.getElementById('transcript').innerText")
            assert page.ws_binary_received > 10 and stats["audioSamples"] > 16000
            assert stats["played"] > 8000, "the page played the agent's voice"
            assert page.exceptions == [], page.exceptions
            assert stats["errors"] == []
            for state in ("listening", "user speaking", "thinking", "speaking"):
                assert state in stats["states"]
            await browser.close_page(page)
            assert await eventually(lambda: bool(bot.finished), limit=5), "closing ends it"
    (conversation,) = bot.finished
    story, okay = conversation.log.turns[:2]
    assert story.interrupted and okay.heard_text == "Okay."
    assert cut["heard"] == story.heard_text and STORY.startswith(cut["heard"])
    # what the page had really played bounds what counts as heard (about 2.5 words a second)
    assert 0 < len(story.heard_text.split()) <= played_at_clear * 4 + 2
    assert cut["unheard"].strip() and (cut["heard"] + cut["unheard"]) == STORY
    assert "voice-to-voice" in cut["latency"] and "stopped in" in cut["latency"]
    assert "Okay." in transcript
    v2v = story.latency_ms("voice_to_voice")
    assert v2v is not None and 0 < v2v < 8000
    (record,) = app.finished
    assert record.clears >= 1 and not record.violations and record.end_reason == "the page closed"
    assert record.frames_in > 100, "the page sent its microphone in 20 ms frames"


class QuietBot:
    """A tab handler that only listens (for the page's error paths)."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    async def __call__(self, line: PageLine) -> None:
        async for _frame in line.mic_frames():
            pass
        self.ended.append(line.end_reason)


MESSAGE = (
    "!document.getElementById('messages').hidden && "
    "document.getElementById('messages').textContent"
)


async def test_the_page_says_plainly_when_there_is_no_microphone_or_the_server_goes() -> None:
    bot = QuietBot()
    async with Chromium(None, grant=False) as refusing:  # headless refuses the prompt
        async with running_web_server(WebApp(bot)) as url:
            denied = await refusing.open_page(url + "/")
            await denied.evaluate("document.getElementById('start').click()")
            assert "permission was denied" in await denied.wait_for(MESSAGE, limit=10)
            assert denied.exceptions == []
    async with Chromium(None, fake_device=False) as deaf:  # no microphone on this machine
        async with running_web_server(WebApp(bot)) as url:
            none = await deaf.open_page(url + "/")
            await none.evaluate("document.getElementById('start').click()")
            assert "No microphone was found" in await none.wait_for(MESSAGE, limit=10)
            assert none.exceptions == []
    async with Chromium(None) as browser:
        async with running_web_server(WebApp(bot)) as url:
            page = await browser.open_page(url + "/")
            await page.evaluate("document.getElementById('start').click()")
            await page.wait_for("window.voxloop.stats.framesSent > 5", limit=10)
        # the server is gone
        assert "server is gone" in (await page.wait_for(MESSAGE, limit=10)).lower()
        assert await page.evaluate("window.voxloop.stats.state") == "ended"
        assert page.exceptions == []
    assert bot.ended, "the tab's conversation ended with the server"


async def test_the_token_travels_in_the_page_url_and_plain_http_from_afar_is_explained() -> None:
    bot = QuietBot()
    async with Chromium(None) as browser:
        async with running_web_server(WebApp(bot, WebConfig(token="tab-token"))) as url:
            page = await browser.open_page(url + "/#token=tab-token")
            await page.evaluate("document.getElementById('start').click()")
            await page.wait_for("window.voxloop.stats.framesSent > 5", limit=10)
            stranger = await browser.open_page(url + "/")
            await stranger.evaluate("document.getElementById('start').click()")
            assert "token" in await stranger.wait_for(MESSAGE, limit=10)
            # the same server under a name that is not localhost, over plain http: what a
            # machine across the LAN sees (the name resolves to 127.0.0.1, nothing leaves it)
            port = url.rsplit(":", 1)[1]
            afar = await browser.open_page(f"http://voxloop.test:{port}/#token=tab-token")
            assert await afar.evaluate("window.isSecureContext") is False
            await afar.evaluate("document.getElementById('start').click()")
            text = await afar.wait_for(MESSAGE, limit=10)
            assert "plain http" in text and "--tls-cert" in text
            assert page.exceptions == stranger.exceptions == afar.exceptions == []
