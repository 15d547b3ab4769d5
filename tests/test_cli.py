"""The CLI end to end on the tiny index: index, search (bm25 / dense / candidates), eval, verify, bad input."""

import json
import subprocess
import sys

import pytest

from dipair_rerank.cli import main
from tests.conftest import TINY_TOPICS, write_jsonl, write_topics


def check_trec_run(path, qids, hits):
    """6 columns, ranks 1..k, scores non-increasing, every query present."""
    lines = [line.split() for line in path.read_text().splitlines()]
    assert all(len(cols) == 6 and cols[1] == "Q0" for cols in lines)
    by_query: dict[str, list[list[str]]] = {}
    for cols in lines:
        by_query.setdefault(cols[0], []).append(cols)
    assert set(by_query) == set(qids)
    for rows in by_query.values():
        assert [int(r[3]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) <= hits
        scores = [float(r[4]) for r in rows]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.slow  # a subprocess
def test_help_is_light():
    code = "import sys; from dipair_rerank.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_query_backend_choices_are_the_rerankers():
    from dipair_rerank import cli, rerank

    assert cli.QUERY_BACKENDS == rerank.QUERY_BACKENDS


@pytest.mark.parametrize("first_stage", ["bm25", "dense"])
def test_search_then_eval(tiny_index, tiny_files, tmp_path, capsys, first_stage):
    run = tmp_path / "runs" / "out.trec"
    assert main(["search", "--index", str(tiny_index), "--topics", str(tiny_files["topics"]), "--run", str(run),
                 "--first-stage", first_stage, "--depth", "5", "--hits", "7"]) == 0
    check_trec_run(run, TINY_TOPICS, hits=7)
    latency = json.loads((tmp_path / "runs" / "out.trec.latency.json").read_text())
    assert len(latency["stages"]["head"]) == len(TINY_TOPICS)
    capsys.readouterr()
    assert main(["eval", "--qrels", str(tiny_files["qrels"]), "--run", str(run), "--per-query"]) == 0
    out = capsys.readouterr().out
    assert "nDCG@10               \tall\t" in out and "\tq1\t" in out and "head" in out and "p95" in out
    assert main(["eval", "--qrels", str(tiny_files["qrels"]), "--run", str(run), "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_candidates_and_msmarco_output(tiny_index, tiny_files, tmp_path):
    cands = tmp_path / "c.trec"
    cands.write_text("".join(f"{q} Q0 d{i} {i} {10 - i}.0 bm25\n" for q in TINY_TOPICS for i in range(1, 6)))
    run = tmp_path / "r.tsv"
    assert main(["search", "--index", str(tiny_index), "--topics", str(tiny_files["topics"]), "--output", str(run),
                 "--candidates", str(cands), "--output-format", "msmarco", "--batch-size", "4"]) == 0
    lines = [line.split("\t") for line in run.read_text().splitlines()]
    assert len(lines) == 5 * len(TINY_TOPICS) and all(len(cols) == 3 for cols in lines)


def test_index_verify(tiny_index, capsys):
    assert main(["verify", "--index", str(tiny_index)]) == 0
    assert "OK" in capsys.readouterr().out


def test_index_command(tiny_model_dir, tiny_files, tmp_path, capsys):
    target = tmp_path / "indexes" / "cli"
    assert main(["index", "--corpus", str(tiny_files["corpus"]), "--index", str(target), "--model",
                 str(tiny_model_dir), "--batch-size", "4", "--threads", "1"]) == 0
    assert "indexed 12 documents" in capsys.readouterr().out
    assert (target / "manifest.json").is_file() and not (target / "faiss").exists()


def _fails(argv, capsys, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and sum("error" in line for line in err) == 1, err


def test_bad_input_one_line_errors_and_nothing_written(tiny_index, tiny_model_dir, tiny_files, tmp_path, capsys):
    run = tmp_path / "out.trec"
    search = ["search", "--index", str(tiny_index), "--run", str(run)]
    _fails(search + ["--topics", str(tmp_path / "missing.tsv")], capsys, "file not found")
    notab = write_topics(tmp_path / "notab.tsv", {})
    notab.write_text("q1 no tab\n")
    _fails(search + ["--topics", str(notab)], capsys, "notab.tsv:1: expected 'qid<TAB>query text'")
    cands = tmp_path / "c.trec"
    cands.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 ghost 2 1.0 x\n")
    _fails(search + ["--topics", str(tiny_files["topics"]), "--candidates", str(cands)], capsys,
           "not in the index: ghost")
    assert not run.exists() and list(tmp_path.glob(".out.trec*")) == []

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "x"}\n{"id": "b", "contents": \n')
    index = ["index", "--index", str(tmp_path / "idx"), "--model", str(tiny_model_dir)]
    _fails(index + ["--corpus", str(bad)], capsys, "bad.jsonl:2: malformed JSON")
    dup = write_jsonl(tmp_path / "dup.jsonl", [("a", "x"), ("a", "y")])
    _fails(index + ["--corpus", str(dup)], capsys, "duplicate docid 'a'")
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    _fails(index + ["--corpus", str(empty)], capsys, "empty corpus")
    _fails(index + ["--corpus", str(tmp_path / "nope.jsonl")], capsys, "corpus not found")
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx*"))


def test_search_with_a_different_model_is_refused(tiny_index, tiny_files, tmp_path, capsys):
    from dipair_rerank.model import DiPairModel
    from tests.conftest import tiny_config

    other = DiPairModel(tiny_config(seed=3)).save_pretrained(tmp_path / "other")
    _fails(["search", "--index", str(tiny_index), "--topics", str(tiny_files["topics"]), "--run",
            str(tmp_path / "r.trec"), "--model", str(other)], capsys, "not by the requested model")
