"""The heap guard closes its /proc file quietly, including when the interpreter exits with a guard still alive."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real subprocesses (a service, a JVM, signals): -m "not slow" skips them


def test_a_guard_alive_at_exit_closes_without_noise():
    # with the re-ranker's imports loaded, interpreter shutdown clears module globals before the guard is collected
    code = "import dipair_rerank.rerank\nfrom dipair_rerank._memory import HeapGuard\nguard = HeapGuard(64)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ""
