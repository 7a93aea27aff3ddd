"""The demo's reports, made from a `ConversationLog`: stereo WAV, transcript, metrics, timeline.

Every time in the log is in stream seconds (the transport's sample clock), so the four outputs
line up: a moment in the transcript is the same moment in `conversation.wav` and on the picture.

Every latency is one of `agent.timeline.LATENCIES`, read from the turn's timeline; the table's
columns are the turn's marks, in milliseconds after the user stopped speaking.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.audio import write_stereo_wav
from agent.conversation import ConversationLog, Segment, TurnRecord
from agent.timeline import LATENCIES

__all__ = [
    "format_clock",
    "not_heard_text",
    "render_timeline",
    "summary",
    "turn_table",
    "write_all",
    "write_metrics",
    "write_transcript",
]

MISSING = "—"

#: The table's columns: marks, measured from the user's last voiced frame.
TABLE_MARKS: tuple[tuple[str, str], ...] = (
    ("transcript", "→transcript (STT)"),
    ("first_token", "→first token"),
    ("first_audio_byte", "→first audio byte"),
)


# --------------------------------------------------------------------------------------------
# Numbers


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summary(log: ConversationLog) -> dict[str, Any]:
    """Medians of every latency over the turns where it happened, plus counts."""
    medians = {
        f"median_{name}_ms": _median([turn.latency_ms(name) for turn in log.turns])
        for name in LATENCIES
    }
    return {
        **medians,
        "turns": len(log.turns),
        "interrupted_turns": sum(1 for turn in log.turns if turn.interrupted),
        "errors": sum(1 for turn in log.turns if turn.error),
        "definitions": {
            name: f"{spec.start} -> {spec.end}: {spec.meaning}" for name, spec in LATENCIES.items()
        },
    }


def format_clock(seconds: float | None) -> str:
    """Stream seconds as ``MM:SS.hh`` (``--:--.--`` when unknown)."""
    if seconds is None:
        return "--:--.--"
    centis = max(0, round(seconds * 100))
    minutes, centis = divmod(centis, 6000)
    return f"{minutes:02d}:{centis // 100:02d}.{centis % 100:02d}"


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f}"


# --------------------------------------------------------------------------------------------
# Files


def not_heard_text(turn: TurnRecord) -> str:
    """The part of the agent's answer the user did not hear (empty when all was heard)."""
    full, heard = turn.agent_text.strip(), turn.heard_text.strip()
    if not heard:
        return full
    if full.startswith(heard):
        return full[len(heard) :].strip()
    heard_words = len(heard.split())  # texts differ in spacing/punctuation: count words
    return " ".join(full.split()[heard_words:])


def _agent_end(turn: TurnRecord) -> float | None:
    if turn.interrupted and turn.at("output_silent") is not None:
        return turn.at("output_silent")
    return turn.at("audio_end")


def _cut_time(turn: TurnRecord) -> float | None:
    for moment in (
        turn.at("output_silent"),
        turn.at("barge_in_decided"),
        turn.at("barge_in_onset"),
    ):
        if moment is not None:
            return moment
    return None


def _transcript_lines(turn: TurnRecord) -> list[str]:
    lines = [f"### Turn {turn.index}", ""]
    user_span = (
        f"[{format_clock(turn.at('user_speech_start'))}–{format_clock(turn.at('user_speech_end'))}]"
    )
    lines.append(f"- {user_span} **user:** {turn.transcript or '(nothing transcribed)'}")
    agent_span = f"[{format_clock(turn.at('first_audio_played'))}–{format_clock(_agent_end(turn))}]"
    if turn.interrupted:
        lines.append(
            f"- {agent_span} **agent (interrupted at {format_clock(_cut_time(turn))}; heard):** "
            f"{turn.heard_text.strip() or '(nothing)'}"
        )
        rest = not_heard_text(turn)
        if rest:
            lines.append(f"  - *(not heard: {rest})*")
        reaction = turn.latency_ms("barge_in_reaction")
        if reaction is not None:
            lines.append(
                f"  - barge-in: user's voice at {format_clock(turn.at('barge_in_onset'))}, "
                f"agent silent {reaction:.0f} ms later"
            )
    elif turn.at("first_audio_played") is not None or turn.heard_text:
        lines.append(f"- {agent_span} **agent:** {turn.heard_text.strip() or turn.agent_text}")
    else:
        lines.append("- **agent:** (no answer played)")
    if turn.error:
        lines.append(f"  - **error:** {turn.error}")
    lat = turn.latency_ms
    lines.append(
        f"  - latency: voice-to-voice {_ms(lat('voice_to_voice'))} ms "
        f"(end of turn {_ms(lat('end_of_turn_wait'))}, stt {_ms(lat('stt'))}, "
        f"ttft {_ms(lat('ttft'))}, ttfb {_ms(lat('ttfb'))}, playout {_ms(lat('playout'))})"
    )
    lines.extend(_tool_lines(turn))
    lines.append("")
    return lines


def _tool_lines(turn: TurnRecord) -> list[str]:
    """One line per tool call: what was called, how it ended, how long it took."""
    lines = []
    for call in turn.tools:
        took = "" if call.seconds is None else f" in {call.seconds * 1000:.0f} ms"
        late = "" if call.spoken else " (after the interruption: recorded, not spoken)"
        lines.append(f"  - tool: `{call.name}({call.arguments})` → {call.outcome}{took}{late}")
    return lines


def write_transcript(path: str | Path, log: ConversationLog) -> Path:
    """Write a markdown transcript: who said what and when, what was heard, interruptions."""
    lines = [
        "# voxloop conversation",
        "",
        "Times are MM:SS.hh on the call's clock (the same as in conversation.wav).",
        "",
    ]
    for turn in log.turns:
        lines.extend(_transcript_lines(turn))
    out = Path(path)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def write_metrics(path: str | Path, log: ConversationLog) -> Path:
    """Write ``log.to_dict()`` (each turn's marks and latencies) and a ``summary`` of medians."""
    data = log.to_dict()
    data["summary"] = summary(log)
    out = Path(path)
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# Table


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _cumulative(turn: TurnRecord, mark: str, previous: str | None) -> str:
    """Milliseconds from the user's last voiced frame to ``mark``, with the step since the
    ``previous`` column's mark."""
    origin, at = turn.at("user_speech_end"), turn.at(mark)
    if origin is None or at is None:
        return MISSING
    total = (at - origin) * 1000
    before = turn.at(previous) if previous else None
    if before is None:
        return f"{total:.0f}"
    return f"{total:.0f} (+{(at - before) * 1000:.0f})"


def turn_table(log: ConversationLog, *, heard_width: int = 40) -> str:
    """The per-turn latency table (ms after the user stopped speaking; step in parentheses)."""
    headers = [
        "turn",
        *(title for _, title in TABLE_MARKS),
        "→first audio played = voice-to-voice",
        "barge-in reaction",
        "heard",
    ]
    rows: list[list[str]] = []
    for turn in log.turns:
        heard = turn.heard_text if turn.heard_text else turn.agent_text
        if turn.interrupted:
            heard = "✂ " + heard
        if turn.error:
            heard = f"[error] {heard}"
        rows.append(
            [
                str(turn.index),
                *(
                    _cumulative(turn, mark, TABLE_MARKS[i - 1][0] if i else None)
                    for i, (mark, _) in enumerate(TABLE_MARKS)
                ),
                _ms(turn.latency_ms("voice_to_voice")),
                _ms(turn.latency_ms("barge_in_reaction")),
                _truncate(heard, heard_width),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    numeric = range(1, len(headers) - 1)

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return " | ".join(parts).rstrip()

    stats = summary(log)
    footer = (
        "medians: "
        f"voice-to-voice {_ms(stats['median_voice_to_voice_ms'])} ms · "
        f"end of turn {_ms(stats['median_end_of_turn_wait_ms'])} · "
        f"stt {_ms(stats['median_stt_ms'])} · ttft {_ms(stats['median_ttft_ms'])} · "
        f"ttfb {_ms(stats['median_ttfb_ms'])} · "
        f"playout {_ms(stats['median_playout_ms'])} · "
        f"barge-in reaction {_ms(stats['median_barge_in_reaction_ms'])} ms"
    )
    out = [
        "ms after the user stopped speaking (+ the step since the previous column)",
        line(headers),
        "-+-".join("-" * w for w in widths),
        *(line(row) for row in rows),
        footer,
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Timeline picture

_USER_Y = 2.0
_AGENT_Y = 0.0
_LANE_HEIGHT = 0.8
_USER_COLOR = "#3b7dd8"
_AGENT_COLOR = "#3aa35b"
_CUT_COLOR = "#d43c3c"
_V2V_COLOR = "#6a3d9a"
_TOOL_COLOR = "#b8860b"
_LABEL_SIZE = 9.5
_MARK_SIZE = 10.5


def _segments_from_turns(log: ConversationLog) -> list[Segment]:
    """Speech segments derived from the turns, for logs recorded without segments."""
    segments: list[Segment] = []
    for turn in log.turns:
        start, stop = turn.at("user_speech_start"), turn.at("user_speech_end")
        if start is not None and stop is not None:
            segments.append(Segment("user", start, stop, turn.transcript))
        first, end = turn.at("first_audio_played"), _agent_end(turn)
        if first is not None and end is not None:
            segments.append(
                Segment(
                    "agent",
                    first,
                    end,
                    turn.heard_text or turn.agent_text,
                    interrupted=turn.interrupted,
                )
            )
    return segments


def _time_span(log: ConversationLog, segments: list[Segment]) -> tuple[float, float]:
    moments = [t for s in segments for t in (s.start, s.end)]
    for turn in log.turns:
        moments.extend(
            t
            for t in (
                turn.at("user_speech_end"),
                turn.at("first_audio_played"),
                turn.at("output_silent"),
            )
            if t is not None
        )
    if not moments:
        return 0.0, 1.0
    end = max(moments)
    return 0.0, end + max(0.5, 0.03 * end)


def render_timeline(path: str | Path, log: ConversationLog, *, title: str = "voxloop demo") -> Path:
    """Draw the conversation as two lanes of speech bars with the latencies marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    segments = log.segments or _segments_from_turns(log)
    x0, x1 = _time_span(log, segments)
    fig, ax = plt.subplots(figsize=(16, 7), dpi=100)
    try:
        fig.subplots_adjust(left=0.06, right=0.985, top=0.86, bottom=0.2)
        ax.set_xlim(x0, x1)
        ax.set_ylim(-0.95, 2.75)
        fig.canvas.draw()
        px_per_second = ax.get_window_extent().width / (x1 - x0)

        for seg in segments:
            _draw_segment(ax, seg, px_per_second)
        label_right = float("-inf")  # right edge (px) of the last voice-to-voice label
        for turn in sorted(log.turns, key=lambda t: t.at("user_speech_end") or 0.0):
            label_right = _draw_turn_latency(ax, turn, px_per_second, x0, label_right)
            _draw_barge_in(ax, turn)
            _draw_tools(ax, turn)

        ax.set_yticks([_USER_Y, _AGENT_Y], ["user", "agent"], fontsize=13)
        ax.set_xlabel("time on the call (s)", fontsize=11)
        ax.grid(axis="x", color="#dddddd", linewidth=0.8)
        ax.set_axisbelow(True)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)

        stats = summary(log)
        fig.suptitle(title, fontsize=17, fontweight="bold", y=0.975)
        fig.text(
            0.5,
            0.905,
            f"median voice-to-voice {_ms(stats['median_voice_to_voice_ms'])} ms  ·  "
            f"median barge-in reaction {_ms(stats['median_barge_in_reaction_ms'])} ms  ·  "
            f"{stats['turns']} turns, {stats['interrupted_turns']} interrupted",
            ha="center",
            fontsize=12,
            color="#333333",
        )
        handles = [
            Patch(facecolor=_USER_COLOR, label="user speech"),
            Patch(facecolor=_AGENT_COLOR, label="agent speech (heard)"),
            Patch(
                facecolor=_AGENT_COLOR,
                edgecolor=_CUT_COLOR,
                hatch="//",
                linewidth=2,
                label="agent speech, interrupted",
            ),
            Line2D(
                [],
                [],
                color=_V2V_COLOR,
                marker="|",
                markersize=12,
                label="voice-to-voice: user stops → agent audio plays",
            ),
            Line2D(
                [],
                [],
                color=_CUT_COLOR,
                linestyle="--",
                label="barge-in: user's voice begins → agent silent",
            ),
            Line2D(
                [],
                [],
                color="#444444",
                marker="v",
                linestyle="none",
                label="transcript · first token · first audio byte",
            ),
        ]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=3,
            fontsize=10.5,
            frameon=False,
            bbox_to_anchor=(0.5, 0.005),
        )
        out = Path(path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def _text_px(ax: Any, text: str, fontsize: float = _LABEL_SIZE) -> float:
    """Width in pixels of bold text (measured with the figure's renderer)."""
    probe = ax.text(0, 0, text, fontsize=fontsize, fontweight="bold")
    width = float(probe.get_window_extent(ax.figure.canvas.get_renderer()).width)
    probe.remove()
    return width


def _fit_label(ax: Any, text: str, max_px: float, max_lines: int = 3) -> str:
    """Wrap ``text`` into at most ``max_lines`` lines no wider than ``max_px`` (… when cut)."""
    words = text.split()
    if not words or max_px < 30:
        return ""
    lines: list[str] = []
    current = ""
    for i, word in enumerate(words):
        candidate = f"{current} {word}".strip()
        if _text_px(ax, candidate) <= max_px:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        if len(lines) == max_lines:
            current = ""
            lines[-1] = _shorten(ax, lines[-1] + " " + " ".join(words[i:]), max_px)
            break
    if current:
        lines.append(current)
    # a single word wider than the bar is cut too
    return "\n".join(
        line if _text_px(ax, line) <= max_px else _shorten(ax, line, max_px) for line in lines
    )


def _shorten(ax: Any, text: str, max_px: float) -> str:
    """The longest prefix of ``text`` that fits in ``max_px`` with an ellipsis."""
    cut = len(text)
    while cut > 1 and _text_px(ax, text[:cut].rstrip() + "…") > max_px:
        cut -= 1
    return text[:cut].rstrip() + "…"


def _draw_segment(ax: Any, seg: Segment, px_per_second: float) -> None:
    y = _USER_Y if seg.who == "user" else _AGENT_Y
    color = _USER_COLOR if seg.who == "user" else _AGENT_COLOR
    width = max(seg.end - seg.start, 0.0)
    style: dict[str, Any] = {"color": color, "alpha": 0.9, "edgecolor": "white"}
    if seg.interrupted:
        style.update(edgecolor=_CUT_COLOR, hatch="//", linewidth=2.0)
    ax.barh(y, width, left=seg.start, height=_LANE_HEIGHT, **style)
    label = _fit_label(ax, f"“{seg.text}”" if seg.text else "", width * px_per_second - 10)
    if label:
        ax.text(
            seg.start + 5 / px_per_second,
            y,
            label,
            va="center",
            ha="left",
            fontsize=_LABEL_SIZE,
            color="white",
            fontweight="bold",
            linespacing=1.15,
            clip_on=True,
        )
    if seg.interrupted:
        ax.annotate(
            "✂ interrupted",
            xy=(seg.end, y - _LANE_HEIGHT / 2),
            xytext=(seg.end, y - _LANE_HEIGHT / 2 - 0.3),
            ha="center",
            va="top",
            fontsize=10.5,
            color=_CUT_COLOR,
            fontweight="bold",
            arrowprops={"arrowstyle": "-", "color": _CUT_COLOR, "lw": 1.2},
        )


def _draw_turn_latency(
    ax: Any, turn: TurnRecord, px_per_second: float, x0: float, label_right: float
) -> float:
    """Draw the voice-to-voice span; returns the right edge (px) of its label.

    A label that would overlap the previous turn's is lifted a step so both stay readable.
    """
    start, end = turn.at("user_speech_end"), turn.at("first_audio_played")
    v2v = turn.latency_ms("voice_to_voice")
    if start is None or end is None or v2v is None:
        return label_right
    text = f"voice-to-voice {v2v:.0f} ms"
    centre_px = ((start + end) / 2 - x0) * px_per_second
    half_px = _text_px(ax, text, _MARK_SIZE) / 2 + 6
    lift = 0.25 if centre_px - half_px < label_right else 0.0
    top = _USER_Y - _LANE_HEIGHT / 2
    bottom = _AGENT_Y + _LANE_HEIGHT / 2
    y = (top + bottom) / 2
    ax.vlines([start, end], bottom, top, colors=_V2V_COLOR, linewidth=1.2, linestyles=":")
    ax.annotate(
        "",
        xy=(end, y),
        xytext=(start, y),
        arrowprops={"arrowstyle": "|-|,widthA=0.4,widthB=0.4", "color": _V2V_COLOR, "lw": 1.8},
    )
    ax.text(
        (start + end) / 2,
        y + 0.12 + lift,
        text,
        ha="center",
        va="bottom",
        fontsize=_MARK_SIZE,
        color=_V2V_COLOR,
        fontweight="bold",
        bbox={
            "boxstyle": "round,pad=0.2",
            "facecolor": "white",
            "edgecolor": "none",
            "alpha": 0.85,
        },
    )
    stages: list[tuple[float | None, str]] = [
        (turn.at("transcript"), "transcript"),
        (turn.at("first_token"), "first token"),
        (turn.at("first_audio_byte"), "first audio byte"),
    ]
    marks = [t for t, _ in stages if t is not None]
    if marks:
        ax.plot(
            marks,
            [y - 0.14] * len(marks),
            linestyle="none",
            marker="v",
            markersize=6,
            color="#444444",
        )
    return centre_px + half_px if lift == 0.0 else label_right


def _draw_tools(ax: Any, turn: TurnRecord) -> None:
    """The turn's tool rounds: a bar under the agent lane from the calls to the results."""
    start, end = turn.at("first_tool_call"), turn.at("tool_results")
    if start is None or not turn.tools:
        return
    end = end if end is not None else turn.at("turn_end") or start
    y = _AGENT_Y - _LANE_HEIGHT / 2 - 0.15
    ax.plot([start, end], [y, y], color=_TOOL_COLOR, linewidth=4, solid_capstyle="butt")
    names = ", ".join(sorted({call.name for call in turn.tools}))
    ax.text(
        start,
        y - 0.08,
        f"tools: {names}",
        ha="left",
        va="top",
        fontsize=_LABEL_SIZE,
        color=_TOOL_COLOR,
    )


def _draw_barge_in(ax: Any, turn: TurnRecord) -> None:
    onset, silent = turn.at("barge_in_onset"), turn.at("output_silent")
    reaction = turn.latency_ms("barge_in_reaction")
    if onset is None:
        return
    top = _USER_Y + _LANE_HEIGHT / 2
    bottom = _AGENT_Y - _LANE_HEIGHT / 2
    ax.vlines([onset], bottom, top, colors=_CUT_COLOR, linewidth=1.5, linestyles="--")
    if silent is not None:
        ax.vlines([silent], bottom, _AGENT_Y + _LANE_HEIGHT / 2, colors=_CUT_COLOR, linewidth=1.5)
    label = "barge-in" if reaction is None else f"barge-in {reaction:.0f} ms"
    ax.text(
        onset,
        top + 0.08,
        label + "\n(user's voice → agent silent)",
        ha="center",
        va="bottom",
        fontsize=_MARK_SIZE,
        color=_CUT_COLOR,
        fontweight="bold",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"},
    )


# --------------------------------------------------------------------------------------------
# All at once


def write_all(
    folder: str | Path,
    log: ConversationLog,
    user_pcm: bytes,
    agent_pcm: bytes,
    *,
    title: str = "voxloop demo",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write conversation.wav, transcript.md, metrics.json and timeline.png into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "audio": write_stereo_wav(out / "conversation.wav", user_pcm, agent_pcm, log.sample_rate),
        "transcript": write_transcript(out / "transcript.md", log),
        "metrics": write_metrics(out / "metrics.json", log),
        "timeline": render_timeline(out / "timeline.png", log, title=title),
    }
    if progress:
        for name, path in paths.items():
            progress(f"{name}: {path}")
    return paths
