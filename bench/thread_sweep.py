"""Two cores, three engines: the demo's voice-to-voice for each split of threads between
llama.cpp (generating tokens) and piper (onnxruntime's intra-op threads), whisper kept at its
1 thread (`bench.stt_latency` measured 1 thread as fast as 2 or faster for tiny.en here).

Each setting runs `bench.voice_to_voice`'s scripted conversation --rounds times in a fresh
process (so the engines load with that setting), on the same 7 questions; the table gives, over
all its turns, the median and p95 voice-to-voice and the stages where the engines meet: first
token -> first audio byte (the issue's "<= 200 ms" stage: the LLM writing the first clause, then
piper's first piece), and piper's first piece alone. What the settings change is only the
threads; the answers themselves vary from run to run (sampling), which is why each setting gets
several rounds.

    python -m bench.thread_sweep                       # llm 1/2 x piper 1/2, 2 rounds each
    python -m bench.thread_sweep --llm 1 --piper 2 --rounds 3

Bounded: settings x rounds runs of at most 7 turns each; loopback only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
from typing import Any

from bench._report import percentile, print_grid, write_json

RUN_TIMEOUT_S = 600


def _use_threads(llm: int, piper: int) -> None:
    """In this process: the local LLM server generates on ``llm`` threads, piper runs with
    ``piper`` intra-op threads."""
    from plugins.local import llm_server, piper_tts

    defaults = llm_server.LocalLLMServer.__init__.__kwdefaults__
    assert defaults is not None and "n_threads" in defaults
    defaults["n_threads"] = llm
    piper_tts.CPU_THREADS = piper  # read when a voice loads


def one(llm: int, piper: int) -> list[dict[str, float]]:
    """One scripted conversation with these threads (in this process); its turns' rows."""
    import anyio

    from bench.voice_to_voice import measure

    _use_threads(llm, piper)
    result = anyio.run(measure, 7)
    rows: list[dict[str, float]] = result["turns"]
    return rows


def run_setting(llm: int, piper: int) -> list[dict[str, float]]:
    cmd = [sys.executable, "-m", "bench.thread_sweep", "--one", str(llm), str(piper)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise SystemExit(f"llm {llm} / piper {piper} failed:\n{done.stderr[-2000:]}")
    rows: list[dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", type=int, nargs="+", default=[1, 2], help="llama.cpp threads")
    parser.add_argument("--piper", type=int, nargs="+", default=[1, 2], help="piper threads")
    parser.add_argument("--rounds", type=int, default=2, help="conversations per setting")
    parser.add_argument(
        "--one", type=int, nargs=2, metavar=("LLM", "PIPER"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    settings = list(itertools.product(args.llm, args.piper))
    turns: dict[tuple[int, int], list[dict[str, float]]] = {s: [] for s in settings}
    for round_ in range(min(args.rounds, 5)):
        for llm, piper in settings:  # interleaved, so a drift in load hits every setting
            rows = run_setting(llm, piper)
            turns[(llm, piper)] += rows
            print(f"round {round_ + 1}: llm {llm} / piper {piper}: {len(rows)} turns",
                  file=sys.stderr, flush=True)
    table = []
    data: dict[str, Any] = {"whisper_threads": 1, "settings": []}
    for (llm, piper), rows in turns.items():
        v2v = [r["voice_to_voice"] for r in rows]
        to_audio = [r["llm_until_tts"] + r["tts_engine"] for r in rows]
        engine = [r["tts_engine"] for r in rows]
        writing = [r["llm_until_tts"] for r in rows]
        table.append([
            f"{llm} / {piper}", str(len(rows)),
            f"{statistics.median(v2v):.0f} / {percentile(v2v, 95):.0f}",
            f"{statistics.median(to_audio):.0f}", f"{statistics.median(writing):.0f}",
            f"{statistics.median(engine):.0f}",
        ])
        data["settings"].append({"llm_threads": llm, "piper_threads": piper, "turns": rows})
    print_grid(
        "threads: llama.cpp generating / piper, whisper 1 (ms; medians over all turns)",
        ["llm / piper", "turns", "voice-to-voice med / p95", "first token -> audio byte",
         "  of which writing", "  of which piper"],
        table,
    )
    write_json("thread_sweep", data)


if __name__ == "__main__":
    main()
