"""Bad input through the CLI: each kind ends in one ``error: ...`` line and exit 2 with nothing half-written, or in
a documented recovery with a logged warning and exit 0. ``CASES`` is also the source of the table in
eval/RELIABILITY.md (``python -m tests.reliability.test_bad_input`` prints it from real output)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dipair_rerank.cli import main
from tests.conftest import TINY_TOPICS

Argv = Callable[["Env"], list[str]]


@dataclass
class Env:
    """Paths one case may use: a scratch folder, the tiny index and model, and where outputs would go."""

    tmp: Path
    index: Path
    model: Path
    topics: Path
    qrels: Path

    @property
    def run(self) -> Path:
        return self.tmp / "runs" / "out.trec"

    @property
    def new_index(self) -> Path:
        return self.tmp / "indexes" / "new"

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return str(path)

    def index_cmd(self, corpus: str) -> list[str]:
        return ["index", "--corpus", corpus, "--index", str(self.new_index), "--model", str(self.model),
                "--batch-size", "4", "--threads", "1", "--shard-rows", "4"]

    def search_cmd(self, *extra: str, topics: str | None = None) -> list[str]:
        return ["search", "--index", str(self.index), "--topics", topics or str(self.topics), "--run", str(self.run),
                "--threads", "1", *extra]


@dataclass
class Case:
    kind: str
    argv: Argv
    message: str  # in the error line (errors) or in a logged warning (recoveries)
    recovers: bool = False  # True: exit 0, the documented recovery happened, a warning says so
    check: Callable[[Env], None] | None = None  # extra assertions on what a recovery wrote

    @property
    def id(self) -> str:
        return self.kind.replace(" ", "-")


def doc(docid: str, contents: str) -> str:
    return json.dumps({"id": docid, "contents": contents}) + "\n"


def _indexed(docid: str, expect_docs: int) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        from dipair_rerank.cache import PrefixCache

        manifest = json.loads((env.new_index / "manifest.json").read_text())
        assert manifest["num_docs"] == expect_docs
        cache = PrefixCache(env.new_index / "dipair")
        assert cache.rows([docid]).tolist() != [-1] and cache.verify() == []

    return check


def _run_lines(expect: dict[str, int]) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        counts: dict[str, int] = {}
        for line in env.run.read_text().splitlines():
            counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
        assert {qid: counts.get(qid, 0) for qid in expect} == expect

    return check


def _empty_doc_scored(env: Env) -> None:
    _indexed("empty", 2)(env)
    from dipair_rerank.rerank import DiPairReranker

    hits = DiPairReranker.from_index(env.new_index, query_backend="torch").rerank("anything", ["empty", "b"])
    assert {h.docid for h in hits} == {"empty", "b"}


BIG = "word " * 210_000  # ~1 MB of text: the tokenizer keeps doc_max_length tokens


CASES: list[Case] = [
    # corpora (dipair-rerank index)
    Case("malformed JSONL line",
         lambda e: e.index_cmd(e.file("bad.jsonl", doc("a", "x") + '{"id": "b", "contents": \n')),
         "bad.jsonl:2: malformed JSON"),
    Case("JSONL line not an object", lambda e: e.index_cmd(e.file("list.jsonl", "[1, 2]\n")),
         "list.jsonl:1: expected a JSON object"),
    Case("missing id", lambda e: e.index_cmd(e.file("noid.jsonl", '{"contents": "x"}\n')),
         "noid.jsonl:1: missing 'id'"),
    Case("missing contents", lambda e: e.index_cmd(e.file("nocontents.jsonl", '{"id": "a"}\n')),
         "nocontents.jsonl:1: document a has no 'contents'"),
    Case("contents not text", lambda e: e.index_cmd(e.file("obj.jsonl", '{"id": "a", "contents": {"x": 1}}\n')),
         "'contents' must be text, got a JSON object"),
    Case("docid with whitespace", lambda e: e.index_cmd(e.file("ws.jsonl", doc("a b", "x"))), "contains whitespace"),
    Case("duplicate docids", lambda e: e.index_cmd(e.file("dup.jsonl", doc("a", "x") + doc("a", "y"))),
         "duplicate docid 'a'"),
    Case("empty corpus", lambda e: e.index_cmd(e.file("empty.jsonl", "\n")), "empty corpus"),
    Case("corpus folder without JSONL", lambda e: e.index_cmd(str(Path(e.file("folder/notes.txt", "x")).parent)),
         "holds no .jsonl files"),
    Case("corpus not found", lambda e: e.index_cmd(str(e.tmp / "nope.jsonl")), "corpus not found"),
    Case("--index naming a folder that is not an index",
         lambda e: ["index", "--corpus", e.file("ok.jsonl", doc("a", "x")), "--index",
                    str(Path(e.file("mine/notes.txt", "keep me")).parent), "--model", str(e.model)],
         "exists and is not a dipair-rerank index (no manifest.json)"),
    Case("corpus inside the --index folder",
         lambda e: ["index", "--corpus", e.file("data/c.jsonl", doc("a", "x")), "--index",
                    str(Path(e.file("data/c.jsonl", doc("a", "x"))).parent), "--model", str(e.model)],
         "holds the input it would be built from"),
    Case("--batch-size 0 (index)", lambda e: [*e.index_cmd(e.file("ok.jsonl", doc("a", "x"))), "--batch-size", "0"],
         "--batch-size must be at least 1, got 0"),
    Case("--pq-m not dividing the model width",
         lambda e: [*e.index_cmd(e.file("ok.jsonl", doc("a", "x"))), "--codec", "pq", "--pq-m", "5"],
         "width 16 is not divisible by --pq-m 5"),
    Case("non-UTF-8 bytes in corpus",
         lambda e: e.index_cmd(e.file("latin1.jsonl", b'{"id": "a", "contents": "caf\xe9"}\n')),
         "latin1.jsonl:1: not UTF-8"),
    Case("empty document", lambda e: e.index_cmd(e.file("emptydoc.jsonl", doc("empty", "") + doc("b", "hello"))),
         "1 document(s) with empty text, indexed as empty", recovers=True, check=_empty_doc_scored),
    Case("1 MB document", lambda e: e.index_cmd(e.file("big.jsonl", doc("big", BIG) + doc("b", "hello"))),
         "", recovers=True, check=_indexed("big", 2)),
    # models
    Case("model path that is not a model", lambda e: e.search_cmd("--model", str(Path(e.file("m/x.txt", "x")).parent)),
         "is neither a DiPair model folder nor a Hugging Face model folder"),
    Case("model path that is a file", lambda e: e.search_cmd("--model", str(e.topics)),
         "is neither a DiPair model folder nor a Hugging Face model folder"),
    Case("model path that does not exist", lambda e: e.search_cmd("--model", str(e.tmp / "models" / "typo")),
         "model folder not found: "),
    Case("model id that is not available offline", lambda e: e.search_cmd("--model", "no-such-org/no-such-model"),
         "model 'no-such-org/no-such-model' is not a folder here, nor a Hugging Face model that can be loaded"),
    Case("damaged model (truncated safetensors)", lambda e: e.search_cmd("--model", _damaged_model(e)),
         "damaged DiPair model folder (SafetensorError"),
    # topics and queries (dipair-rerank search)
    Case("topics file not found", lambda e: e.search_cmd(topics=str(e.tmp / "missing.tsv")), "file not found"),
    Case("topics line without a tab", lambda e: e.search_cmd(topics=e.file("notab.tsv", "q1 no tab\n")),
         "notab.tsv:1: expected 'qid<TAB>query text'"),
    Case("topics with duplicate qids", lambda e: e.search_cmd(topics=e.file("dupq.tsv", "q1\ta\nq1\tb\n")),
         "dupq.tsv:2: duplicate qid 'q1'"),
    Case("qid with whitespace", lambda e: e.search_cmd(topics=e.file("wsq.tsv", "q 1\tquery\n")),
         "wsq.tsv:1: qid 'q 1' contains whitespace"),
    Case("non-UTF-8 bytes in topics", lambda e: e.search_cmd(topics=e.file("latin1.tsv", b"q1\tcaf\xe9\n")),
         "latin1.tsv: not UTF-8"),
    Case("empty query", lambda e: e.search_cmd(topics=e.file("emptyq.tsv", "q1\t\nq2\tquantum qubits\n")),
         "1 topic(s) with empty query text, kept", recovers=True, check=_run_lines({"q1": 0, "q2": 3})),
    Case("query of only punctuation", lambda e: e.search_cmd(topics=e.file("punct.tsv", "q1\t?!.,;: --\nq2\tqubits\n")),
         "1 of 2 topics got no candidates", recovers=True, check=_run_lines({"q1": 0, "q2": 2})),
    Case("query with Lucene syntax", lambda e: e.search_cmd(topics=e.file("lucene.tsv", 'q1\t((cats AND "dogs\n')),
         "", recovers=True, check=_run_lines({"q1": 3})),
    # runs, candidates and options
    Case("candidate run with wrong column count",
         lambda e: e.search_cmd("--candidates", e.file("c5.trec", "q1 Q0 d1 1 2.0\n")),
         "c5.trec:1: run lines have 6 columns (TREC: qid Q0 docid rank score tag) or 3 (MS MARCO: qid docid rank), "
         "got 5"),
    Case("candidate run score not a number",
         lambda e: e.search_cmd("--candidates", e.file("nan.trec", "q1 Q0 d1 1 high x\n")),
         "nan.trec:1: score 'high' is not a number"),
    Case("empty candidate run", lambda e: e.search_cmd("--candidates", e.file("none.trec", "")),
         "none.trec: empty run"),
    Case("candidate run naming a docid not in the index",
         lambda e: e.search_cmd("--candidates", e.file("ghost.trec", "q1 Q0 d1 1 2.0 x\nq1 Q0 ghost 2 1.0 x\n")),
         "the candidates name 1 docid(s) not in the index: ghost"),
    Case("--depth larger than the candidate list",
         lambda e: e.search_cmd("--depth", "100", "--candidates",
                                e.file("two.trec", "q1 Q0 d1 1 2 x\nq1 Q0 d2 2 1 x\n")),
         "had fewer than depth=100 candidates (as few as 0); re-ranked those they had", recovers=True,
         check=_run_lines({"q1": 2, "q2": 0})),
    Case("--depth 0", lambda e: e.search_cmd("--depth", "0"), "--depth must be at least 1, got 0"),
    Case("--batch-size 0 (search)", lambda e: e.search_cmd("--batch-size", "0"), "--batch-size must be at least 1"),
    Case("candidate run for other queries than the topics",
         lambda e: e.search_cmd("--candidates", e.file("otherq.trec", "999 Q0 d1 1 2.0 x\n")),
         "none of the 4 topics got any candidates"),
    Case("candidate run in MS MARCO format", lambda e: e.search_cmd("--candidates", e.file("c.tsv", "q1\td2\t1\n")),
         "", recovers=True, check=_run_lines({"q1": 1, "q2": 0})),
    Case("candidate run listing a docid twice",
         lambda e: e.search_cmd("--candidates", e.file("twice.trec", "q1 Q0 d2 1 2 x\nq1 Q0 d2 2 1 x\n")),
         "1 lines repeat a docid already listed for their query", recovers=True, check=_run_lines({"q1": 1})),
    Case("damaged index manifest", lambda e: ["verify", "--index", str(Path(e.file("idx/manifest.json", "{")).parent)],
         "manifest.json is damaged"),
    Case("index that was never built",
         lambda e: ["search", "--index", str(e.tmp / "noindex"), "--topics", str(e.topics), "--run", str(e.run)],
         "missing manifest.json"),
    Case("run path under a file", lambda e: ["search", "--index", str(e.index), "--topics", str(e.topics), "--run",
                                             e.file("afile", "x") + "/out.trec", "--threads", "1"],
         "afile is a file, not a folder"),
    Case("run path that is a folder", lambda e: ["search", "--index", str(e.index), "--topics", str(e.topics), "--run",
                                                 str(e.tmp)], "is a folder; give a file name"),
    # evaluation (dipair-rerank eval)
    Case("qrels with wrong column count", lambda e: ["eval", "--qrels", e.file("q3.txt", "q1 0 d1\n"), "--run",
                                                     e.file("ok.trec", "q1 Q0 d1 1 2 x\n")],
         "q3.txt:1: qrels lines have 4 columns (qid 0 docid rel), got 3"),
    Case("qrels relevance not an integer", lambda e: ["eval", "--qrels", e.file("qx.txt", "q1 0 d1 high\n"), "--run",
                                                      e.file("ok.trec", "q1 Q0 d1 1 2 x\n")],
         "qx.txt:1: relevance 'high' is not an integer"),
    Case("run with wrong column count",
         lambda e: ["eval", "--qrels", str(e.qrels), "--run", e.file("r7.trec", "q1 Q0 d1 1 2 x y\n")],
         "r7.trec:1: run lines have 6 columns (TREC: qid Q0 docid rank score tag) or 3 (MS MARCO: qid docid rank), "
         "got 7"),
    Case("run for other queries than the qrels",
         lambda e: ["eval", "--qrels", str(e.qrels), "--run", e.file("other.trec", "999 Q0 d1 1 2 x\n")],
         "the run and the qrels share no query ids"),
    Case("unknown irds: id", lambda e: ["eval", "--qrels", "irds:no/such/dataset", "--run", str(e.qrels)],
         "unknown ir_datasets id 'no/such/dataset'"),
]


def _damaged_model(env: Env) -> str:
    target = env.tmp / "model-copy"
    if not target.exists():
        shutil.copytree(env.model, target)
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    return str(target)


def leftovers(env: Env) -> list[str]:
    """Anything an input error must not leave: a run or its temp/sidecar files, an index or its staging folder."""
    found = []
    for folder in (env.run.parent, env.new_index.parent):
        if folder.is_dir():
            found += [str(p.relative_to(env.tmp)) for p in folder.iterdir()]
    return found


@pytest.fixture
def env(tmp_path, tiny_index, tiny_model_dir, tiny_files) -> Env:
    return Env(tmp_path, tiny_index, tiny_model_dir, tiny_files["topics"], tiny_files["qrels"])


def test_at_least_fifteen_kinds():
    assert len(CASES) >= 15 and len({case.kind for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, env: Env, capsys, caplog):
    caplog.set_level(logging.WARNING)
    code = main(case.argv(env))
    err = capsys.readouterr().err.replace("\r", "\n")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if case.recovers:
        assert code == 0 and errors == [], err
        assert case.message in caplog.text, caplog.text
        if case.check:
            case.check(env)
        return
    assert code == 2, err
    assert len(errors) == 1 and case.message in errors[0], err
    assert "Traceback" not in err
    assert leftovers(env) == [], leftovers(env)


def table() -> str:
    """Markdown rows ``kind | what happens | message`` from running every case (for eval/RELIABILITY.md)."""
    import contextlib
    import io
    import tempfile

    from dipair_rerank.indexer import IndexOptions, build_index
    from dipair_rerank.model import DiPairModel
    from tests.conftest import TINY_DOCS, TINY_QRELS, tiny_config, write_jsonl, write_qrels, write_topics

    root = Path(tempfile.mkdtemp(prefix="dipair-table-"))
    model = DiPairModel(tiny_config()).save_pretrained(root / "tiny")
    build_index(write_jsonl(root / "c.jsonl", TINY_DOCS), root / "idx", model=model,
                options=IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False))
    rows = ["| # | kind | what happens | message (real output) |", "|---|---|---|---|"]
    for number, case in enumerate(CASES, start=1):
        env = Env(root / case.id, root / "idx", model, write_topics(root / "t.tsv", TINY_TOPICS),
                  write_qrels(root / "q.txt", TINY_QRELS))
        env.tmp.mkdir()
        records: list[str] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger().addHandler(handler)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(case.argv(env))
        logging.getLogger().removeHandler(handler)
        lines = [line for line in err.getvalue().replace("\r", "\n").splitlines() if line.startswith("error:")]
        shown = lines[0] if lines else ("warning: " + " / ".join(records) if records else "(no message)")
        shown = shown.replace(str(env.tmp) + "/", "").replace(str(root) + "/", "").replace("|", "\\|")
        what = "recovers, exit 0" if code == 0 else f"error, exit {code}, nothing written"
        rows.append(f"| {number} | {case.kind} | {what} | `{shown}` |")
    shutil.rmtree(root, ignore_errors=True)
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
