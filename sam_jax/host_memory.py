"""Host memory of XLA:CPU programs: keep freed buffers in the process.

XLA:CPU allocates the buffers of every executed program with ``malloc`` and frees them
when the program ends. glibc hands freed blocks above its mmap threshold, and the freed
top of its heaps beyond its trim threshold, back to the kernel, so the next step of a
training loop faults the same memory in again, zeroed, page by page.
:func:`keep_freed_memory` keeps them: a step of the demo config on cached batches
(2 CPU cores) went from 0.254 to 0.206 s, and ``make demo`` from 647 to 608 s wall
(closing note of issue 13, ninth stop).

That is not all of it: blocks over 32 MiB (the highest mmap threshold glibc accepts) are
still mapped and unmapped each time, and a thread allocating in one of glibc's per-thread
arenas gets heaps of at most 64 MiB that are unmapped once empty. ``one_heap=True`` also
serves every thread from the main heap and never maps a block on its own, which a
process must ask for before it starts threads. 250 steps of the demo's train step (2 CPU
cores, cached batches) faulted in 8.3 million pages with the settings above and 0.59
million with ``one_heap``, and a step took 0.08-0.12 s against 0.14-0.18 s (closing note
of issue 13, eighteenth stop); either half of it alone left most faults (100 steps: 3.8
million against 0.43).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -3, -4, -8


def keep_freed_memory(
    mmap_threshold: int = 32 << 20,
    trim_threshold: int = 1 << 30,
    top_pad: int = 64 << 20,
    one_heap: bool = False,
) -> bool:
    """Tell glibc malloc to serve blocks up to ``mmap_threshold`` bytes from its heaps
    and to keep up to ``trim_threshold`` freed bytes at their top (``top_pad``: extra
    bytes per heap growth). ``one_heap``: also one arena for all threads and no block
    mapped on its own, whatever its size (for a CPU-bound process of few threads; call
    it before any thread starts: a thread keeps the arena it was given). Returns False
    where that is not possible (not Linux with glibc), True when every setting took.
    Freed blocks are reused, so the peak grows little: ``make demo`` peaked at 2.85 GB
    against 2.77 GB without."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold),
        (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad),
    )
    if one_heap:
        settings += ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0))
    return all(mallopt(k, v) == 1 for k, v in settings)
