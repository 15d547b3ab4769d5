"""Keep a long search's memory flat on glibc.

Re-ranking allocates large tensors whose size changes with every batch (candidates per query vary). glibc raises
its mmap threshold after the first large free, so later ones come from the heap, where varying sizes fragment it:
freed pages stay resident and RSS climbs by hundreds of MB over thousands of queries (measured on DL19: +700 MB in
2,000 queries) without any leak. ``malloc_trim`` returns those free pages to the system. Calling it after every
batch costs 1.5 ms per query, so it is called only once the anonymous memory this guard's own calls added (read
at ``mark`` and ``check``, around each batch) sums to ``slack``: a few times per thousand queries, and ~1 us per
check otherwise. Only its own calls count: what the process does between them (a cross-encoder's activations,
the JVM's heap) is not the re-ranker's heap, and trimming for it landed, milliseconds long, in the re-rank call
that followed each cross-encoder call of an application alternating the two.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import weakref

logger = logging.getLogger(__name__)

DEFAULT_SLACK_MB = 64
SLACK_ENV = "DIPAIR_HEAP_SLACK_MB"
"""Override the slack in MB; 0 turns trimming off (memory may then settle several hundred MB higher)."""


def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another libc, or not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapGuard:
    """``mark()`` before each batch, ``check()`` after it: trims the C heap once the batches' own growth of
    anonymous memory sums to ``slack_mb`` since the last trim."""

    def __init__(self, slack_mb: float | None = None):
        if slack_mb is None:
            slack_mb = float(os.environ.get(SLACK_ENV, DEFAULT_SLACK_MB))
        self._trim = _malloc_trim() if slack_mb > 0 else None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._slack = int(slack_mb * 2**20 / self._page)
        self._fd: int | None = None
        if self._trim is not None:
            try:
                self._fd = os.open("/proc/self/statm", os.O_RDONLY)
            except OSError:
                self._trim = None
            else:  # closed with the guard, or at exit (a __del__ then may find the os module already gone)
                weakref.finalize(self, os.close, self._fd)
        self._start: int | None = None  # anonymous pages at this batch's mark
        self._grown = 0  # pages the batches since the last trim added, net
        self._rebase = False  # the batch after a trim re-grows its working set, which no trim keeps away
        self.trims = 0

    def _anon_pages(self) -> int:
        if self._fd is None:
            return 0
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) - int(fields[2])  # resident - shared (file-backed) pages

    def mark(self) -> None:
        if self._trim is not None:
            self._start = self._anon_pages()

    def check(self) -> None:
        if self._trim is None or self._start is None:
            return
        anon = self._anon_pages()
        grown, self._start = anon - self._start, None
        if self._rebase:
            self._rebase = False
            return
        self._grown = max(0, self._grown + grown)
        if self._grown > self._slack:
            self._trim(0)
            self.trims += 1
            self._grown, self._rebase = 0, True
            logger.debug("malloc_trim at %.0f MB of anonymous memory", anon * self._page / 2**20)
