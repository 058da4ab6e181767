"""Folders that hold call data or secrets are readable by the daemon's user only.

The data folder holds the database, the generated account token, TLS keys and call audio, and
the folder names below ``recordings/`` are account and call SIDs: even a listing tells another
local user who is recorded. So every folder the daemon creates is mode 0700 (``mkdir -p``
would give the parents the umask's 0755), and folders the daemon names itself inside its data
folder (``recordings/``, ``recordings/AC…/CA…``, ``tls/``, ``srs/``) are tightened to 0700
when an older version left them open.

A folder the operator chose (the data folder itself, which may be ``/var/lib/mediafork`` made
by a package, or the config file's folder) is never chmod-ed: the daemon cannot know who else
relies on it. :func:`warn_if_open` says so once at start instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "make_private_dir", "open_to_other_users", "warn_if_open"]

log = logging.getLogger("mediafork.private_dirs")

PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: str | os.PathLike[str], *,
                     tighten_below: str | os.PathLike[str] | None = None) -> Path:
    """Create *path* and its missing parents with mode 0700; return it.

    Existing folders strictly below *tighten_below* (and up to *path*) that belong to this
    user and are open to group or others are set to 0700, with a WARNING naming them.
    """
    folder = Path(path)
    missing: list[Path] = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for each in reversed(missing):
        # FileExistsError: made meanwhile (another thread's recording, say).
        with contextlib.suppress(FileExistsError):
            each.mkdir(mode=PRIVATE_DIR_MODE)
    if tighten_below is not None:
        root = Path(tighten_below)
        for each in _below(folder, root):
            if each not in missing:
                _tighten(each)
    return folder


def _below(folder: Path, root: Path) -> list[Path]:
    """*folder* and its parents strictly below *root* (empty when it is not below it)."""
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        return []
    return [root.joinpath(*parts[: n + 1]) for n in range(len(parts))]


def _tighten(folder: Path) -> None:
    try:
        st = folder.lstat()
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return  # a symlink or someone else's folder: not ours to change
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(folder, PRIVATE_DIR_MODE)
        log.warning("%s was open to other users (mode %04o); set to 0700", folder,
                    stat.S_IMODE(st.st_mode))


def open_to_other_users(st: os.stat_result) -> bool:
    """Whether users other than the daemon's can access the file or folder.

    Access by the daemon's own group is not counted: that is the documented setup (the
    config owned ``root:mediafork`` 0640, ``/var/lib/mediafork`` ``mediafork:mediafork``
    0750). Any other group, or anyone at all, is.
    """
    mode = stat.S_IMODE(st.st_mode)
    own_groups = {os.getegid(), *os.getgroups()}
    return bool(mode & 0o007 or (mode & 0o070 and st.st_gid not in own_groups))


def warn_if_open(folder: str | os.PathLike[str], what: str) -> bool:
    """Log one WARNING when other users can access *folder*; True if they can."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    mode = stat.S_IMODE(st.st_mode)
    if open_to_other_users(st):
        log.warning("%s %s is accessible by other users (mode %04o): the files the daemon "
                    "keeps there are private, but consider chmod 700", what, folder, mode)
        return True
    return False
