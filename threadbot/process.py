"""Process-wide settings for a long-running threadbot (`threadbot serve`).

They change how this Python process manages memory, so the library does not
apply them on import: the server does, once it has started, and so do the
benchmarks, to measure what the server runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

__all__ = ["tune_for_serving"]

log = logging.getLogger("threadbot")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_for_serving() -> None:
    """Call once, after start-up.

    - Memory: every model request is one buffer as large as the thread's
      context (half a megabyte for a long thread). By default glibc maps such
      a buffer fresh from the kernel and unmaps it when freed, so every
      request pays page faults for all of it (about a millisecond at that
      size). Keeping blocks up to 32 MB on the heap, and freed memory in the
      process, lets the next request reuse them.
    - Garbage collection: objects alive after start-up (modules, classes,
      settings) are moved out of the collector's way, and the collector runs
      after 100,000 new objects instead of 700. Threads allocate briskly but
      almost nothing they allocate forms cycles (reference counting frees
      it), and each collection stops every thread of the process: with the
      defaults, its pauses were most of the slowest acknowledgements under
      load (Slack p99 32 ms against 16 ms).
    - Threads: the agent runs on a thread of its own (`bot.engine`); a
      request arriving while it works gets the interpreter within half a
      millisecond instead of five.
    """
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        try:
            mallopt = ctypes.CDLL(libc_name).mallopt
        except (OSError, AttributeError):
            log.debug("no mallopt in %s: memory settings left as they are", libc_name)
        else:
            mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
            mallopt(_M_TRIM_THRESHOLD, 128 * 1024 * 1024)
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 100, 1_000)
    sys.setswitchinterval(0.0001)
