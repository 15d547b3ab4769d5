"""Keep a long search's memory flat on glibc.

Re-ranking allocates large tensors whose size changes with every batch (candidates per query vary). glibc raises
its mmap threshold after the first large free, so later ones come from the heap, where varying sizes fragment it:
freed pages stay resident and RSS climbs by hundreds of MB over thousands of queries (measured on DL19: +700 MB in
2,000 queries) without any leak. ``malloc_trim`` returns those free pages to the system. Calling it after every
batch costs 1.5 ms per query, so it is called only once the process's anonymous memory has grown by ``slack``
beyond its level one batch after the last trim (that level includes a batch's working set, which a trim cannot
keep away): a few times per thousand queries, and ~1 us per check otherwise.
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
    """``check()`` after each batch: trims the C heap when anonymous RSS grew by ``slack_mb`` since the last trim."""

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
        self._level = 0
        self._rebase = True  # the level is taken after a batch: it includes one batch's working set
        self.trims = 0

    def _anon_pages(self) -> int:
        if self._fd is None:
            return 0
        fields = os.pread(self._fd, 128, 0).split()
        return int(fields[1]) - int(fields[2])  # resident - shared (file-backed) pages

    def check(self) -> None:
        if self._trim is None:
            return
        anon = self._anon_pages()
        if self._rebase:
            self._level, self._rebase = anon, False
        elif anon - self._level > self._slack:
            self._trim(0)
            self.trims += 1
            self._rebase = True
            logger.debug("malloc_trim at %.0f MB of anonymous memory", anon * self._page / 2**20)
