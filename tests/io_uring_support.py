"""Whether this kernel lets the engine use io_uring, for tests that expect the backend
``"auto"`` picks (the engine's and the daemon's default)."""

from __future__ import annotations

from mediafork.media import _fastpath

__all__ = ["IO_URING_REFUSED", "auto_backend"]


def _io_uring_refusal() -> str:
    """Why this kernel (or its seccomp profile) refuses the io_uring backend; "" if not."""
    try:
        core = _fastpath.CEngine(2, 2, 256, 0, "io_uring")
    except OSError as exc:
        return str(exc)
    core.close()
    return ""


IO_URING_REFUSED = _io_uring_refusal()


def auto_backend() -> str:
    """The backend ``io = "auto"`` resolves to here."""
    return "epoll" if IO_URING_REFUSED else "io_uring"
