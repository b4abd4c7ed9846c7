"""Atomic file writes: the one helper every writer of a public or exported file uses.

`atomic_write(path, data)` writes a temp file in the same folder, fsyncs it, sets its mode and
renames it over `path`, then fsyncs the folder: a reader sees the old file or the new one, never a
mix, and a crash never leaves a half-written file under the real name. No dependency on the rest
of digest, so any module may import it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace path by data atomically and durably; OSError when it cannot (temp file removed).

    mode: the new file's permissions (mkstemp's 0600 is kept only when asked: a static web
    server running as another user must read a feed, nobody else a subscriber export).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in folder durable; not every platform can open a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
