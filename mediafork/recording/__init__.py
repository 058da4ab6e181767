"""Local call recording: G.711 decoding, track alignment and streamed WAV files."""
