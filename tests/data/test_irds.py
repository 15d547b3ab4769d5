"""ir_datasets ids offline, from the seeded source folder (../shared/ir_datasets)."""

import itertools
from pathlib import Path

import pytest

from dipair_rerank.data import read_corpus, read_qrels, read_topics
from dipair_rerank.data.irds import DEFAULT_SOURCES, SOURCES_ENV
from dipair_rerank.errors import DiPairError


@pytest.fixture
def irds_home(tmp_path, monkeypatch):
    import os

    sources = Path(os.environ.get(SOURCES_ENV, DEFAULT_SOURCES))
    if not (sources / "beir" / "scifact" / "source.zip").is_file():
        pytest.skip(f"no offline ir_datasets sources at {sources}")
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    return tmp_path / "irds"


def test_scifact_test_offline(irds_home):
    topics = read_topics("irds:beir/scifact/test")
    qrels = read_qrels("irds:beir/scifact/test")
    assert len(topics) == 300 and len(qrels) == 300
    docs = list(itertools.islice(read_corpus("irds:beir/scifact/test"), 3))
    assert len(docs) == 3 and all(d.text for d in docs)
    assert (irds_home / "beir" / "scifact" / "source.zip").is_symlink()


def test_unknown_id(irds_home):
    with pytest.raises(DiPairError, match="unknown ir_datasets id 'no/such/dataset'"):
        read_topics("irds:no/such/dataset")
