"""The `voxloop` command line with `FakeSoundDevice` standing in for the sounddevice module
(a fake: a microphone that hears silence and a speaker that keeps what it plays, both at
48 kHz in real time), for tests that run `voxloop call --mic` as a real process.

    python -m tests.fakes.sounddevice_cli call http://127.0.0.1:8080 --mic
"""

from __future__ import annotations

import sys

from tests.fakes.sounddevice import FakeSoundDevice, device


def main() -> int:
    fake = FakeSoundDevice(
        [device("Fake Mic", 1, 0), device("Fake Speakers", 0, 2)], default=(0, 1), speed=1.0
    )
    fake.input_source = lambda block: bytes(960 * 2)  # 20 ms of silence at 48 kHz
    sys.modules["sounddevice"] = fake  # type: ignore[assignment]
    from agent.app.cli import main as voxloop

    return voxloop(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
