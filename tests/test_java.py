"""The JVM that Pyserini starts in our process leaves the shutdown signals (SIGINT, SIGTERM, SIGHUP) to Python."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real subprocesses (a JVM, signals): -m "not slow" skips them

CHILD = """
import os, signal, time
from dipair_rerank._java import ensure_jvm
ensure_jvm()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
except KeyboardInterrupt:
    print("interrupted in Python")
"""


def test_ctrl_c_reaches_python_once_the_jvm_runs():
    """Without -Xrs the JVM's own handler ends the process (status 130), skipping Python's clean-up."""
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=240)
    assert (result.returncode, result.stdout.strip()) == (0, "interrupted in Python"), result.stderr[-2000:]
