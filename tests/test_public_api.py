"""The public face: what a user imports, the layering it promises, and the README's agent run
as written (offline, on the embedded engines)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import agent

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a Python file imports (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_top_level_module_of_agent_imports_a_plugin() -> None:
    """The framework is vendor-neutral; only agent.app (the CLI, the composition root) names
    plugins."""
    offenders = {
        path.name: sorted(n for n in imports_of(path) if n.split(".")[0] == "plugins")
        for path in (ROOT / "agent").glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_examples_use_only_the_public_face() -> None:
    """Examples import from `agent` and from `plugins.*`, never from `agent.<module>`."""
    for path in (ROOT / "examples").glob("*.py"):
        private = sorted(n for n in imports_of(path) if n.startswith("agent."))
        assert private == [], f"{path.name} imports {private}"


def test_the_public_names_resolve_and_stay_few() -> None:
    missing = [name for name in agent.__all__ if not hasattr(agent, name)]
    assert missing == []
    assert len(agent.__all__) <= 42


def readme_agent() -> str:
    """The code block of README's "Build your own agent" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Build your own agent", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's agent section has no python block"
    return match.group(1)


def test_readme_agent_is_the_minimal_example_and_fits_a_screen() -> None:
    code = readme_agent()
    example = (ROOT / "examples" / "minimal_assistant.py").read_text(encoding="utf-8")
    assert code.strip() in example, "README and examples/minimal_assistant.py drifted apart"
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 30
    names = {n for n in re.findall(r"from agent import ([\w, ]+)", code)[0].split(", ")}
    assert names <= set(agent.__all__)


@pytest.mark.engines
@pytest.mark.slow
def test_readme_agent_runs_offline_as_shown(piper_engine: Any, tmp_path: Path) -> None:
    """The README's agent, run as a user would (its own process, a recorded question), hears
    the question and answers it, with no network and no keys."""
    from agent.audio import write_wav

    pcm = b"".join(chunk.pcm for chunk in piper_engine.synthesize("What color is the sky?"))
    question = tmp_path / "question.wav"
    write_wav(question, pcm, piper_engine.sample_rate)
    script = tmp_path / "my_agent.py"  # not agent.py: that would shadow the package
    script.write_text(readme_agent(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(question)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = dict(
        line.split(":", 1) for line in done.stdout.splitlines() if line.startswith(("you", "agent"))
    )
    # piper's synthesis is random: tiny.en hears some renderings' "the sky" as "this guy"
    assert "color" in said.get("you", "").lower(), done.stdout
    assert len(said.get("agent", "").split()) >= 2, done.stdout
