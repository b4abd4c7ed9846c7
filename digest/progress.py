"""Progress bars for long work: on stderr, only for a terminal, never when quiet."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(
    total: int | None, *, unit: str, quiet: bool = False, desc: str = "", show: bool | None = None
) -> Any:
    """A tqdm bar on stderr: shown when `show`, or (show=None) on a terminal unless quiet."""
    from tqdm import tqdm

    enabled = (
        show if show is not None else (not quiet and sys.stderr is not None and sys.stderr.isatty())
    )
    return tqdm(
        total=total, file=sys.stderr, unit=unit, desc=desc, disable=not enabled, leave=False
    )
