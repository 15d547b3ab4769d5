"""``search --engine ray``: 2 local single-CPU workers write the run a single process writes (BM25 in each worker,
or --candidates read part by part), resume an interrupted search, and refuse to resume with other inputs."""

import json
import random
import sys

import pytest

from dipair_rerank.cli import main
from dipair_rerank.errors import DiPairError
from tests.conftest import TINY_TOPICS


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray of 2 CPUs for the module (each search would otherwise start and stop its own)."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dipair-rerank[ray]'")
    from dipair_rerank._java import jvm_signal_handlers_kept

    with jvm_signal_handlers_kept():  # the tiny index's Lucene build runs a JVM in this process
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    with jvm_signal_handlers_kept():
        ray.shutdown()


def read_trec(path):
    """qid -> [(docid, score)] in file order, and the file's query order."""
    run, order = {}, []
    for line in path.read_text().splitlines():
        qid, _, docid, _, score, _ = line.split()
        if qid not in run:
            order.append(qid)
        run.setdefault(qid, []).append((docid, float(score)))
    return run, order


def assert_same_run(path, expected_path):
    """Same queries in the same order, same docids in the same order, scores to 1e-6."""
    (run, order), (expected, expected_order) = read_trec(path), read_trec(expected_path)
    assert order == expected_order
    for qid, hits in expected.items():
        assert [d for d, _ in run[qid]] == [d for d, _ in hits], qid
        assert all(abs(a - b) <= 1e-6 for (_, a), (_, b) in zip(run[qid], hits)), qid


def search(index, topics, run, *extra):
    return main(["search", "--index", str(index), "--topics", str(topics), "--run", str(run), "--depth", "5",
                 "--hits", "7", *extra])


RAY = ("--engine", "ray", "--workers", "2", "--threads", "1", "--part-size", "1")


@pytest.mark.slow
def test_ray_search_equals_the_local_run(ray_cluster, tiny_index, tiny_files, tmp_path, capsys):
    assert search(tiny_index, tiny_files["topics"], tmp_path / "local.trec", "--threads", "2") == 0
    assert search(tiny_index, tiny_files["topics"], tmp_path / "ray.trec", *RAY) == 0
    assert "(4 queries; Ray, 2 workers x 1 thread)" in capsys.readouterr().out
    assert_same_run(tmp_path / "ray.trec", tmp_path / "local.trec")
    assert not (tmp_path / "ray.trec.parts").exists()
    latency = json.loads((tmp_path / "ray.trec.latency.json").read_text())
    assert latency["engine"] == "ray" and len(latency["stages"]["head"]) == len(TINY_TOPICS)

    lines = [f"{q} Q0 d{(i * 5 + n) % 12 + 1} {i} {10 - i}.0 bm25\n" for n, q in enumerate(TINY_TOPICS)
             for i in range(1, 7)]
    random.Random(2).shuffle(lines)  # not grouped by query: read by byte ranges all the same
    cands = tmp_path / "cands.trec"
    cands.write_text("".join(lines))
    assert search(tiny_index, tiny_files["topics"], tmp_path / "local-c.trec", "--candidates", str(cands)) == 0
    assert search(tiny_index, tiny_files["topics"], tmp_path / "ray-c.trec", "--candidates", str(cands), *RAY) == 0
    assert_same_run(tmp_path / "ray-c.trec", tmp_path / "local-c.trec")


@pytest.mark.slow
def test_an_interrupted_ray_search_resumes_from_its_parts(ray_cluster, tiny_index, tiny_files, tmp_path, capsys):
    from dipair_rerank.engines.ray_search import search_with_ray
    from dipair_rerank.search_parts import SearchOptions

    options = SearchOptions(index=str(tiny_index), depth=5, hits=7, threads=1, part_size=1)
    uninterrupted = search_with_ray(TINY_TOPICS, tmp_path / "whole.trec", options, workers=2, progress=False)
    assert uninterrupted.parts == 4 and uninterrupted.resumed_parts == 0

    def stop_after_first(part):
        raise Interrupted(part)

    run = tmp_path / "resumed.trec"
    with pytest.raises(Interrupted):
        search_with_ray(TINY_TOPICS, run, options, workers=2, progress=False, on_part=stop_after_first)
    assert not run.exists() and len(list((tmp_path / "resumed.trec.parts").glob("part-*.trec"))) == 1

    other = SearchOptions(index=str(tiny_index), depth=4, hits=7, threads=1, part_size=1)
    with pytest.raises(DiPairError, match=r"other inputs \(depth differ\)"):
        search_with_ray(TINY_TOPICS, run, other, workers=2, progress=False)
    assert search(tiny_index, tiny_files["topics"], run, *RAY, "--depth", "4") == 2  # the CLI: one line
    assert capsys.readouterr().err.count("\n") == 1

    finished = []
    resumed = search_with_ray(TINY_TOPICS, run, options, workers=2, progress=False, on_part=finished.append)
    assert resumed.resumed_parts == 1 and len(finished) == 3
    assert run.read_text() == (tmp_path / "whole.trec").read_text()
    assert not (tmp_path / "resumed.trec.parts").exists()


@pytest.mark.slow
def test_a_worker_error_is_one_line(ray_cluster, tiny_index, tiny_files, tmp_path, capsys):
    cands = tmp_path / "cands.trec"
    cands.write_text("q1 Q0 nowhere 1 1.0 bm25\n")
    assert search(tiny_index, tiny_files["topics"], tmp_path / "r.trec", "--candidates", str(cands), *RAY) == 2
    err = capsys.readouterr().err  # after the progress bar
    assert err.endswith("\nerror: the candidates name 1 docid(s) not in the index: nowhere\n")


def test_ray_missing_is_one_line(tiny_index, tiny_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert search(tiny_index, tiny_files["topics"], tmp_path / "r.trec", *RAY) == 2
    assert capsys.readouterr().err == "error: --engine ray needs Ray: pip install 'dipair-rerank[ray]'\n"


@pytest.mark.slow
@pytest.mark.integration
def test_ray_search_equals_the_local_run_on_cranfield(ray_cluster, shared_data, tiny_model_dir, tmp_path):
    """Cranfield (1,400 documents, 225 topics), BM25 in each worker, the tiny model: the same run as one process,
    also when resumed after its first part."""
    from dipair_rerank.engines.ray_search import search_with_ray
    from dipair_rerank.indexer import IndexOptions, build_index
    from dipair_rerank.search_parts import SearchOptions

    cran = shared_data / "cranfield"
    index = tmp_path / "cranfield"
    build_index(cran / "corpus.jsonl", index, model=tiny_model_dir,
                options=IndexOptions(batch_size=64, threads=2, progress=False))
    topics = cran / "queries.tsv"
    assert search(index, topics, tmp_path / "local.trec", "--depth", "50", "--hits", "100", "--threads", "2") == 0
    assert search(index, topics, tmp_path / "ray.trec", "--engine", "ray", "--workers", "2", "--threads", "1",
                  "--depth", "50", "--hits", "100") == 0
    assert_same_run(tmp_path / "ray.trec", tmp_path / "local.trec")

    from dipair_rerank.data import read_topics

    options = SearchOptions(index=str(index), depth=50, hits=100, threads=1)
    run = tmp_path / "resumed.trec"

    def stop_after_first(part):
        raise Interrupted(part)

    with pytest.raises(Interrupted):
        search_with_ray(read_topics(topics), run, options, workers=2, progress=False, on_part=stop_after_first)
    report = search_with_ray(read_topics(topics), run, options, workers=2, progress=False)
    assert report.resumed_parts == 1 and report.parts == 8
    assert run.read_text() == (tmp_path / "ray.trec").read_text()
