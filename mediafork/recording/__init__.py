"""Local call recording: G.711 decoding, track alignment and streamed WAV files.

The media worker's recording consumer uses ``CallRecording`` (one per Recording resource) and
feeds it ``PacketBatch`` objects per track; the control plane turns ``RecordingResult`` into the
resource's status, duration and callbacks, and calls ``recover`` on ``*.partial`` files at startup.
See docs/recording.md.
"""

from .batch import PacketBatch
from .recorder import ERROR_NO_AUDIO, CallRecording, RecordingOptions, RecordingResult
from .wavwriter import PARTIAL_SUFFIX, RecoveredFile, partial_path, recover

__all__ = [
    "ERROR_NO_AUDIO",
    "PARTIAL_SUFFIX",
    "CallRecording",
    "PacketBatch",
    "RecordingOptions",
    "RecordingResult",
    "RecoveredFile",
    "partial_path",
    "recover",
]
