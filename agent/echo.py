"""The echo guard: keeps the agent's own voice, coming back through the speaker, from
interrupting the agent.

It learns how strongly the output leaks into the microphone (the coupling) while the user is
quiet, and passes a frame only when the microphone is louder than that leak by a margin. With
headphones the coupling learns to ~0 and every word passes. Called for every microphone frame,
synchronously, before VAD; what the floor does with the speech is `agent.turntaking`'s rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.audio import pcm_to_array


@dataclass(frozen=True)
class EchoConfig:
    """Switch the guard off (``enabled=False``) with headphones, on phone lines (the network
    cancels line echo) or with a device that cancels echo itself."""

    enabled: bool = True
    margin: float = 2.0  # the mic must be this many times louder than the expected echo
    initial_coupling: float = 0.5  # assumed echo/output ratio before any learning
    audible_level: float = 30.0  # output RMS above which the agent counts as audible


class EchoGuard:
    """Gates microphone frames that are no louder than the agent's own echo.

    ``process(pcm, output_level)`` returns the frame, or silence of the same length when it is
    probably echo. The coupling estimate is learned only from frames judged to be echo.
    """

    def __init__(self, config: EchoConfig | None = None) -> None:
        config = config or EchoConfig()
        self.config = config
        self.coupling = config.initial_coupling
        self.gated_frames = 0

    def process(self, pcm: bytes, output_level: float) -> bytes:
        if not self.config.enabled or output_level < self.config.audible_level or not pcm:
            return pcm
        samples = pcm_to_array(pcm).astype(np.float32)
        mic = float(np.sqrt(np.mean(samples**2)))
        expected = self.coupling * output_level
        if mic > self.config.margin * expected:
            return pcm  # louder than any echo could be: the user
        # The coupling follows the loudest recent echo: fast attack, slow release. Frames in
        # the gaps between the agent's words (no echo yet) must not talk the estimate down.
        # A ratio far above the estimate is more likely the user talking over the agent
        # (double talk) than echo: it is gated this once, but not learned from.
        ratio = min(2.0, mic / output_level)
        if ratio <= 1.5 * self.coupling:
            weight = 0.5 if ratio > self.coupling else 0.01
            self.coupling += weight * (ratio - self.coupling)
        self.gated_frames += 1
        return bytes(len(pcm))
