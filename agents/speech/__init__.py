"""Speech engines (TTS now; ASR arrives with the cascaded agent)."""
