"""The load test script runs end to end (small scale, tiny index), and the heap guard trims only on growth."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dipair_rerank._memory import HeapGuard

pytestmark = pytest.mark.slow  # real subprocesses (a service, a JVM, signals): -m "not slow" skips them

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "eval" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_test_runs_and_reports(tiny_index, tiny_files, tmp_path, capsys):
    script = load_script()
    memory = script.memory_mb()
    assert memory["rss"] > 0 and memory["anon"] > 0
    queries = script.synthetic_queries(tiny_files["topics"], 50)
    assert len(queries) == 50 and all(2 <= len(q.split()) <= 8 for q in queries)
    output = tmp_path / "load.json"
    code = script.main(["--index", str(tiny_index), "--vocabulary", str(tiny_files["topics"]), "--queries", "120",
                        "--warmup", "40", "--sample-every", "40", "--depth", "5", "--threads", "1",
                        "--batch-size", "16",
                        "--query-backend", "torch", "--output", str(output)])
    report = json.loads(output.read_text())
    assert code == 0 and report["summary"]["passed"] and report["summary"]["queries"] == 120
    assert [s["queries"] for s in report["samples"]] == [48, 96, 120]
    assert "PASS" in capsys.readouterr().out


def test_heap_guard_trims_only_after_its_batches_grew_beyond_slack(monkeypatch):
    guard = HeapGuard(slack_mb=1)
    if guard._trim is None:  # not glibc: nothing to do, nothing to test
        return
    calls = []
    monkeypatch.setattr(guard, "_trim", lambda pad: calls.append(pad))
    mb = 2**20 // guard._page
    # (pages at mark, pages at check) per batch
    batches = [(100, 100 + mb // 2), (100 + mb // 2, 100 + 2 * mb), (120, 120 + 2 * mb),
               (120 + 900 * mb, 120 + 900 * mb + mb // 2)]
    levels = iter([pages for batch in batches for pages in batch])
    monkeypatch.setattr(guard, "_anon_pages", lambda: next(levels))

    def batch() -> None:
        guard.mark()
        guard.check()

    batch()  # +0.5 MB: nothing
    assert calls == []
    batch()  # +1.5 MB in all > 1 MB slack: trim
    assert calls == [0] and guard.trims == 1
    batch()  # the batch after a trim re-grows its working set: not counted
    batch()  # 900 MB grew between batches (another library, the JVM): not this guard's; its own +0.5 MB is under
    assert calls == [0]
    guard.check()  # no mark: nothing to measure
    assert calls == [0]


def test_heap_guard_off(monkeypatch):
    monkeypatch.setenv("DIPAIR_HEAP_SLACK_MB", "0")
    guard = HeapGuard()
    assert guard._trim is None
    guard.check()


def test_jvm_options_reach_the_jvm():
    """DIPAIR_JVM_OPTIONS (used by the load test to pin the heap) is applied when the JVM starts."""
    import os
    import subprocess
    import sys

    code = ("from dipair_rerank._java import ensure_jvm; ensure_jvm(); from jnius import autoclass; "
            "print(autoclass('java.lang.Runtime').getRuntime().maxMemory() // 2**20)")
    env = {**os.environ, "DIPAIR_JVM_OPTIONS": "-Xms96m -Xmx96m"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 80 <= int(out.stdout.split()[-1]) <= 96
