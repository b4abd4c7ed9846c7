"""Cyclic garbage collection paused around batch work.

Matching, ranking and the queue stage allocate millions of small acyclic objects; each full
cyclic-GC pass walks every live object (the compiled queries and the page's states included),
which profiled at a third of the queue stage at 10k subscribers. Refcounting still frees
them; callers that make cycles collect them themselves (see outbox._queue_pages).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Cyclic GC off for the block, back on after it if it was on (nesting is safe)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
