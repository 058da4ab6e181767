"""Reference Session Recording Server (``mediafork srs``): a test tool and demo peer.

See docs/srs.md. The programmatic entry point is :class:`ReferenceRecorder`; the command line
is :func:`mediafork.srs.cli.main`.
"""

from .server import RecorderConfig, ReferenceRecorder
from .session import RecordedSession

__all__ = ["RecordedSession", "RecorderConfig", "ReferenceRecorder"]
