"""Process-wide settings for serving: how often the cycle collector runs, and
how soon a waiting thread gets the interpreter.

`threadbot serve` applies them at start-up, before any thread runs, unless
`THREADBOT_TUNE=off`. A program that runs a `ThreadBot` itself gets the same
by calling `tune_for_serving()` once, before its first thread runs. Nothing
applies them on import: they change the whole process, and whatever else
runs in it.
"""

from __future__ import annotations

import gc
import sys

__all__ = ["SWITCH_INTERVAL", "YOUNG_COLLECTION", "tune_for_serving"]

YOUNG_COLLECTION = 100_000
"""New container objects between two collections of the youngest generation."""

SWITCH_INTERVAL = 0.0001
"""Seconds a thread may keep the interpreter while another waits for it."""


def tune_for_serving() -> str:
    """Tune this process for serving; returns what was applied, for the log.

    - The cycle collector's youngest generation is collected after 100,000
      new container objects instead of 700 (2,000 from Python 3.13). A busy
      server allocates briskly, almost nothing it allocates forms cycles
      (reference counting frees it), and each collection stops every thread
      of the process. Only this first threshold changes: it means the same
      to the generational collector and to the incremental one of Python
      3.14.0-3.14.4 (where the second value is how fast the old generation
      is scanned and the third is ignored), so the other two keep their
      defaults, and the older generations are still collected after as many
      young collections as usual.
    - A thread waiting for the interpreter gets it within 0.1 ms instead of
      5 ms. The agent runs on a thread of its own (`bot.engine`): a request
      that arrives while it works is read and answered at once. The price
      is more switching while threads compete: a CPU-bound sync tool runs a
      little slower while requests come in.

    Call it once, before the first thread runs; calling it again changes
    nothing more.
    """
    young, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION, *older)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    return (
        f"cycle collector every {YOUNG_COLLECTION:,} new objects (was {young:,}); "
        f"thread switch every {SWITCH_INTERVAL * 1e3:g} ms (was {switch * 1e3:g} ms)"
    )
