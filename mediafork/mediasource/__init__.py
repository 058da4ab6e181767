"""Media sources: where a call's two tracks come from when the media server does not mirror
them to mediafork by itself. ``rtpengine``: mediafork subscribes to the call's parties over
rtpengine's NG protocol (``rtpengine.py``; the protocol core is ``ng.py``, its asyncio
adapter ``ng_client.py``)."""

from .errors import (
    CallGone,
    MediaSourceError,
    NgBadReply,
    NgClosed,
    NgErrorReply,
    NgOverloaded,
    NgTimeout,
    NoUsableCodec,
    SourceRestarted,
    SubscriptionLost,
    UnknownCall,
    UnknownMediaSource,
    UnknownTag,
)

__all__ = [
    "CallGone",
    "MediaSourceError",
    "NgBadReply",
    "NgClosed",
    "NgErrorReply",
    "NgOverloaded",
    "NgTimeout",
    "NoUsableCodec",
    "SourceRestarted",
    "SubscriptionLost",
    "UnknownCall",
    "UnknownMediaSource",
    "UnknownTag",
]
