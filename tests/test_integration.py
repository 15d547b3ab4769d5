"""The real packaged all-MiniLM-L6-v2 end to end on Cranfield (shared data), through the quickstart."""

import pytest

from dipair_rerank.cli import main

pytestmark = pytest.mark.integration


def test_quickstart_on_cranfield(shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cran = shared_data / "cranfield"
    assert main(["quickstart", "--corpus", str(cran / "corpus.jsonl"), "--topics", str(cran / "queries.tsv"),
                 "--qrels", str(cran / "qrels.txt"), "--threads", "2"]) == 0
    report = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in report.splitlines() if line.startswith("| ")}
    bm25, dipair = float(rows["BM25"][0]), float(rows["BM25 + DiPair@100"][0])
    # Cranfield BM25 nDCG@10 is ~0.34; the default model must re-rank sensibly, not randomly (random: ~0.1).
    assert 0.25 < bm25 < 0.45 and dipair > 0.25, report
    assert (tmp_path / "indexes" / "cranfield" / "manifest.json").is_file()
    assert (tmp_path / "runs" / "cranfield.dipair.trec.latency.json").is_file()
