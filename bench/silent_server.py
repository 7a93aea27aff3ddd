"""The local TTS server with `FakeSilentEngine`, in its own process (as a real TTS server is),
so that benchmarks of the client's overhead do not share an event loop or caches with it.

    python -m bench.silent_server --port 0     # prints "ready ws://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse

import anyio

from bench.fakes import FakeSilentEngine
from plugins.elevenlabs.server import LocalTTSServer


async def serve(port: int) -> None:
    # The throughput run sends ~100k characters at once: above the 32k a client may keep
    # queued (the server's guard against floods), which this benchmark is not about.
    async with LocalTTSServer(FakeSilentEngine(), port=port, max_pending_chars=10**7) as server:
        print(f"ready {server.url}", flush=True)
        await anyio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    anyio.run(serve, parser.parse_args().port)


if __name__ == "__main__":
    main()
