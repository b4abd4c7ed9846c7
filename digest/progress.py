"""Progress bars for long work: on stderr, only for a terminal, never when quiet."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, *, unit: str, quiet: bool = False, desc: str = "") -> Any:
    """A tqdm bar on stderr, disabled when quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    enabled = not quiet and sys.stderr.isatty()
    return tqdm(
        total=total, file=sys.stderr, unit=unit, desc=desc, disable=not enabled, leave=False
    )
