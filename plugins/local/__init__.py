"""Embedded engines that run on this machine, with no network: piper TTS and faster-whisper STT.

They need the optional extra `voxloop[local]` (piper-tts is GPL, so it stays out of the core).
Import the submodules directly: `plugins.local.piper_tts`, `plugins.local.whisper_stt`.
"""
