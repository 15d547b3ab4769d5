"""A real ``kill -9`` in the middle of ``dipair-rerank index``: rerunning the same command resumes from the
finished shards (their files are not rewritten), the result is byte-identical to an uninterrupted build, and a
reader of the index sees the previous complete version until the new one is published."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dipair_rerank.cache import PrefixCache
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.indexer import IndexOptions, build_index
from dipair_rerank.rerank import DiPairReranker
from tests.conftest import TINY_DOCS, write_jsonl

pytestmark = pytest.mark.slow  # real subprocesses (a service, a JVM, signals): -m "not slow" skips them

DOCS = 6000
SHARD_ROWS = 200  # 30 shards: the kill lands after a few, long before the last
WORDS = ("quantum qubit plants light interest rates inflation dogs wolves energy market bank chlorophyll leaves "
         "green cat sat mat photosynthesis entanglement prices economy").split()


def big_corpus(path: Path) -> Path:
    rng = random.Random(0)
    docs = [(f"doc{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))) for i in range(DOCS)]
    return write_jsonl(path, docs)


def index_command(corpus: Path, target: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "dipair_rerank.cli", "index", "--corpus", str(corpus), "--index", str(target),
            "--model", str(model), "--shard-rows", str(SHARD_ROWS), "--batch-size", "8", "--threads", "1"]


def run_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def finished_shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.json")) if folder.is_dir() else []


def file_identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_kill_9_then_rerun_resumes_and_equals_a_clean_build(tiny_model_dir, tmp_path):
    corpus = big_corpus(tmp_path / "corpus.jsonl")
    target = tmp_path / "indexes" / "big"
    staging_cache = tmp_path / "indexes" / ".big.building" / "dipair"

    # the previous version of the index: what readers must keep seeing during the rebuild
    build_index(write_jsonl(tmp_path / "v1.jsonl", TINY_DOCS), target, model=tiny_model_dir,
                options=IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False))
    old_reader = DiPairReranker.from_index(target, query_backend="torch")
    old_scores = old_reader.rerank("qubits", ["d2", "d6"])

    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen(index_command(corpus, target, tiny_model_dir), env=run_env(), stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while len(finished_shards(staging_cache)) < 3:
            assert process.poll() is None, f"index ended before the kill: {(tmp_path / 'killed.log').read_text()}"
            assert time.monotonic() < deadline, "no cache shard written in 90 s"
            time.sleep(0.01)
        # a reader opening the index now, mid-rebuild, sees the previous complete version
        layout = IndexLayout(target)
        assert layout.manifest()["num_docs"] == len(TINY_DOCS)
        assert PrefixCache(layout.cache).verify() == []
        assert len(DiPairReranker.from_index(target, query_backend="torch").rerank("qubits", ["d2", "d6"])) == 2
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL

    done = {path.name: file_identity(path.with_name(path.name.replace(".json", ".vectors.npy")))
            for path in finished_shards(staging_cache)}
    assert 3 <= len(done) < DOCS // SHARD_ROWS
    assert IndexLayout(target).manifest()["num_docs"] == len(TINY_DOCS)  # still the old version after the kill

    resumed = subprocess.run(index_command(corpus, target, tiny_model_dir), env=run_env(), capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"indexed {DOCS} documents" in resumed.stdout
    for name, identity in done.items():  # finished shards were kept, not re-encoded and rewritten
        assert file_identity(target / "dipair" / name.replace(".json", ".vectors.npy")) == identity, name
    assert sorted(p.name for p in target.parent.iterdir()) == ["big"]  # no staging or .old folder left

    # the handle opened before the publish still reads its own (old) data; a new one reads the new index
    assert old_reader.rerank("qubits", ["d2", "d6"]) == old_scores
    assert IndexLayout(target).manifest()["num_docs"] == DOCS

    clean = build_index(corpus, tmp_path / "clean", model=tiny_model_dir,
                        options=IndexOptions(shard_rows=SHARD_ROWS, batch_size=8, threads=1, progress=False))
    resumed_files = sorted(p.name for p in (target / "dipair").iterdir())
    assert resumed_files == sorted(p.name for p in clean.cache.iterdir())
    different = [name for name in resumed_files
                 if (target / "dipair" / name).read_bytes() != (clean.cache / name).read_bytes()]
    assert different == []
    manifest, clean_manifest = (json.loads((root / "manifest.json").read_text()) for root in (target, clean.root))
    for key in ("num_docs", "corpus_fingerprint", "model_fingerprint", "components"):
        assert manifest[key] == clean_manifest[key]
    assert PrefixCache(target / "dipair").verify() == []


def test_a_normalisation_killed_midway_leaves_nothing_in_the_published_index(tiny_model, tiny_files, tmp_path,
                                                                             monkeypatch):
    """The corpus is normalised into ``corpus.jsonl.<pid>.tmp``: a kill there leaves that file in the staging
    folder; the resumed build must not publish it inside the index."""
    import pytest

    import dipair_rerank.indexer as indexer

    options = IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer, "encode_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_files["corpus"], tmp_path / "idx", model=tiny_model, options=options)
    monkeypatch.undo()
    (tmp_path / ".idx.building" / "corpus.jsonl.999999.tmp").write_text("half a corpus")
    build_index(tiny_files["corpus"], tmp_path / "idx", model=tiny_model, options=options)
    assert not list((tmp_path / "idx").rglob("*.tmp")) and sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
