"""``irds:`` ids without the data and without a network: one error line, exit 2, quickly, nothing written.

The network is made unreachable on purpose (a proxy on a closed local port) so the tests behave the same on
machines that are online: ir_datasets then fails at once instead of downloading.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dipair_rerank.cli import main

pytestmark = pytest.mark.slow  # real subprocesses (a service, a JVM, signals): -m "not slow" skips them

NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
              "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "",
              "IR_DATASETS_DL_TIMEOUT": "5"}


def cli(args: list[str], home: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, **NO_NETWORK, "IR_DATASETS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dipair_rerank.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done, time.monotonic() - started


@pytest.mark.parametrize("topics, message", [
    ("irds:no/such/dataset", "error: unknown ir_datasets id 'no/such/dataset'"),
    ("irds:msmarco-passage/trec-dl-2019", "error: could not read the queries of irds:msmarco-passage/trec-dl-2019"),
])
def test_offline_irds_topics_fail_in_one_line(tiny_index, tmp_path, topics, message):
    """A known id whose source is not seeded tries to download; offline that fails fast, in one line."""
    run = tmp_path / "runs" / "r.trec"
    args = ["search", "--index", str(tiny_index), "--topics", topics, "--run", str(run)]
    done, seconds = cli(args, tmp_path / "irds")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), done.stderr
    assert seconds < 60 and not run.parent.exists()


def test_offline_irds_corpus_fails_in_one_line_and_leaves_no_staging(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """ir_datasets downloads a corpus lazily, while it is iterated: that failure is caught too, and the staging
    folder of the build is removed (the error is in the input, there is nothing to resume)."""
    for name, value in {**NO_NETWORK, "IR_DATASETS_HOME": str(tmp_path / "irds")}.items():
        monkeypatch.setenv(name, value)
    target = tmp_path / "indexes" / "nf"
    code = main(["index", "--corpus", "irds:beir/nfcorpus", "--index", str(target), "--model", str(tiny_model_dir),
                 "--threads", "1"])
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: could not read the documents"), err
    assert "[INFO]" not in err and "[WARNING]" not in err and "Traceback" not in err
    assert list(target.parent.iterdir()) == []
