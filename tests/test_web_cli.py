"""`voxloop web`'s command line: defaults, and the mistakes it names before starting anything."""

from __future__ import annotations

import pytest

from agent.app.cli import build_parser, main
from agent.app.web import page_message
from agent.events import AgentSaid, StateChanged, UserSaid


def test_web_binds_loopback_port_8000_with_the_agent_options_of_run() -> None:
    args = build_parser().parse_args(["web"])
    assert (args.host, args.port, args.token, args.tls_cert) == ("127.0.0.1", 8000, None, None)
    args = build_parser().parse_args(
        ["web", "--end-of-turn-ms", "300", "--voice", "v1", "--tools", "t.py", "--no-echo-guard"]
    )
    assert (args.end_of_turn_ms, args.voice, args.tools, args.no_echo_guard) == (
        300, "v1", "t.py", True)


def test_a_certificate_without_its_key_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web", "--tls-cert", "cert.pem"]) != 0
    assert "--tls-key" in capsys.readouterr().err


def test_what_the_page_is_told() -> None:
    assert page_message(StateChanged("thinking", 1.0)) == {"type": "state", "state": "thinking"}
    assert page_message(UserSaid(2, "hi", 1.0)) == {"type": "user", "turn": 2, "text": "hi"}
    said = page_message(AgentSaid(2, "Hello there.", "Hello", True, 2.0))
    assert said == {"type": "agent_said", "turn": 2, "text": "Hello there.", "heard": "Hello",
                    "interrupted": True}
