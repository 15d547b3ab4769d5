"""Loading never runs code from a file: no pickle anywhere in the package (safetensors, JSON and numpy without
``allow_pickle``), a pickled .npy planted in a cache is refused, and the text parsers either parse or raise
DiPairError on any input (hypothesis)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dipair_rerank
from dipair_rerank.cli import main
from dipair_rerank.data import read_qrels, read_topics
from dipair_rerank.errors import DiPairError

PACKAGE = Path(dipair_rerank.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))

FORBIDDEN = {
    "pickle module": re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|cloudpickle)\b", re.M),
    "pickle.load(s)": re.compile(r"\bpickle\.loads?\("),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "eval/exec of data": re.compile(r"(?<![\w.])(eval|exec)\((?!\))"),
}


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_unpickling_in_the_package(what):
    assert len(SOURCES) > 20
    offenders = [f"{path.relative_to(PACKAGE)}" for path in SOURCES if FORBIDDEN[what].search(path.read_text())]
    assert offenders == [], f"{what} in {offenders}"


def test_torch_load_only_with_weights_only():
    """torch.load unpickles unless weights_only=True: every call must say so, on the same statement."""
    offenders = []
    for path in SOURCES:
        text = path.read_text()
        for match in re.finditer(r"\btorch\.load\(", text):
            statement = text[match.start(): text.find("\n\n", match.start())]
            call = statement[: _closing_paren(statement, statement.index("(")) + 1]
            if not re.search(r"weights_only\s*=\s*True", call):
                offenders.append(f"{path.relative_to(PACKAGE)}:{text.count(chr(10), 0, match.start()) + 1}")
    assert offenders == []


def _closing_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


class _Planted:
    """Unpickling this creates a marker folder: proof that the loader ran code from the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _plant(path: Path, marker: Path) -> int:
    np.save(path, np.array([_Planted(marker)] * 4, dtype=object), allow_pickle=True)
    return path.stat().st_size


@pytest.mark.parametrize("name", ["shard-00000.vectors.npy", "shard-00001.lengths.npy", "docids.rows.npy"])
def test_a_pickled_npy_in_the_cache_is_refused_not_run(tiny_index, tiny_files, tmp_path, capsys, name):
    """Sizes in cache.json are updated to match, so the loader really reaches the planted file."""
    index = Path(shutil.copytree(tiny_index, tmp_path / "idx"))
    marker = tmp_path / "PWNED"
    size = _plant(index / "dipair" / name, marker)
    config = index / "dipair" / "cache.json"
    meta = json.loads(config.read_text())
    for shard in meta["shards"]:
        for kind in ("vectors", "lengths"):
            if name == f"{shard['stem']}.{kind}.npy":
                shard[f"{kind}_bytes"] = size
    config.write_text(json.dumps(meta))
    run = tmp_path / "r.trec"
    assert main(["search", "--index", str(index), "--topics", str(tiny_files["topics"]), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not a plain" in err and "Traceback" not in err
    assert main(["verify", "--index", str(index)]) == 2
    assert not marker.exists() and not run.exists()


def test_a_pickled_model_file_is_refused_not_run(tiny_model_dir, tiny_files, tiny_index, tmp_path, capsys):
    """A model folder whose weights file is a pickle (a renamed torch.save) fails as a damaged folder."""
    import torch

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    marker = tmp_path / "PWNED"
    torch.save({"weights": _Planted(marker)}, model / "model.safetensors")
    code = main(["search", "--index", str(tiny_index), "--topics", str(tiny_files["topics"]), "--run",
                 str(tmp_path / "r.trec"), "--model", str(model)])
    assert code == 2 and "damaged DiPair model folder" in capsys.readouterr().err
    assert not marker.exists()


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
LINES = st.lists(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=6).map("\t".join),
                           st.lists(TEXT, min_size=1, max_size=6).map(" ".join)), max_size=6)


@settings(max_examples=80, deadline=None)
@given(lines=LINES, raw=st.binary(max_size=16))
def test_topics_parser_never_crashes(tmp_path_factory, lines, raw):
    """Any bytes either parse (qids non-empty and unique, texts stripped) or raise DiPairError."""
    path = tmp_path_factory.mktemp("fuzz") / "t.tsv"
    path.write_bytes("\n".join(lines).encode("utf-8") + raw)
    try:
        topics = read_topics(path)
    except DiPairError:
        return
    assert topics and all(qid and qid.split() == [qid] and text == text.strip() for qid, text in topics.items())


@settings(max_examples=80, deadline=None)
@given(lines=LINES, raw=st.binary(max_size=16))
def test_qrels_parser_never_crashes(tmp_path_factory, lines, raw):
    path = tmp_path_factory.mktemp("fuzz") / "q.txt"
    path.write_bytes("\n".join(lines).encode("utf-8") + raw)
    try:
        qrels = read_qrels(path)
    except DiPairError:
        return
    assert qrels and all(isinstance(rel, int) for docs in qrels.values() for rel in docs.values())


@settings(max_examples=60, deadline=None)
@given(qid=st.text(alphabet="0123456789abc", min_size=1, max_size=5),
       docid=st.text(alphabet="0123456789abcxyz-_", min_size=1, max_size=8), rel=st.integers(-3, 5))
def test_qrels_round_trip(tmp_path_factory, qid, docid, rel):
    """Well-formed lines always parse to exactly what they say."""
    path = tmp_path_factory.mktemp("fuzz") / "q.txt"
    path.write_text(f"{qid} 0 {docid} {rel}\n")
    assert read_qrels(path) == {qid: {docid: rel}}
